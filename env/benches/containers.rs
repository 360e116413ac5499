//! Our bollard-based `env::Container` against the `docker` CLI doing the same work on the same
//! base image with the same container settings, in one run (`bench/env.sh`, or
//! `cargo bench -p davinci-env --bench containers`).
//!
//! Both contestants create a container from one `ContainerSpec` (network none, the spec's
//! CPU / memory / pids limits, `--init`, auto-remove, no-new-privileges, `sleep <rollout limit
//! + 60s>` as the main process) and run every command as the spec's non-root user, in its
//! workdir, with its environment, wrapped in the same `timeout -k 5 <secs>` that
//! `Container::exec_with` puts around it: the work inside the container is identical, only the
//! client path differs (bollard over the unix socket vs one `docker` process per operation).
//!
//! Measured:
//! - start-to-first-exec: create + start + a `true` exec finished, median and p90 over
//!   `BENCH_ENV_STARTS` containers (removal not timed); the contestants alternate;
//! - exec round-trips: `BENCH_ENV_EXECS` `echo` execs in one container each, interleaved
//!   (ours, CLI, ours, ...) so both see the same machine load; rate = execs / summed latency;
//! - rollouts per minute with N parallel workers (`BENCH_ENV_PARALLEL`, default `1,2,4`), each
//!   doing `BENCH_ENV_ROLLOUTS` rollouts: start a container, run the fixed agent-like command
//!   sequence `STEPS` (each output checked), remove the container.
//!
//! Every container carries the label `davinci.envbench=<pid>`. Ours are removed by their
//! guards; the CLI's by a guard per container, a sweep over the label at exit (also after an
//! error or a panic), and on Ctrl-C / SIGTERM.

use anyhow::{bail, Context};
use env::container::{Container, ContainerSpec, ExecRequest};
use env::Engine;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUN_LABEL: &str = "davinci.envbench";

/// An agent-like rollout: (bash script, a line its stdout must contain).
const STEPS: &[(&str, &str)] = &[
    (
        "mkdir -p repo && cd repo && git init -q && \
         printf 'def add(a, b):\\n    return a - b\\n' > calc.py && \
         git add calc.py && git commit -qm init && echo ok",
        "ok",
    ),
    ("ls -la repo", "calc.py"),
    ("cat repo/calc.py", "    return a - b"),
    (
        "grep -rn 'def ' repo --include='*.py'",
        "repo/calc.py:1:def add(a, b):",
    ),
    (
        "python3 -c \"open('repo/test_calc.py', 'w').write('from calc import add\\n\\n\
         def test_add():\\n    assert add(2, 3) == 5\\n')\" && echo written",
        "written",
    ),
    (
        "sed -i 's/a - b/a + b/' repo/calc.py && cat repo/calc.py",
        "    return a + b",
    ),
    ("cd repo && git diff", "+    return a + b"),
    (
        "cd repo && python3 -c 'import calc; print(calc.add(2, 3))'",
        "5",
    ),
    (
        "cd repo && python3 -m pytest -q -p no:cacheprovider test_calc.py",
        "1 passed",
    ),
    ("cd repo && git status --short", "?? test_calc.py"),
    (
        "find repo -name '*.py' -not -path '*/.git/*' | sort",
        "repo/test_calc.py",
    ),
];

/// A running container of either contestant.
/// What one command produced.
struct Out {
    code: i64,
    stdout: String,
    stderr: String,
}

trait Sandbox: Sized {
    /// Runs `argv` to completion.
    fn run(&self, argv: &[&str]) -> anyhow::Result<Out>;
    fn remove(self) -> anyhow::Result<()>;
}

trait Contestant: Sync {
    type Box: Sandbox + Send;
    fn start(&self) -> anyhow::Result<Self::Box>;
}

/// Ours: `env::Container` over the shared engine connection.
struct Ours {
    engine: Engine,
    spec: ContainerSpec,
}

impl Contestant for Ours {
    type Box = Container;
    fn start(&self) -> anyhow::Result<Container> {
        Container::start(&self.engine, self.spec.clone())
    }
}

impl Sandbox for Container {
    fn run(&self, argv: &[&str]) -> anyhow::Result<Out> {
        let out = self.exec_with(&ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })?;
        if out.timed_out {
            bail!("{argv:?} timed out");
        }
        Ok(Out {
            code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
    fn remove(self) -> anyhow::Result<()> {
        Container::remove(self)
    }
}

/// The `docker` CLI, one process per operation, with the spec's settings as flags.
struct Cli {
    spec: Arc<ContainerSpec>,
}

struct CliBox {
    spec: Arc<ContainerSpec>,
    id: String,
    removed: bool,
}

fn docker(args: &[String]) -> anyhow::Result<std::process::Output> {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `docker {}`", args.join(" ")))
}

impl Cli {
    fn run_args(&self) -> Vec<String> {
        let s = &self.spec;
        let mut a: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--network".into(),
            "none".into(),
            "--cpus".into(),
            s.cpus.to_string(),
            "--memory".into(),
            s.memory_bytes.to_string(),
            "--memory-swap".into(),
            s.memory_bytes.to_string(),
            "--pids-limit".into(),
            s.pids_limit.to_string(),
            "--init".into(),
            "--rm".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "-w".into(),
            s.workdir.clone(),
        ];
        for (k, v) in &s.labels {
            a.extend(["--label".into(), format!("{k}={v}")]);
        }
        for e in &s.env {
            a.extend(["-e".into(), e.clone()]);
        }
        a.push(s.image.clone());
        a.extend([
            "sleep".into(),
            (s.rollout_timeout.as_secs() + 60).to_string(),
        ]);
        a
    }
}

impl Contestant for Cli {
    type Box = CliBox;
    fn start(&self) -> anyhow::Result<CliBox> {
        let out = docker(&self.run_args())?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || id.is_empty() {
            if !id.is_empty() {
                let _ = docker(&["rm".into(), "-f".into(), id]);
            }
            bail!(
                "`docker run` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(CliBox {
            spec: self.spec.clone(),
            id,
            removed: false,
        })
    }
}

impl Sandbox for CliBox {
    fn run(&self, argv: &[&str]) -> anyhow::Result<Out> {
        let s = &self.spec;
        let mut a: Vec<String> = vec![
            "exec".into(),
            "-u".into(),
            s.user.clone(),
            "-w".into(),
            s.workdir.clone(),
        ];
        for e in &s.env {
            a.extend(["-e".into(), e.clone()]);
        }
        a.push(self.id.clone());
        // The same wrapper `Container::exec_with` adds.
        a.extend([
            "timeout".into(),
            "-k".into(),
            "5".into(),
            format!("{:.3}", s.exec_timeout.as_secs_f64()),
        ]);
        a.extend(argv.iter().map(|s| s.to_string()));
        let out = docker(&a)?;
        let Some(code) = out.status.code() else {
            bail!("`docker exec` was killed ({})", out.status);
        };
        Ok(Out {
            code: i64::from(code),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
    fn remove(mut self) -> anyhow::Result<()> {
        self.removed = true;
        let out = docker(&["rm".into(), "-f".into(), self.id.clone()])?;
        let err = String::from_utf8_lossy(&out.stderr);
        // Already gone (--rm) is fine, as for ours.
        if !out.status.success() && !err.contains("No such container") {
            bail!("`docker rm -f {}` failed: {}", self.id, err.trim());
        }
        Ok(())
    }
}

impl Drop for CliBox {
    fn drop(&mut self) {
        if !self.removed {
            let _ = docker(&["rm".into(), "-f".into(), self.id.clone()]);
        }
    }
}

/// Removes every container of this run (both contestants) by label.
fn sweep(label_value: &str) -> usize {
    let filter = format!("label={RUN_LABEL}={label_value}");
    let Ok(out) = docker(&["ps".into(), "-aq".into(), "--filter".into(), filter]) else {
        return 0;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if !ids.is_empty() {
        let mut a = vec!["rm".to_string(), "-f".into()];
        a.extend(ids.iter().cloned());
        let _ = docker(&a);
    }
    ids.len()
}

/// Sweeps at the end of `main`, also when it returns an error or unwinds.
struct SweepOnDrop(String);

impl Drop for SweepOnDrop {
    fn drop(&mut self) {
        let n = sweep(&self.0);
        if n > 0 {
            eprintln!(
                "removed {n} leftover container(s) labelled {RUN_LABEL}={}",
                self.0
            );
        }
    }
}

/// Set by the signal handler before it removes the containers (work in flight then fails).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ctrl-C / SIGTERM: remove our guarded containers and the CLI's, then exit.
fn install_signal_sweep(label_value: String) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    let (mut int, mut term) = {
        let _g = rt.enter();
        (
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
        )
    };
    std::thread::spawn(move || {
        let code = rt.block_on(async {
            let a = Box::pin(int.recv());
            let b = Box::pin(term.recv());
            match futures_util::future::select(a, b).await {
                futures_util::future::Either::Left(_) => 130,
                futures_util::future::Either::Right(_) => 143,
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        let ours = env::container::cleanup_all();
        let all = sweep(&label_value);
        eprintln!("interrupted: removed {ours} guarded container(s), {all} by label");
        std::process::exit(code);
    });
    Ok(())
}

fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{name}={v:?}: expected a positive integer"),
        },
        Err(_) => Ok(default),
    }
}

fn parallel_knob() -> anyhow::Result<Vec<usize>> {
    let Ok(v) = std::env::var("BENCH_ENV_PARALLEL") else {
        return Ok(vec![1, 2, 4]);
    };
    v.split(',')
        .map(|p| match p.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("BENCH_ENV_PARALLEL={v:?}: expected positive integers separated by commas"),
        })
        .collect()
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DAVINCI_ENV_CACHE") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("env-cache")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn expect_ok(what: &str, out: Out, needle: &str) -> anyhow::Result<()> {
    if out.code != 0 || !(needle.is_empty() || out.stdout.lines().any(|l| l.contains(needle))) {
        bail!(
            "{what}: exit {}, stdout {:?}, stderr {:?} (expected a line containing {needle:?})",
            out.code,
            out.stdout,
            out.stderr
        );
    }
    Ok(())
}

/// Start → `true` exec finished, in seconds; the container is removed afterwards.
fn start_to_first_exec<C: Contestant>(c: &C) -> anyhow::Result<f64> {
    let t = Instant::now();
    let b = c.start()?;
    let r = b.run(&["true"])?;
    let secs = t.elapsed().as_secs_f64();
    expect_ok("true", r, "")?;
    b.remove()?;
    Ok(secs)
}

/// One rollout; its duration in seconds.
fn rollout<C: Contestant>(c: &C) -> anyhow::Result<f64> {
    let t = Instant::now();
    let b = c.start()?;
    for (script, needle) in STEPS {
        let r = b.run(&["bash", "-c", script])?;
        expect_ok(script, r, needle)?;
    }
    b.remove()?;
    Ok(t.elapsed().as_secs_f64())
}

/// `workers` threads doing `per_worker` rollouts each: (rollouts per minute, durations).
fn rollouts<C: Contestant>(
    c: &C,
    workers: usize,
    per_worker: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let t = Instant::now();
    let results: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| s.spawn(|| (0..per_worker).map(|_| rollout(c)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let wall = t.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all.len() as f64 / wall * 60.0, all))
}

fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

struct Row {
    metric: String,
    ours: f64,
    cli: f64,
    higher_is_better: bool,
}

fn main() -> anyhow::Result<()> {
    let r = run();
    if r.is_err() && INTERRUPTED.load(Ordering::SeqCst) {
        // The failure is the interruption's doing; the handler reports and exits.
        loop {
            std::thread::park();
        }
    }
    r
}

fn run() -> anyhow::Result<()> {
    let starts = knob("BENCH_ENV_STARTS", 20)?;
    let execs = knob("BENCH_ENV_EXECS", 200)?;
    let per_worker = knob("BENCH_ENV_ROLLOUTS", 4)?;
    let parallel = parallel_knob()?;

    let label_value = std::process::id().to_string();
    install_signal_sweep(label_value.clone())?;
    let _sweep = SweepOnDrop(label_value.clone());

    let engine = Engine::connect()?;
    let (img, _) =
        env::image::ensure_base_image(&engine, &env::image::BaseImageSpec::default(), &cache_dir())
            .context("base image (DAVINCI_ENV_CACHE selects the cache)")?;
    let mut spec = ContainerSpec::new(&img.tag);
    // Leftovers of a killed run expire on their own within ~11 minutes.
    spec.rollout_timeout = Duration::from_secs(600);
    spec.labels.insert(RUN_LABEL.into(), label_value.clone());
    let ours = Ours {
        engine: engine.clone(),
        spec: spec.clone(),
    };
    let cli = Cli {
        spec: Arc::new(spec.clone()),
    };
    let cli_version = docker(&[
        "version".into(),
        "--format".into(),
        "{{.Client.Version}}".into(),
    ])
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default();

    println!(
        "env::Container (bollard, API {}) vs docker CLI {cli_version}; image {}",
        engine.api_version(),
        img.tag
    );
    println!(
        "spec: network none, cpus {}, memory {} MiB, pids {}, user {}, workdir {}",
        spec.cpus,
        spec.memory_bytes >> 20,
        spec.pids_limit,
        spec.user,
        spec.workdir
    );
    println!(
        "knobs: BENCH_ENV_STARTS={starts} BENCH_ENV_EXECS={execs} BENCH_ENV_ROLLOUTS={per_worker} \
         BENCH_ENV_PARALLEL={}; {} CPUs, load average {}",
        parallel
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(","),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let t_all = Instant::now();
    let mut rows = Vec::new();

    // Warm-up: one rollout each (page cache, first container of the image).
    rollout(&ours).context("ours: warm-up rollout")?;
    rollout(&cli).context("docker CLI: warm-up rollout")?;

    // 1. Start-to-first-exec.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..starts {
        if i % 2 == 0 {
            a.push(start_to_first_exec(&ours).context("ours: start")?);
            b.push(start_to_first_exec(&cli).context("docker CLI: start")?);
        } else {
            b.push(start_to_first_exec(&cli).context("docker CLI: start")?);
            a.push(start_to_first_exec(&ours).context("ours: start")?);
        }
    }
    for (q, name) in [(0.5, "median"), (0.9, "p90")] {
        rows.push(Row {
            metric: format!("start→first exec {name} (ms)"),
            ours: quantile(&a, q) * 1e3,
            cli: quantile(&b, q) * 1e3,
            higher_is_better: false,
        });
    }
    eprintln!("start-to-first-exec done ({:.0?})", t_all.elapsed());

    // 2. Exec round-trips, interleaved.
    {
        let co = ours.start().context("ours: start")?;
        let cc = cli.start().context("docker CLI: start")?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..execs + 5 {
            let word = format!("rt{i}");
            let t = Instant::now();
            expect_ok("ours: echo", co.run(&["echo", &word])?, &word)?;
            let x = t.elapsed().as_secs_f64();
            let t = Instant::now();
            expect_ok("docker CLI: echo", cc.run(&["echo", &word])?, &word)?;
            let y = t.elapsed().as_secs_f64();
            if i >= 5 {
                a.push(x);
                b.push(y);
            }
        }
        co.remove()?;
        cc.remove()?;
        rows.push(Row {
            metric: "exec round-trips / s".into(),
            ours: a.len() as f64 / a.iter().sum::<f64>(),
            cli: b.len() as f64 / b.iter().sum::<f64>(),
            higher_is_better: true,
        });
        for (q, name) in [(0.5, "median"), (0.9, "p90")] {
            rows.push(Row {
                metric: format!("exec latency {name} (ms)"),
                ours: quantile(&a, q) * 1e3,
                cli: quantile(&b, q) * 1e3,
                higher_is_better: false,
            });
        }
    }
    eprintln!("exec round-trips done ({:.0?})", t_all.elapsed());

    // 2b. The rollout's persistent shell against a `docker exec` per command (what `bash`
    // did before): the same `echo` in the same container, interleaved.
    let shell_rows = {
        let c = ours.start().context("ours: start for the shell session")?;
        let mut session = env::shell::ShellSession::new(&c, "/testbed");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..execs + 5 {
            let word = format!("sh{i}");
            let t = Instant::now();
            let r = session.run(&format!("echo {word}"), Duration::from_secs(30))?;
            let x = t.elapsed().as_secs_f64();
            anyhow::ensure!(r.stdout.trim() == word, "shell session: {r:?}");
            let t = Instant::now();
            let r = c.exec_with(&env::ExecRequest::bash(&format!("echo {word}")))?;
            let y = t.elapsed().as_secs_f64();
            anyhow::ensure!(r.stdout.trim() == word, "docker exec: {r:?}");
            if i >= 5 {
                a.push(x);
                b.push(y);
            }
        }
        drop(session);
        c.remove()?;
        vec![
            (
                "round trips / s",
                a.len() as f64 / a.iter().sum::<f64>(),
                b.len() as f64 / b.iter().sum::<f64>(),
            ),
            (
                "median (ms)",
                quantile(&a, 0.5) * 1e3,
                quantile(&b, 0.5) * 1e3,
            ),
            ("p90 (ms)", quantile(&a, 0.9) * 1e3, quantile(&b, 0.9) * 1e3),
        ]
    };
    eprintln!("shell session round-trips done ({:.0?})", t_all.elapsed());

    // 3. Rollouts per minute.
    for &n in &parallel {
        let (ra, da) = rollouts(&ours, n, per_worker)
            .with_context(|| format!("ours: rollouts, {n} parallel"))?;
        let (rb, db) = rollouts(&cli, n, per_worker)
            .with_context(|| format!("docker CLI: rollouts, {n} parallel"))?;
        rows.push(Row {
            metric: format!("rollouts / min, N={n}"),
            ours: ra,
            cli: rb,
            higher_is_better: true,
        });
        rows.push(Row {
            metric: format!("rollout median (s), N={n}"),
            ours: quantile(&da, 0.5),
            cli: quantile(&db, 0.5),
            higher_is_better: false,
        });
        eprintln!("rollouts N={n} done ({:.0?})", t_all.elapsed());
    }

    println!();
    println!(
        "{:<32} {:>10} {:>12} {:>9}  verdict",
        "metric", "ours", "docker CLI", "ours/CLI"
    );
    for r in &rows {
        let ratio = r.ours / r.cli;
        let better = if r.higher_is_better {
            ratio
        } else {
            1.0 / ratio
        };
        let verdict = if better >= 1.0 {
            format!("ours {better:.2}x better")
        } else {
            format!("CLI {:.2}x better", 1.0 / better)
        };
        println!(
            "{:<32} {:>10.2} {:>12.2} {:>9.2}  {verdict}",
            r.metric, r.ours, r.cli, ratio
        );
    }
    println!(
        "\n{:<32} {:>14} {:>16}",
        "`bash` tool, one echo", "shell session", "exec per command"
    );
    for (metric, x, y) in &shell_rows {
        println!("{metric:<32} {x:>14.2} {y:>16.2}");
    }
    println!(
        "\n{STEPS_LEN} commands per rollout; {} s in all; load average at the end {}",
        t_all.elapsed().as_secs(),
        loadavg(),
        STEPS_LEN = STEPS.len()
    );
    Ok(())
}
