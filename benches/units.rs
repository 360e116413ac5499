//! Work units and executors (`cargo bench --bench units`; `bench/run.sh units`):
//!
//! 1. planning at the recipe's scale: a node of `UNITS_SHARDS` units (10,000) each writing a
//!    shard of `UNITS_RECORDS` synthetic PR records (1,000: 10,000,000 in all), then the real
//!    `filter` over that dataset (a dedupe unit and one unit per shard): time to plan, execute
//!    and record each node, events written, ledger size, peak memory, `verify` time, and a
//!    second run answered from the cache (planning and cache lookups only);
//! 2. the local executor's speedup at 1 and 2 workers: `reconstruct` over realistic PR
//!    records in `UNITS_RECON_SHARDS` shards, and (with a Docker engine) the quickstart's
//!    rollouts;
//! 3. the per-unit cost under Slurm against the local executor: `UNITS_SLURM` trivial units
//!    (`command` running `true`), submit to recorded (with a Slurm cluster: `scripts/slurm.sh`).
//!
//! Everything is measured in one run and printed as one table.

#[allow(dead_code)] // each bench uses part of it
mod common;
#[path = "common/prs.rs"]
mod prs;

use common::{env_num, thousands, Summary};
use ledger::config::{parse_params, Experiment, ParamError};
use ledger::plan::{Compose, Plan, PlanContext, Unit, UnitSpec};
use ledger::runner::{run, Executor, RunOptions};
use ledger::stage::{InputSpec, Registry, Stage, StageContext};
use ledger::{Ledger, Wait};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const LEDGER_BIN: &str = env!("CARGO_BIN_EXE_ledger");

/// Writes `records` tiny synthetic PR records into one shard per unit.
struct Synth;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SynthParams {
    shards: u64,
    records: u64,
}

impl Stage for Synth {
    fn name(&self) -> &'static str {
        "synth"
    }
    fn version(&self) -> u32 {
        1
    }
    fn description(&self) -> &'static str {
        "synthetic PR shards"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["prs"]
    }
    fn check(&self, params: toml::Table) -> Result<serde_json::Value, ParamError> {
        let p: SynthParams = parse_params(params)?;
        Ok(serde_json::to_value(p).unwrap())
    }
    fn plan(&self, plan: &PlanContext) -> anyhow::Result<Plan> {
        let p: SynthParams = plan.params()?;
        let ids: Vec<String> = (0..p.shards).map(|i| format!("shard.{i:05}")).collect();
        Ok(Plan {
            units: ids
                .iter()
                .enumerate()
                .map(|(i, id)| UnitSpec {
                    unit: Unit {
                        id: id.clone(),
                        params: serde_json::json!({ "shard": i }),
                    },
                    inputs: Vec::new(),
                })
                .collect(),
            outputs: vec![(
                "prs".into(),
                Compose::Manifest {
                    parts: ids.iter().map(|id| (id.clone(), "prs".into())).collect(),
                    media_type: stages::shard::MEDIA_TYPE.into(),
                },
            )],
        })
    }
    fn execute(&self, ctx: &mut StageContext) -> anyhow::Result<()> {
        let p: SynthParams = ctx.params()?;
        #[derive(serde::Deserialize)]
        struct One {
            shard: u64,
        }
        let one: One = ctx.unit_params()?;
        let mut shard = stages::shard::ShardWriter::new(ctx)?;
        for r in 0..p.records {
            let number = one.shard * p.records + r;
            shard.push(&stages::record::PrRecord {
                repo_name: format!("synthetic/repo{}", number % 997),
                number,
                title: format!("Fix {number}"),
                merged: true,
                author: "alice".into(),
                author_type: "User".into(),
                source: "git".into(),
                ..Default::default()
            })?;
        }
        shard.finish(ctx, "prs")?;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut r = stages::registry();
    r.register(Box::new(Synth));
    r
}

fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn experiment(dir: &Path, name: &str, text: &str) -> Experiment {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    Experiment::parse(&path, text.to_string(), &registry()).unwrap()
}

fn options(jobs: usize) -> RunOptions {
    RunOptions {
        progress: false,
        jobs,
        executor: Executor::Local,
    }
}

fn main() {
    let mut summary = Summary::new([52, 24, 16]);
    let work = tempfile::tempdir().unwrap();
    let cores = common::cpus();
    println!("units benchmark on {} ({cores} cores)", common::cpu_model());

    // 1. Planning at scale.
    let shards = env_num("UNITS_SHARDS", 10_000);
    let records = env_num("UNITS_RECORDS", 1_000);
    let dir = work.path().join("scale");
    Ledger::init(&dir).unwrap();
    let text = format!(
        "[[stage]]\nid = \"prs\"\nuses = \"synth\"\nshards = {shards}\nrecords = {records}\n\n\
         [[stage]]\nid = \"kept\"\nuses = \"filter\"\ninputs = {{ prs = \"prs.prs\" }}\nsubset = \"general\"\n"
    );
    let exp = experiment(work.path(), "scale.toml", &text);
    let mut l = Ledger::open_writer(&dir, Wait::Block).unwrap();
    let t = Instant::now();
    let report = run(&mut l, &registry(), &exp, &options(cores)).unwrap();
    let first = t.elapsed().as_secs_f64();
    let events = l.event_count();
    let t = Instant::now();
    let again = run(&mut l, &registry(), &exp, &options(cores)).unwrap();
    let cached = t.elapsed().as_secs_f64();
    assert!(again
        .steps
        .iter()
        .all(|s| matches!(s.outcome, ledger::runner::Outcome::Cached { .. })));
    drop(l);
    let size = du(&dir);
    let t = Instant::now();
    let v = Command::new(LEDGER_BIN)
        .arg("--ledger")
        .arg(&dir)
        .arg("verify")
        .output()
        .unwrap();
    let verify = t.elapsed().as_secs_f64();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    println!(
        "\n1. PLANNING AT SCALE: {} PR records in {} shards",
        thousands(shards * records),
        thousands(shards)
    );
    for s in &report.steps {
        println!(
            "   {:<6} {:>8.2} s  {:>6} units",
            s.node,
            s.seconds,
            s.units.as_ref().map_or(1, |u| u.total)
        );
    }
    println!(
        "   events {}, ledger {:.1} MiB, peak RSS {} MiB",
        thousands(events),
        size as f64 / 1048576.0,
        peak_rss_kib() / 1024
    );
    let per_unit_ms = first * 1000.0 / (2 * shards + 1) as f64;
    summary.add(
        "scale: synth + filter, first run",
        format!("{first:.1} s"),
        "",
        None,
    );
    summary.add(
        "scale: per unit (plan, execute, record)",
        format!("{per_unit_ms:.2} ms"),
        "",
        None,
    );
    summary.add(
        "scale: second run (all from the cache)",
        format!("{cached:.2} s"),
        "",
        None,
    );
    summary.add("scale: events written", thousands(events), "", None);
    summary.add(
        "scale: ledger size",
        format!("{:.1} MiB", size as f64 / 1048576.0),
        "",
        None,
    );
    summary.add(
        "scale: peak RSS of the run",
        format!("{} MiB", peak_rss_kib() / 1024),
        "",
        None,
    );
    summary.add("scale: `ledger verify`", format!("{verify:.2} s"), "", None);

    // 2. Local speedup: reconstruct at 1 and 2 workers.
    let recon_shards = env_num("UNITS_RECON_SHARDS", 16) as usize;
    let per_shard = env_num("UNITS_RECON_RECORDS", 250) as usize;
    let prs = prs::records(recon_shards * per_shard);
    let mut times = Vec::new();
    for jobs in [1usize, 2] {
        let dir = work.path().join(format!("recon-{jobs}"));
        Ledger::init(&dir).unwrap();
        let mut l = Ledger::open_writer(&dir, Wait::Block).unwrap();
        // Shards via the `collect`-shaped writer: one zstd JSONL blob per shard, then a manifest.
        let mut parts = Vec::new();
        for chunk in prs.chunks(per_shard) {
            let mut enc = zstd::Encoder::new(Vec::new(), 9).unwrap();
            for r in chunk {
                serde_json::to_writer(&mut enc, r).unwrap();
                std::io::Write::write_all(&mut enc, b"\n").unwrap();
            }
            let bytes = enc.finish().unwrap();
            let (hash, size, event) = l
                .prepare_add(
                    &mut bytes.as_slice(),
                    "shard",
                    stages::shard::MEDIA_TYPE,
                    ledger::event::Origin::File {
                        path: "shard".into(),
                    },
                )
                .unwrap();
            if let Some(e) = event {
                l.append_one(e).unwrap();
            }
            parts.push(ledger::manifest::Part {
                unit: format!("{}", parts.len()),
                hash,
                size,
            });
        }
        let manifest = ledger::manifest::Manifest::new(stages::shard::MEDIA_TYPE, parts).encode();
        let (m, _) = l
            .add(
                &mut manifest.as_slice(),
                "dataset",
                ledger::manifest::MEDIA_TYPE,
                ledger::event::Origin::File {
                    path: "dataset".into(),
                },
            )
            .unwrap();
        let exp = experiment(
            &dir,
            "recon.toml",
            &format!("[[stage]]\nid = \"samples\"\nuses = \"reconstruct\"\ninputs = {{ prs = \"@{m}\" }}\nformat = \"python\"\n"),
        );
        let t = Instant::now();
        let r = run(&mut l, &registry(), &exp, &options(jobs)).unwrap();
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(r.steps[0].units.as_ref().unwrap().total, recon_shards);
    }
    println!("\n2. LOCAL EXECUTOR: reconstruct of {} records in {recon_shards} shards: 1 worker {:.2} s, 2 workers {:.2} s", prs.len(), times[0], times[1]);
    summary.add(
        "reconstruct, 1 worker",
        format!("{:.2} s", times[0]),
        "",
        None,
    );
    summary.add(
        "reconstruct, 2 workers",
        format!("{:.2} s", times[1]),
        "",
        None,
    );
    summary.add(
        "reconstruct speedup at 2 workers",
        format!("{:.2}x", times[0] / times[1]),
        "",
        None,
    );

    if docker_up() {
        let (one, two) = rollouts(work.path());
        summary.add(
            "quickstart rollouts, 1 worker",
            format!("{one:.1} s"),
            "",
            None,
        );
        summary.add(
            "quickstart rollouts, 2 workers",
            format!("{two:.1} s"),
            "",
            None,
        );
        summary.add(
            "rollout speedup at 2 workers",
            format!("{:.2}x", one / two),
            "",
            None,
        );
    } else {
        println!("   (no Docker engine: the rollout speedup is not measured)");
    }

    // 3. Per-unit cost under Slurm and locally.
    let n = env_num("UNITS_SLURM", 20);
    if Command::new("sinfo")
        .arg("-h")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let mut per = Vec::new();
        for executor in ["local", "slurm"] {
            let dir = work.path().join(format!("trivial-{executor}"));
            std::fs::create_dir_all(&dir).unwrap();
            let exp = dir.join("trivial.toml");
            // The synthetic shards are made here (the bench stage is not in the binary).
            let ledger_dir = dir.join("ledger");
            Ledger::init(&ledger_dir).unwrap();
            let mut l = Ledger::open_writer(&ledger_dir, Wait::Block).unwrap();
            let src = experiment(
                &dir,
                "src.toml",
                &format!("[[stage]]\nid = \"src\"\nuses = \"synth\"\nshards = {n}\nrecords = 1\n"),
            );
            let r = run(&mut l, &registry(), &src, &options(1)).unwrap();
            drop(l);
            let manifest = &r.steps[0].outputs[0].1;
            let t_text = format!(
                "[executor.slurm]\npoll_ms = 100\n\n[[stage]]\nid = \"t\"\nuses = \"command\"\ninputs = {{ prs = \"@{manifest}\" }}\nfor_each = \"prs\"\n\
                 command = [\"sh\", \"-c\", \"cp {{in:prs}} {{out:copy}}\"]\noutputs = [\"copy\"]\n"
            );
            std::fs::write(&exp, t_text).unwrap();
            let t = Instant::now();
            let out = Command::new(LEDGER_BIN)
                .arg("--ledger")
                .arg(&ledger_dir)
                .args([
                    "run",
                    "--no-progress",
                    "--jobs",
                    "1",
                    "--executor",
                    executor,
                ])
                .arg(&exp)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            per.push(t.elapsed().as_secs_f64() * 1000.0 / n as f64);
        }
        println!(
            "\n3. PER UNIT, submit to recorded ({n} trivial units): local {:.1} ms, Slurm {:.1} ms",
            per[0], per[1]
        );
        summary.add(
            "per unit, local executor (1 worker)",
            format!("{:.1} ms", per[0]),
            "",
            None,
        );
        summary.add(
            "per unit, Slurm executor",
            format!("{:.1} ms", per[1]),
            "",
            None,
        );
    } else {
        println!("\n3. (no Slurm cluster answers `sinfo`: scripts/slurm.sh starts one)");
    }
    println!();
    summary.print();
}

fn docker_up() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The quickstart's `bugs` and `rollouts` stages, the rollouts executed at 1 and at 2 workers:
/// `bugs` runs once, its ledger is copied, and each copy executes the rollouts for real (the
/// copies hold no rollout's record, so every container action is performed).
fn rollouts(work: &Path) -> (f64, f64) {
    let quickstart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/quickstart.toml"),
    )
    .unwrap();
    let head = "[experiment]\nname = \"rollouts-bench\"\nseed = 20260123\n";
    let (mut bugs, mut both) = (String::from(head), String::from(head));
    for block in quickstart.split("[[stage]]").skip(1) {
        let id = block
            .lines()
            .find_map(|l| l.strip_prefix("id = "))
            .unwrap_or("");
        let block = block.replace(
            "inputs = { instances = \"bugs.instances\", tokenizer = \"tokens.tokenizer\" }",
            "inputs = { instances = \"bugs.instances\" }",
        );
        if id == "\"bugs\"" {
            bugs.push_str("[[stage]]");
            bugs.push_str(&block);
        }
        if id == "\"bugs\"" || id == "\"rollouts\"" {
            both.push_str("[[stage]]");
            both.push_str(&block);
        }
    }
    let dir = work.join("rollouts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bugs.toml"), bugs).unwrap();
    std::fs::write(dir.join("both.toml"), both).unwrap();
    let ledger = |name: &str| dir.join(format!("ledger-{name}"));
    let run_config = |ledger: &Path, config: &str, jobs: usize| -> serde_json::Value {
        let out = Command::new(LEDGER_BIN)
            .arg("--ledger")
            .arg(ledger)
            .args([
                "run",
                "--json",
                "--no-progress",
                "--jobs",
                &jobs.to_string(),
            ])
            .arg(dir.join(config))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    run_config(&ledger("1"), "bugs.toml", 2);
    let status = Command::new("cp")
        .arg("-a")
        .arg(ledger("1"))
        .arg(ledger("2"))
        .status()
        .unwrap();
    assert!(status.success());
    let mut seconds = Vec::new();
    for jobs in [1usize, 2] {
        let report = run_config(&ledger(&jobs.to_string()), "both.toml", jobs);
        let step = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node"] == "rollouts")
            .unwrap()
            .clone();
        assert_eq!(step["outcome"], "Executed", "{report:#}");
        seconds.push(step["seconds"].as_f64().unwrap());
    }
    println!(
        "   quickstart rollouts: 1 worker {:.1} s, 2 workers {:.1} s",
        seconds[0], seconds[1]
    );
    (seconds[0], seconds[1])
}
