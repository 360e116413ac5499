//! Realistic synthetic PR records for the benchmarks: one-line fixes to real modules of this
//! machine's Python standard library, shaped exactly as `collect` emits them.

use stages::record::{Commit, FileChange, PrRecord, RelevantFile};
use std::path::PathBuf;
use std::process::Command;

pub fn stdlib_modules() -> Vec<(String, String)> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .expect("python3 is needed to locate real Python sources");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("stdlib dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            (text.len() < 64 * 1024 && text.lines().count() > 20)
                .then(|| (p.file_name().unwrap().to_string_lossy().into_owned(), text))
        })
        .collect()
}

/// A deterministic, plausible fix: flip a comparison or tweak a constant on some line.
pub fn edit(text: &str, seed: usize) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for k in 0..lines.len() {
        let i = (seed * 7919 + k) % lines.len();
        let line = lines[i];
        let changed = if line.contains(" < ") {
            line.replacen(" < ", " <= ", 1)
        } else if line.contains(" == ") {
            line.replacen(" == ", " != ", 1)
        } else if line.contains(" + 1") {
            line.replacen(" + 1", " + 2", 1)
        } else {
            continue;
        };
        let mut out: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        out[i] = changed;
        return Some(out.concat());
    }
    None
}

/// `n` realistic PR records (see `benches/pipeline.rs`).
pub fn records(n: usize) -> Vec<PrRecord> {
    let modules = stdlib_modules();
    assert!(!modules.is_empty(), "no stdlib modules found");
    let mut out = Vec::with_capacity(n);
    let mut seed = 0;
    while out.len() < n {
        seed += 1;
        let (name, text) = &modules[seed % modules.len()];
        let Some(new_text) = edit(text, seed) else {
            continue;
        };
        let path = format!("lib/{name}");
        let patch = stages::collect::git::unified_hunks(text, &new_text);
        let change = FileChange {
            path: path.clone(),
            status: "modified".into(),
            additions: 1,
            deletions: 1,
            patch: Some(patch),
            ..Default::default()
        };
        let number = out.len() as u64 + 1;
        out.push(PrRecord {
            repo_name: format!("bench/repo{}", number % 500),
            repo_description: "Benchmark corpus built from the Python standard library".into(),
            number,
            title: format!("Fix boundary condition in {name}"),
            body: format!(
                "The check in `{name}` was off by one. This adjusts it.\n\nFixes #{number}"
            ),
            author: "alice".into(),
            author_type: "User".into(),
            merged: true,
            merged_at: Some("2024-01-01T00:00:00Z".into()),
            base_sha: format!("{:040x}", number),
            snapshot_sha: format!("{:040x}", number),
            commits: vec![Commit {
                sha: format!("{:040x}", number + 1),
                message: format!("Fix boundary in {name}"),
                author: "alice".into(),
                date: Some("2024-01-01T00:00:00Z".into()),
                diffs: vec![change.clone()],
                ..Default::default()
            }],
            files: vec![change],
            relevant_files: vec![RelevantFile {
                path,
                content: text.clone(),
            }],
            source: "git".into(),
            ..Default::default()
        });
    }
    out
}
