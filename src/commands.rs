//! The porcelain: each `ledger` subcommand, printing for people (or JSON with `--json`).

use crate::Format;
use anyhow::{bail, Context as _, Result};
use ledger::config::Experiment;
use ledger::event::{Event, EventKind, Origin, RunStatus};
use ledger::lineage::{describe, human_size, lineage as build_lineage, Provenance};
use ledger::log::Frame;
use ledger::runner::{self, Outcome, RunOptions};
use ledger::{Hash, Ledger, Wait};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub struct Context {
    pub dir: PathBuf,
    pub wait: Wait,
}

/// Exit status of `ledger replay` when the rebuilt bytes differ (errors exit 1).
const NOT_REPRODUCIBLE: u8 = 3;

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

impl Context {
    fn reader(&self) -> Result<Ledger> {
        Ok(Ledger::open(&self.dir)?)
    }

    fn writer(&self) -> Result<Ledger> {
        Ok(Ledger::open_writer(&self.dir, self.wait)?)
    }

    /// A writer, creating the ledger first if there is none (for `add` and `run`).
    fn writer_or_init(&self) -> Result<Ledger> {
        if !self.dir.join(ledger::ledger::LOG_FILE).exists() {
            Ledger::init(&self.dir)?;
            eprintln!("created a new ledger at {}", self.dir.display());
        }
        self.writer()
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    // Buffered: stdout alone is line-buffered, one write per line of pretty JSON.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        // `ledger log --json | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub fn init(ctx: &Context) -> Result<ExitCode> {
    Ledger::init(&ctx.dir)?;
    println!("initialised an empty ledger at {}", ctx.dir.display());
    Ok(ExitCode::SUCCESS)
}

pub fn add(ctx: &Context, files: &[PathBuf]) -> Result<ExitCode> {
    let mut ledger = ctx.writer_or_init()?;
    for file in files {
        let bar = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("valid template"),
        );
        bar.set_message(file.display().to_string());
        let added = ledger.add_file_with_progress(file, &bar);
        bar.finish_and_clear();
        let (hash, size) = added?;
        println!("{hash}  {}  ({})", file.display(), human_size(size));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cat(ctx: &Context, what: &str) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let hash = ledger.resolve(what)?;
    // A manifest reads as its parts one after another (a dataset of shards as one stream);
    // every byte is checked against its address as it goes.
    let mut blob = ledger::manifest::open_whole(ledger.store(), &hash)?;
    let mut out = std::io::stdout().lock();
    match std::io::copy(&mut blob, &mut out) {
        Ok(_) => {}
        // `ledger cat X | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e).context("writing to stdout"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(ctx: &Context, what: &str, json: bool) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let hash = ledger.resolve(what)?;
    if ledger.index().is_run(&hash)? {
        return show_run(&ledger, &hash, json);
    }
    let info = describe(&ledger, &hash)?;
    let consumers: Vec<u64> = ledger.index().consumers(&hash)?;
    let manifest = if info.stored && info.media_type == ledger::manifest::MEDIA_TYPE {
        ledger::manifest::Manifest::read(ledger.store(), &hash)?
    } else {
        None
    };
    if json {
        print_json(
            &json!({ "artifact": info, "consumed_by_events": consumers, "manifest": manifest }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("artifact   {}", info.hash);
    println!("size       {} ({} bytes)", human_size(info.size), info.size);
    if let Some(m) = &manifest {
        println!(
            "manifest   {} parts of {}, {} in all (`ledger cat` streams them in order)",
            m.parts.len(),
            m.media_type,
            human_size(m.size())
        );
        const SHOWN: usize = 20;
        for part in m.parts.iter().take(SHOWN) {
            println!(
                "  {} {:>10}  {}",
                part.hash,
                human_size(part.size),
                part.unit
            );
        }
        if m.parts.len() > SHOWN {
            println!(
                "  … and {} more (`ledger show --json`)",
                m.parts.len() - SHOWN
            );
        }
    }
    println!("media type {}", info.media_type);
    let rebuildable = matches!(info.provenance, Provenance::Output { .. });
    let state = match (info.stored, info.collected, rebuildable) {
        (true, _, _) => "stored",
        (false, true, true) => "collected by gc (`ledger replay` rebuilds it)",
        (false, true, false) => "collected by gc (a source: `ledger add` it again to restore it)",
        (false, false, true) => "MISSING from the store (`ledger replay` rebuilds it)",
        (false, false, false) => "MISSING from the store",
    };
    println!("bytes      {state}");
    if let Some(bundle) = &info.imported_from {
        println!("imported   from bundle {bundle} (foreign: what follows is the bundle's claim; `ledger replay --check` re-derives it)");
    }
    if !info.tags.is_empty() {
        println!("tags       {}", info.tags.join(", "));
    }
    match &info.provenance {
        Provenance::File { path } => println!("origin     file {path}"),
        Provenance::Config { path } => println!("origin     experiment config {path}"),
        Provenance::Observation { source, request } => {
            println!("origin     {source} response to request {}", &request[..12])
        }
        Provenance::Output { output, step, .. } => {
            println!(
                "produced   output `{output}` of step #{} `{}` ({} v{})",
                step.seq, step.node, step.stage, step.version
            );
            println!("run        {}", step.run_id);
            println!("action     {}", step.action_key);
            println!("seed       {}", step.seed);
            println!("config     {}", step.config);
            println!("inputs");
            let (mut parts, mut observed) = (0, 0);
            for (name, h) in &step.inputs {
                if name.starts_with(ledger::runner::PART_PREFIX) {
                    parts += 1;
                } else if name.starts_with(ledger::runner::OBSERVED_PREFIX) {
                    observed += 1;
                } else {
                    println!("  {name:<24} {h}");
                }
            }
            if parts + observed > 0 {
                println!(
                    "  (and {parts} parts of its outputs, {observed} recorded observations: `ledger show --json`)"
                );
            }
            if !step.metrics.is_empty() {
                println!("metrics");
                for (name, v) in &step.metrics {
                    println!("  {name:<24} {}", ledger::display::metric(*v));
                }
            }
        }
    }
    if !consumers.is_empty() {
        let list: Vec<String> = consumers.iter().map(|s| format!("#{s}")).collect();
        println!("used by    steps {}", list.join(", "));
    }
    if info.stored && info.media_type == "application/json" {
        if let Some(table) = ledger
            .store()
            .read(&hash)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| score_table(&v))
        {
            print!("{table}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A benchmark score (`rollout` or `humaneval` output) as a table; `None` for other JSON.
fn score_table(v: &serde_json::Value) -> Option<String> {
    let instances = v.get("instances")?.as_array()?;
    let mut out = String::new();
    match v.get("benchmark")?.as_str()? {
        "swe" => {
            out.push_str(&format!(
                "score      SWE-style resolution rate {:.3} ({} instances, {} run(s) each, policy {})\n",
                v["resolved_rate"].as_f64()?,
                instances.len(),
                v["runs_per_instance"],
                v["policy"].as_str().unwrap_or("?")
            ));
            out.push_str(&format!(
                "  {:<52} {:>5} {:>8} {:>9} {:>9} {:>5}  {}\n",
                "instance", "run", "resolved", "F2P", "P2P", "steps", "stop"
            ));
            for i in instances {
                for r in i["runs"].as_array()? {
                    let pair = |k: &str| format!("{}/{}", r[k][0], r[k][1]);
                    out.push_str(&format!(
                        "  {:<52} {:>5} {:>8} {:>9} {:>9} {:>5}  {}{}\n",
                        i["instance_id"].as_str()?,
                        r["run"].to_string(),
                        if r["resolved"].as_bool()? {
                            "yes"
                        } else {
                            "no"
                        },
                        pair("fail_to_pass"),
                        pair("pass_to_pass"),
                        r["steps"].to_string(),
                        r["stop_reason"].as_str().unwrap_or(""),
                        if r["patch_applied"].as_bool() == Some(false) {
                            " (patch not applied)"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        "humaneval" => {
            let ks = v.get("pass_at_k")?.as_object()?;
            let summary: Vec<String> = ks
                .iter()
                .map(|(k, p)| format!("pass@{k} {:.3}", p.as_f64().unwrap_or(f64::NAN)))
                .collect();
            out.push_str(&format!(
                "score      HumanEval {} ({} tasks, n = {}, policy {})\n",
                summary.join(", "),
                instances.len(),
                v["n"],
                v["policy"]
            ));
            out.push_str(&format!(
                "  {:<20} {:>8} {:>4}  first result\n",
                "task", "correct", "n"
            ));
            for i in instances {
                let first = i["results"]
                    .as_array()
                    .and_then(|r| r.first())
                    .map(|r| {
                        r.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| r.to_string())
                    })
                    .unwrap_or_default();
                let first: String = first.chars().take(60).collect();
                out.push_str(&format!(
                    "  {:<20} {:>8} {:>4}  {first}\n",
                    i["task_id"].as_str()?,
                    i["correct"].to_string(),
                    i["n"].to_string()
                ));
            }
        }
        _ => return None,
    }
    Some(out)
}

fn show_run(ledger: &Ledger, run: &Hash, json: bool) -> Result<ExitCode> {
    let events: Vec<Event> = ledger
        .index()
        .run_events(run)?
        .into_iter()
        .map(|seq| Ok(ledger.event(seq)?.event))
        .collect::<Result<_>>()?;
    if json {
        print_json(
            &json!({ "run": run.to_hex(), "events": events.iter().map(event_json).collect::<Vec<_>>() }),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {run}");
    for e in &events {
        println!("  {}", summarize(e));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn log(ctx: &Context, limit: Option<usize>, json: bool) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let total = ledger.event_count();
    let skip = limit.map_or(0, |n| total.saturating_sub(n as u64));
    let mut damaged = 0;
    let mut failure = None;
    // Streamed, event by event: a million-event log is never held in memory, as text or JSON.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let written = {
        let events = ledger
            .scan()?
            .map_while(|frame| match frame {
                Ok(Frame::Good(stored)) => Some(Some(stored)),
                Ok(Frame::Torn { .. }) => None,
                // Show what is readable, but never hide damage.
                Ok(Frame::Damaged { offset, reason, .. }) => {
                    damaged += 1;
                    eprintln!(
                        "warning: {}: damaged record at byte {offset} ({reason}) is not shown; run `ledger verify`",
                        ledger.log_path().display()
                    );
                    Some(None)
                }
                Err(e) => {
                    failure = Some(e);
                    None
                }
            })
            .flatten()
            .filter(|stored| stored.event.seq >= skip);
        if json {
            let mut serializer = serde_json::Serializer::pretty(&mut out);
            serde::Serializer::collect_seq(&mut serializer, events.map(|s| event_json(&s.event)))
                .map_err(std::io::Error::from)
        } else {
            let mut events = events;
            events.try_for_each(|s| writeln!(out, "{}", summarize(&s.event)))
        }
    };
    let written = written
        .and_then(|()| if json { writeln!(out) } else { Ok(()) })
        .and_then(|()| out.flush());
    match written {
        // `ledger log | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(if damaged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn event_json(e: &Event) -> serde_json::Value {
    json!({ "seq": e.seq, "prev": e.prev.to_hex(), "time_ms": e.time_ms, "kind": e.kind.name(), "detail": kind_json(&e.kind) })
}

fn kind_json(kind: &EventKind) -> serde_json::Value {
    match kind {
        EventKind::ArtifactAdded(a) => json!({
            "hash": a.hash.to_hex(), "size": a.size, "media_type": a.media_type,
            "origin": match &a.origin { Origin::File { path } => json!({"file": path}), Origin::Config { path } => json!({"config": path}) },
        }),
        EventKind::RunStarted(r) => json!({
            "run_id": r.run_id.to_hex(), "experiment": r.experiment, "config": r.config.to_hex(), "config_path": r.config_path,
        }),
        EventKind::StageRun(s) => json!({
            "run_id": s.run_id.to_hex(), "node": s.node, "stage": s.stage, "version": s.version,
            "action_key": s.action_key.to_hex(),
            "config": serde_json::from_str::<serde_json::Value>(&s.config).unwrap_or_default(),
            "seed": s.seed,
            "inputs": s.inputs.iter().map(|(n, h)| json!({"name": n, "hash": h.to_hex()})).collect::<Vec<_>>(),
            "outputs": s.outputs.iter().map(|o| json!({"name": o.name, "hash": o.hash.to_hex(), "size": o.size, "media_type": o.media_type})).collect::<Vec<_>>(),
            "metrics": s.metrics.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "env": { "host": s.env.host, "os": s.env.os, "arch": s.env.arch, "threads": s.env.threads, "device": s.env.device, "cpu_features": s.env.cpu_features, "ledger_version": s.env.ledger_version },
            "status": match &s.status { RunStatus::Succeeded => json!("succeeded"), RunStatus::Cached { source_seq } => json!({"cached_from": source_seq}), RunStatus::Failed { error } => json!({"failed": error}) },
            "started_ms": s.started_ms, "ended_ms": s.ended_ms,
        }),
        EventKind::Observation(o) => json!({
            "source": o.source, "request": o.request.to_hex(), "response": o.response.to_hex(), "response_size": o.response_size,
        }),
        EventKind::Tag(t) => json!({"name": t.name, "target": t.target.to_hex()}),
        EventKind::Collected(c) => {
            json!({"hashes": c.hashes.iter().map(|h| h.to_hex()).collect::<Vec<_>>()})
        }
        EventKind::Imported(i) => json!({
            "bundle": i.bundle.to_hex(), "root": i.root.to_hex(), "path": i.path,
            "events": i.events, "appended": i.appended, "blobs": i.blobs, "blobs_added": i.blobs_added,
            "trusted": i.trusted,
        }),
        EventKind::Foreign(f) => json!({
            "bundle": f.bundle.to_hex(), "trusted": f.trusted,
            "kind": f.event.name(), "detail": kind_json(&f.event),
        }),
    }
}

fn summarize(e: &Event) -> String {
    format!(
        "#{:<6} {}  {}",
        e.seq,
        format_time(e.time_ms),
        summarize_kind(&e.kind)
    )
}

fn summarize_kind(kind: &EventKind) -> String {
    match kind {
        EventKind::ArtifactAdded(a) => {
            let origin = match &a.origin {
                Origin::File { path } => format!("file {path}"),
                Origin::Config { path } => format!("config {path}"),
            };
            format!(
                "add    {}  {origin} ({})",
                a.hash.short(),
                human_size(a.size)
            )
        }
        EventKind::RunStarted(r) => format!(
            "run    {}  experiment `{}` from {}",
            r.run_id.short(),
            r.experiment,
            r.config_path
        ),
        EventKind::StageRun(s) => {
            let status = match &s.status {
                RunStatus::Succeeded => "executed".to_string(),
                RunStatus::Cached { source_seq } => format!("cached from #{source_seq}"),
                RunStatus::Failed { error } => format!("FAILED: {error}"),
            };
            let outputs: Vec<String> = s
                .outputs
                .iter()
                .map(|o| format!("{}={}", o.name, o.hash.short()))
                .collect();
            format!(
                "stage  {}  {} ({} v{}) {status} {} [{:.2}s]",
                s.run_id.short(),
                s.node,
                s.stage,
                s.version,
                outputs.join(" "),
                s.ended_ms.saturating_sub(s.started_ms) as f64 / 1000.0
            )
        }
        EventKind::Observation(o) => format!(
            "observe {} request {} -> {} ({})",
            o.source,
            o.request.short(),
            o.response.short(),
            human_size(o.response_size)
        ),
        EventKind::Tag(t) => format!("tag    {} -> {}", t.name, t.target.short()),
        EventKind::Collected(c) => format!("gc     {} blobs collected", c.hashes.len()),
        EventKind::Imported(i) => format!(
            "import bundle {} ({}) for {}: {} of {} events and {} of {} blobs were new{}",
            i.bundle.short(),
            i.path,
            i.root.short(),
            i.appended,
            i.events,
            i.blobs_added,
            i.blobs,
            if i.trusted { ", trusted" } else { "" }
        ),
        EventKind::Foreign(f) => format!(
            "{}  [foreign: bundle {}{}]",
            summarize_kind(&f.event),
            f.bundle.short(),
            if f.trusted { ", trusted" } else { "" }
        ),
    }
}

fn format_time(ms: u64) -> String {
    ledger::event::rfc3339((ms / 1000) as i64)
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

pub fn lineage(ctx: &Context, what: &str, format: Format) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let hash = ledger.resolve(what)?;
    let graph = build_lineage(&ledger, &hash)?;
    match format {
        Format::Text => print!("{}", graph.to_text()),
        Format::Dot => print!("{}", graph.to_dot()),
        Format::Json => print_json(&graph)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(ctx: &Context, config: &Path, options: &RunOptions, json: bool) -> Result<ExitCode> {
    let registry = stages::registry();
    // Parse and plan before taking the lock: a bad config never touches the ledger.
    let experiment = Experiment::load(config, &registry)?;
    let mut ledger = ctx.writer_or_init()?;
    let report = runner::run(&mut ledger, &registry, &experiment, options)?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {} (experiment `{}`)", report.run_id, report.experiment);
    for step in &report.steps {
        let outcome = match step.outcome {
            Outcome::Executed => "executed".to_string(),
            Outcome::Cached { source_seq } => format!("cached (reused step #{source_seq})"),
        };
        println!(
            "  {:<14} {:<10} {outcome:<28} {:>7.2}s",
            step.node, step.stage, step.seconds
        );
        for (name, hash) in &step.outputs {
            println!("      {name} = {hash}");
        }
        // Zero counters are left out here; `ledger show` and `--json` list every metric.
        let m: Vec<String> = step
            .metrics
            .iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(k, v)| format!("{k}={}", ledger::display::metric(*v)))
            .collect();
        if !m.is_empty() {
            println!("      {}", m.join("  "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ablate(ctx: &Context, file: &Path, progress: bool, json: bool) -> Result<ExitCode> {
    let registry = stages::registry();
    // Every arm's config is loaded and every metric checked before the ledger is touched.
    let ablation = replay::Ablation::load(file, &registry)?;
    let mut ledger = ctx.writer_or_init()?;
    let report = replay::ablate(
        &mut ledger,
        &registry,
        &ablation,
        &RunOptions {
            progress,
            ..RunOptions::default()
        },
    )?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "ablation `{}` ({}): {} arms",
        report.ablation,
        report.file,
        report.arms.len()
    );
    for arm in &report.arms {
        println!("  {:<16} run {}  ({})", arm.name, arm.run_id, arm.config);
    }
    println!();
    print!("{}", report.to_table());
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(
    ctx: &Context,
    what: &str,
    options: &replay::ReplayOptions,
    json: bool,
) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let hash = ledger.resolve(what)?;
    let report = replay::replay(&ledger, &stages::registry(), &hash, options)?;
    if json {
        print_json(&report)?;
    } else {
        println!("{report}");
    }
    Ok(match report.verdict {
        replay::Verdict::BitIdentical => ExitCode::SUCCESS,
        replay::Verdict::NotReproducible => ExitCode::from(NOT_REPRODUCIBLE),
    })
}

pub fn diff(ctx: &Context, a: &str, b: &str, json: bool, dot: bool) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let (a, b) = (ledger.resolve(a)?, ledger.resolve(b)?);
    let report = replay::diff(&ledger, &a, &b)?;
    if json {
        print_json(&report)?;
    } else if dot {
        print!("{}", report.to_dot());
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn verify(ctx: &Context, json: bool) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let bar = indicatif::ProgressBar::new(0);
    let started = std::time::Instant::now();
    let report = ledger::verify::verify(&ledger, &bar)?;
    let seconds = started.elapsed().as_secs_f64();
    // The process exits next. Having read every tree, sled holds the whole index in its page
    // cache, and freeing that node by node took 0.2-0.5 s at a million events: make the
    // index durable and let the exit reclaim the memory instead.
    ledger.index().flush()?;
    std::mem::forget(ledger);
    if json {
        print_json(&json!({ "report": report, "seconds": seconds }))?;
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for p in &report.problems {
            println!("PROBLEM {}: {}: {}", p.kind, p.subject, p.detail);
        }
        for (artifact, root) in &report.downstream {
            println!(
                "AFFECTED {artifact}: built from damaged {}",
                &root[..12.min(root.len())]
            );
        }
        println!(
            "{} events, {} blobs ({}) checked in {seconds:.2}s: {}",
            report.events,
            report.blobs,
            human_size(report.blob_bytes),
            if report.clean() {
                "clean".to_string()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        );
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn export(ctx: &Context, what: &str, output: &Path, json: bool) -> Result<ExitCode> {
    let ledger = ctx.reader()?;
    let hash = ledger.resolve(what)?;
    let report = ledger::bundle::export(&ledger, &hash, output)?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "exported {} with {} events and {} blobs ({}) to {}",
            &report.root[..12],
            report.events,
            report.blobs,
            human_size(report.bytes),
            output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(
    ctx: &Context,
    bundle: &Path,
    options: ledger::bundle::ImportOptions,
    json: bool,
) -> Result<ExitCode> {
    // The whole bundle is verified before the ledger is touched (not even its lock file or
    // its index, hence a private index), so a bad bundle leaves it exactly as it was.
    if ctx.dir.join(ledger::ledger::LOG_FILE).exists() {
        let reader = Ledger::open_private(&ctx.dir)?;
        ledger::bundle::check(bundle, Some(&reader))?;
    } else {
        ledger::bundle::check(bundle, None)?;
    }
    let mut ledger = ctx.writer_or_init()?;
    let report = ledger::bundle::import(&mut ledger, bundle, options)?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "imported {} from bundle {}: {} events appended as foreign{} ({} already known), {} blobs added",
            report.root,
            &report.bundle[..12],
            report.events_appended,
            if report.trusted { " (trusted)" } else { "" },
            report.events_known,
            report.blobs_added
        );
        let skipped: Vec<&str> = report
            .tags
            .iter()
            .filter(|(_, _, adopted)| !adopted)
            .map(|(name, _, _)| name.as_str())
            .collect();
        if !skipped.is_empty() {
            println!(
                "the bundle's tags {} were not applied here (--adopt-tags applies them)",
                skipped.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(ctx: &Context, dry_run: bool, json: bool) -> Result<ExitCode> {
    let mut ledger = ctx.writer()?;
    let report = ledger::gc::gc(&mut ledger, dry_run)?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for (hash, size) in &report.removed {
        println!("{verb} {hash} ({})", human_size(*size));
    }
    println!(
        "{verb} {} blobs ({}) and {} temp files and directories ({})",
        report.removed.len(),
        human_size(report.bytes),
        report.temp_files,
        human_size(report.temp_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn tag(ctx: &Context, name: &str, what: &str) -> Result<ExitCode> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("tag name `{name}` must be non-empty and have no spaces");
    }
    if ledger::hash::is_hex_prefix(name) && name.len() >= 8 {
        bail!("tag name `{name}` looks like a hash; pick a name that is not all hex digits");
    }
    let mut ledger = ctx.writer()?;
    let target = ledger.resolve(what)?;
    if ledger.index().introducer(&target)?.is_none() {
        bail!("{what} is not an artifact (tags point at artifacts)");
    }
    ledger.append_one(EventKind::Tag(ledger::event::Tag {
        name: name.to_string(),
        target,
    }))?;
    println!("{name} -> {target}");
    Ok(ExitCode::SUCCESS)
}

pub fn reindex(ctx: &Context) -> Result<ExitCode> {
    let events = Ledger::reindex(&ctx.dir, ctx.wait)?;
    println!("reindexed {events} events");
    Ok(ExitCode::SUCCESS)
}

/// `ledger unit SPEC` (a Slurm task): executes one unit, writes its result file.
pub fn unit(spec: &Path) -> Result<ExitCode> {
    ledger::slurm::run_unit(&stages::registry(), spec)?;
    Ok(ExitCode::SUCCESS)
}

pub fn ui(
    ctx: &Context,
    port: u16,
    bind: Option<std::net::IpAddr>,
    ablations: Vec<PathBuf>,
) -> Result<ExitCode> {
    // A `--bind` other than loopback is warned about by the server, once it is listening.
    let options = ui::Options {
        dir: ctx.dir.clone(),
        port,
        bind,
        ablations,
    };
    ui::serve(options, |addr| {
        // Tests and scripts read this line to find the port (`--port 0`).
        println!(
            "ledger ui: serving {} on http://{addr}/ (Ctrl-C stops it)",
            ctx.dir.display()
        );
        let _ = std::io::stdout().flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn stages(json: bool) -> Result<ExitCode> {
    let registry = stages::registry();
    if json {
        let list: Vec<_> = registry
            .iter()
            .map(|s| {
                json!({
                    "name": s.name(), "version": s.version(), "description": s.description(),
                    "inputs": s.inputs().iter().map(|i| json!({"name": i.name, "required": i.required, "description": i.description})).collect::<Vec<_>>(),
                    "outputs": s.outputs(),
                })
            })
            .collect();
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in registry.iter() {
        let inputs: Vec<&str> = s.inputs().iter().map(|i| i.name).collect();
        println!(
            "{:<12} v{}  {}  (inputs: {}; outputs: {})",
            s.name(),
            s.version(),
            s.description(),
            if inputs.is_empty() {
                "-".to_string()
            } else {
                inputs.join(", ")
            },
            s.outputs().join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
