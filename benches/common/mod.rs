//! Helpers the benchmark binaries share: knobs from the environment, child processes timed
//! with `wait4`, medians, number formatting and the summary table.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

/// A whole-number knob from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The headline numbers, printed together at the end, in columns of the given widths.
pub struct Summary {
    rows: Vec<[String; 4]>,
    widths: [usize; 3],
}

impl Summary {
    /// Widths of the measure, value and target columns.
    pub fn new(widths: [usize; 3]) -> Summary {
        Summary {
            rows: Vec::new(),
            widths,
        }
    }

    pub fn add(&mut self, what: &str, value: String, target: &str, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "ok",
            Some(false) => "MISS",
            None => "",
        };
        self.rows
            .push([what.into(), value, target.into(), verdict.into()]);
    }

    pub fn print(&self) {
        let [w, v, t] = self.widths;
        println!();
        println!("SUMMARY");
        println!("   {:<w$} {:>v$}   {:<t$}", "measure", "value", "target");
        for [what, value, target, verdict] in &self.rows {
            println!("   {what:<w$} {value:>v$}   {target:<t$} {verdict}");
        }
    }
}

pub struct ChildRun {
    pub secs: f64,
    /// User + system CPU time.
    pub cpu_secs: f64,
    /// Peak resident set size, KiB (`ru_maxrss` on Linux).
    pub maxrss_kib: u64,
    pub stdout: String,
}

/// Runs a child to completion: wall time from spawn to reaping, CPU and peak RSS from `wait4`.
/// Panics if it fails.
#[allow(clippy::zombie_processes)] // reaped by wait4, which `Child` does not know about
pub fn run_child(cmd: &mut Command) -> ChildRun {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; both pointers are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "wait4: {e}");
    }
    let secs = start.elapsed().as_secs_f64();
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    assert!(
        ok,
        "{cmd:?} failed (wait status {status}):\n{stderr}{stdout}"
    );
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ChildRun {
        secs,
        cpu_secs: tv(usage.ru_utime) + tv(usage.ru_stime),
        maxrss_kib: usage.ru_maxrss.max(0) as u64,
        stdout,
    }
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The CPU model from `/proc/cpuinfo` (the architecture where there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
