//! The Python-subset rendering (D_ctx_py): Markdown sections and search/replace edits.
//!
//! ````text
//! # Repository Context
//! Name: owner/name
//! Description: <repo description>
//!
//! # Issue                      (only with a linked issue)
//! Title: <issue title>
//!
//! <issue body>
//!
//! ## Comment by <login>        (one per issue comment, oldest first)
//! <comment body>
//!
//! # Pull Request
//! Title: <PR title>
//!
//! <PR body>
//!
//! # Relevant Files Found
//! ## path/at/snapshot.py       (one per relevant file, record order)
//! ```
//! <full content at the snapshot>
//! ```
//!
//! # Edits
//! <PR summary>                 (only with an LLM summary)
//!
//! <commit message: refined, else original>
//!
//! <its operations, one blank line apart>
//! ````
//!
//! # Operations
//!
//! A modified file becomes one `Edit` per diff hunk:
//!
//! ````text
//! Edit: path/to/file.py
//! Search:
//! ```
//! <old lines: the hunk's context and removed lines>
//! ```
//! Replace:
//! ```
//! <new lines: the hunk's context and added lines>
//! ```
//! ````
//!
//! Edits are meant to be applied in order, each to the file as the previous ones left it, and
//! every search block is unique (as a substring) in the file at that moment. A block that is
//! not, including the empty block of a pure insertion without context lines, is grown by one
//! surrounding line on each side at a time (one side at the start or end of the file), at most
//! `max_grow` lines each side (20). A block still not unique after that fails the sample:
//! `SearchNotUnique`, counted and dropped, since an ambiguous edit teaches the wrong thing.
//!
//! Whole-file operations (not published by the recipe; this is the rendering chosen here):
//!
//! * create (`added`; also `copied`, whose content is the copy after its patch):
//!   `Create: path` followed by the full new content in a fence. A modified file that was
//!   empty has nothing a search could anchor on, so its edit is rendered as a `Create` of the
//!   new content too (it overwrites the empty file).
//! * delete (`removed`): the single line `Delete: path`.
//! * rename (`renamed`): the single line `Rename: old/path.py -> new/path.py`, followed by the
//!   rename's content changes, if any, as `Edit`s against the new path.
//!
//! File state is tracked across the PR: it starts from the relevant files (the snapshot: the
//! parent of the first commit, or the base) and each commit's hunks are applied to it, so a
//! search block always matches the file as it is at that commit, including lines an earlier
//! commit added. Commits without file changes render nothing (not even their message).
//!
//! Fences are three backticks, or one more than the longest backtick run in the block when the
//! block itself contains three or more (Markdown files with code fences). A block's last line
//! always ends the line before the closing fence, so "no newline at end of file" is not
//! visible in the rendering. Prose (titles, bodies, messages) has CRLF turned into LF and
//! surrounding whitespace trimmed; file content is rendered byte for byte.

use super::patch::{self, Applied, Hunk, PatchError};
use crate::record::{FileChange, PrRecord};
use std::collections::BTreeMap;
use std::fmt;

/// One rendered operation of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Edit {
        path: String,
        search: String,
        replace: String,
    },
    Create {
        path: String,
        content: String,
    },
    Delete {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
}

/// Counts from planning one PR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub edits: u64,
    /// Search blocks that had to grow to become unique.
    pub grown: u64,
    /// Lines added to search blocks by growing, both sides together.
    pub grown_lines: u64,
    /// Hunks found away from the line their header names.
    pub relocated: u64,
    pub creates: u64,
    pub deletes: u64,
    pub renames: u64,
}

/// Why a PR cannot be rendered as search/replace edits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderError {
    Patch {
        commit: String,
        path: String,
        error: PatchError,
    },
    SearchNotUnique {
        commit: String,
        path: String,
        hunk: usize,
        max_grow: usize,
    },
    /// A text change without a patch (binary, or too large for the API).
    MissingPatch { commit: String, path: String },
    /// A change to a file the snapshot does not have (not in `relevant_files`).
    UnknownFile { commit: String, path: String },
}

impl RenderError {
    /// The metric name suffix for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Patch {
                error: PatchError::Malformed { .. },
                ..
            } => "malformed_patch",
            RenderError::Patch { .. } => "patch_does_not_apply",
            RenderError::SearchNotUnique { .. } => "search_not_unique",
            RenderError::MissingPatch { .. } => "missing_patch",
            RenderError::UnknownFile { .. } => "unknown_file",
        }
    }

    /// Every reason, so metrics list them all (zeros included) and runs compare cleanly.
    pub const REASONS: [&'static str; 5] = [
        "malformed_patch",
        "patch_does_not_apply",
        "search_not_unique",
        "missing_patch",
        "unknown_file",
    ];
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Patch {
                commit,
                path,
                error,
            } => write!(f, "commit {commit}: {path}: {error}"),
            RenderError::SearchNotUnique {
                commit,
                path,
                hunk,
                max_grow,
            } => write!(
                f,
                "commit {commit}: {path}: the search block of hunk {hunk} is not unique even with {max_grow} more lines each side"
            ),
            RenderError::MissingPatch { commit, path } => {
                write!(f, "commit {commit}: {path}: changed, but has no patch (binary or too large)")
            }
            RenderError::UnknownFile { commit, path } => write!(
                f,
                "commit {commit}: {path}: changed, but not among the relevant files at the snapshot"
            ),
        }
    }
}

impl std::error::Error for RenderError {}

/// The commits a PR renders as: its commits, or (a record without any) one unnamed commit of
/// its net changes.
pub fn commit_diffs(record: &PrRecord) -> Vec<(&str, &[FileChange])> {
    if record.commits.is_empty() {
        vec![("", record.files.as_slice())]
    } else {
        record
            .commits
            .iter()
            .map(|c| (c.sha.as_str(), c.diffs.as_slice()))
            .collect()
    }
}

/// Works out every commit's operations, tracking file contents from the snapshot on.
/// The result is aligned with [`commit_diffs`]; a commit without changes has no operations.
pub fn plan(record: &PrRecord, max_grow: usize) -> Result<(Vec<Vec<Op>>, PlanStats), RenderError> {
    let mut files: BTreeMap<String, String> = record
        .relevant_files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone()))
        .collect();
    let mut stats = PlanStats::default();
    let mut plans = Vec::new();
    for (sha, diffs) in commit_diffs(record) {
        let commit = short(sha);
        let mut ops = Vec::new();
        for change in diffs {
            plan_change(&mut files, change, &commit, max_grow, &mut ops, &mut stats)?;
        }
        plans.push(ops);
    }
    Ok((plans, stats))
}

fn short(sha: &str) -> String {
    if sha.is_empty() {
        "(net changes)".into()
    } else {
        sha.chars().take(12).collect()
    }
}

/// The hunks of a change; `None` for a change without content changes (mode only, or a pure
/// rename), an error for a content change without a patch.
fn hunks_of(change: &FileChange, commit: &str) -> Result<Option<Vec<Hunk>>, RenderError> {
    let path = || change.path.clone();
    match change.patch.as_deref() {
        Some(p) if !p.trim().is_empty() => {
            patch::parse(p)
                .map(Some)
                .map_err(|error| RenderError::Patch {
                    commit: commit.into(),
                    path: path(),
                    error,
                })
        }
        _ if change.additions == 0 && change.deletions == 0 => Ok(None),
        _ => Err(RenderError::MissingPatch {
            commit: commit.into(),
            path: path(),
        }),
    }
}

fn plan_change(
    files: &mut BTreeMap<String, String>,
    change: &FileChange,
    commit: &str,
    max_grow: usize,
    ops: &mut Vec<Op>,
    stats: &mut PlanStats,
) -> Result<(), RenderError> {
    let path = change.path.clone();
    let patch_error = |error: PatchError| RenderError::Patch {
        commit: commit.into(),
        path: path.clone(),
        error,
    };
    let unknown = |path: &str| RenderError::UnknownFile {
        commit: commit.into(),
        path: path.into(),
    };
    match change.status.as_str() {
        "unchanged" => {}
        "added" | "copied" => {
            let base = if change.status == "copied" {
                let from = change.previous_path.as_deref().unwrap_or_default();
                files.get(from).cloned().ok_or_else(|| unknown(from))?
            } else {
                String::new()
            };
            let content = match hunks_of(change, commit)? {
                Some(hunks) => patch::apply_hunks(&base, &hunks).map_err(patch_error)?,
                None => base,
            };
            files.insert(path.clone(), content.clone());
            ops.push(Op::Create { path, content });
            stats.creates += 1;
        }
        "removed" => {
            files.remove(&path);
            ops.push(Op::Delete { path });
            stats.deletes += 1;
        }
        "renamed" => {
            let from = change.previous_path.clone().ok_or_else(|| unknown(&path))?;
            let content = files.remove(&from).ok_or_else(|| unknown(&from))?;
            files.insert(path.clone(), content);
            ops.push(Op::Rename {
                from,
                to: path.clone(),
            });
            stats.renames += 1;
            if let Some(hunks) = hunks_of(change, commit)? {
                edit(files, &path, &hunks, commit, max_grow, ops, stats)?;
            }
        }
        // "modified", "changed" and anything GitHub adds later: a content change in place.
        _ => {
            if let Some(hunks) = hunks_of(change, commit)? {
                if !files.contains_key(&path) {
                    return Err(unknown(&path));
                }
                edit(files, &path, &hunks, commit, max_grow, ops, stats)?;
            }
        }
    }
    Ok(())
}

/// One `Edit` per hunk, each against the file as the previous hunks left it.
fn edit(
    files: &mut BTreeMap<String, String>,
    path: &str,
    hunks: &[Hunk],
    commit: &str,
    max_grow: usize,
    ops: &mut Vec<Op>,
    stats: &mut PlanStats,
) -> Result<(), RenderError> {
    let content = files.get_mut(path).expect("caller checked the file exists");
    let patch_error = |error: PatchError| RenderError::Patch {
        commit: commit.into(),
        path: path.into(),
        error,
    };
    if content.is_empty() {
        // Nothing to anchor a search on: the new content replaces the empty file.
        let new = patch::apply_hunks(content, hunks).map_err(patch_error)?;
        *content = new.clone();
        ops.push(Op::Create {
            path: path.into(),
            content: new,
        });
        stats.creates += 1;
        return Ok(());
    }
    let mut lines = patch::split_lines(content);
    let mut index = 0usize;
    let result = patch::apply_each(&mut lines, hunks, |lines, hunk, at: &Applied| {
        index += 1;
        let (start, end, grown) = grow(lines, at.pos, at.old_len, max_grow).ok_or_else(|| {
            EditError::Render(RenderError::SearchNotUnique {
                commit: commit.into(),
                path: path.into(),
                hunk: index,
                max_grow,
            })
        })?;
        let search = lines[start..end].concat();
        let mut replace = lines[start..at.pos].concat();
        replace.extend(hunk.new_lines());
        replace.push_str(&lines[at.pos + at.old_len..end].concat());
        stats.edits += 1;
        if grown > 0 {
            stats.grown += 1;
            stats.grown_lines += grown as u64;
        }
        if at.offset != 0 {
            stats.relocated += 1;
        }
        ops.push(Op::Edit {
            path: path.into(),
            search,
            replace,
        });
        Ok(())
    });
    match result {
        Ok(()) => {
            *content = lines.concat();
            Ok(())
        }
        Err(EditError::Patch(error)) => Err(patch_error(error)),
        Err(EditError::Render(error)) => Err(error),
    }
}

enum EditError {
    Patch(PatchError),
    Render(RenderError),
}

impl From<PatchError> for EditError {
    fn from(error: PatchError) -> EditError {
        EditError::Patch(error)
    }
}

/// Grows `lines[pos..pos + len]` by up to `max_grow` lines each side until it occurs exactly
/// once in the file. Returns the block's bounds and how many lines were added.
pub fn grow(
    lines: &[String],
    pos: usize,
    len: usize,
    max_grow: usize,
) -> Option<(usize, usize, usize)> {
    let haystack = lines.concat();
    let mut previous = None;
    for k in 0..=max_grow {
        let start = pos.saturating_sub(k);
        let end = (pos + len + k).min(lines.len());
        if previous == Some((start, end)) {
            break; // the whole file, and still not unique: only an empty file gets here
        }
        previous = Some((start, end));
        if is_unique(&haystack, &lines[start..end].concat()) {
            return Some((start, end, (pos - start) + (end - pos - len)));
        }
    }
    None
}

/// Whether `needle` occurs exactly once in `haystack`, overlapping occurrences counted.
pub fn is_unique(haystack: &str, needle: &str) -> bool {
    let Some(first) = haystack.find(needle).filter(|_| !needle.is_empty()) else {
        return false;
    };
    let step = needle.chars().next().map_or(1, char::len_utf8);
    !haystack[first + step..].contains(needle)
}

/// Everything the text needs besides the record: the summary and each commit's message.
pub struct Rendering<'a> {
    pub summary: Option<&'a str>,
    /// Aligned with [`commit_diffs`]: the message to show (refined, else original).
    pub messages: Vec<&'a str>,
    /// Aligned with [`commit_diffs`]: from [`plan`].
    pub ops: &'a [Vec<Op>],
}

pub fn render(record: &PrRecord, r: &Rendering) -> String {
    let mut out = String::new();
    out.push_str("# Repository Context\n");
    line(&mut out, "Name: ", &record.repo_name);
    line(&mut out, "Description: ", &record.repo_description);

    if let Some(issue) = &record.related_issue {
        out.push_str("\n# Issue\n");
        line(&mut out, "Title: ", &issue.title);
        paragraph(&mut out, &issue.body);
        for c in &issue.comments {
            out.push('\n');
            line(&mut out, "## Comment by ", &c.author);
            let body = prose(&c.body);
            if !body.is_empty() {
                out.push_str(&body);
                out.push('\n');
            }
        }
    }

    out.push_str("\n# Pull Request\n");
    line(&mut out, "Title: ", &record.title);
    paragraph(&mut out, &record.body);

    out.push_str("\n# Relevant Files Found\n");
    for (i, f) in record.relevant_files.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("## ");
        out.push_str(&f.path);
        out.push('\n');
        fenced(&mut out, &f.content);
    }

    out.push_str("\n# Edits\n");
    let mut first = true;
    let mut block = |out: &mut String| {
        if !first {
            out.push('\n');
        }
        first = false;
    };
    if let Some(summary) = r.summary.map(prose).filter(|s| !s.is_empty()) {
        block(&mut out);
        out.push_str(&summary);
        out.push('\n');
    }
    for (ops, message) in r.ops.iter().zip(&r.messages) {
        if ops.is_empty() {
            continue;
        }
        let message = prose(message);
        if !message.is_empty() {
            block(&mut out);
            out.push_str(&message);
            out.push('\n');
        }
        for op in ops {
            block(&mut out);
            render_op(&mut out, op);
        }
    }
    out
}

fn render_op(out: &mut String, op: &Op) {
    match op {
        Op::Edit {
            path,
            search,
            replace,
        } => {
            out.push_str("Edit: ");
            out.push_str(path);
            out.push_str("\nSearch:\n");
            fenced(out, search);
            out.push_str("Replace:\n");
            fenced(out, replace);
        }
        Op::Create { path, content } => {
            out.push_str("Create: ");
            out.push_str(path);
            out.push('\n');
            fenced(out, content);
        }
        Op::Delete { path } => {
            out.push_str("Delete: ");
            out.push_str(path);
            out.push('\n');
        }
        Op::Rename { from, to } => {
            out.push_str("Rename: ");
            out.push_str(from);
            out.push_str(" -> ");
            out.push_str(to);
            out.push('\n');
        }
    }
}

/// `label` + a one-line value (trimmed; inner newlines folded to spaces).
fn line(out: &mut String, label: &str, value: &str) {
    let value = one_line(value);
    out.push_str(label.trim_end());
    if !value.is_empty() {
        out.push(' ');
        out.push_str(&value);
    }
    out.push('\n');
}

/// A blank line and the text, when there is any.
fn paragraph(out: &mut String, text: &str) {
    let text = prose(text);
    if !text.is_empty() {
        out.push('\n');
        out.push_str(&text);
        out.push('\n');
    }
}

/// Free text as rendered: LF line ends, no surrounding blank space.
pub fn prose(text: &str) -> String {
    text.replace("\r\n", "\n").trim().to_string()
}

/// Prose folded onto one line (titles, names).
pub fn one_line(text: &str) -> String {
    prose(text).split('\n').collect::<Vec<_>>().join(" ")
}

/// The fence for a block: three backticks, or one more than the longest run inside it.
pub fn fence_for(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat(if longest >= 3 { longest + 1 } else { 3 })
}

fn fenced(out: &mut String, body: &str) {
    let fence = fence_for(body);
    out.push_str(&fence);
    out.push('\n');
    out.push_str(body);
    if !body.is_empty() && !body.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&fence);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Commit, RelevantFile};

    fn lines(s: &str) -> Vec<String> {
        patch::split_lines(s)
    }

    #[test]
    fn uniqueness_counts_overlapping_occurrences() {
        assert!(is_unique("abc", "b"));
        assert!(!is_unique("aaa", "aa"));
        assert!(!is_unique("abc", ""));
        assert!(!is_unique("abc", "x"));
        assert!(is_unique("é-é", "é-"));
    }

    #[test]
    fn grow_stops_at_the_first_unique_block() {
        let l = lines("x\npass\ny\npass\nz\n");
        assert_eq!(grow(&l, 1, 1, 20), Some((0, 3, 2)));
        // At the top of the file only the lower side can grow.
        let l = lines("pass\na\npass\nb\n");
        assert_eq!(grow(&l, 0, 1, 20), Some((0, 2, 1)));
        // An empty block (a pure insertion) always grows.
        let l = lines("a\nb\n");
        assert_eq!(grow(&l, 1, 0, 20), Some((0, 2, 2)));
        // Not enough room to become unique.
        let l = lines("p\np\np\np\n");
        assert_eq!(grow(&l, 1, 1, 1), None);
    }

    #[test]
    fn fences_outgrow_backtick_runs() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("a `b` ``c``"), "```");
        assert_eq!(fence_for("```py\nx\n```\n"), "````");
        assert_eq!(fence_for("`````"), "``````");
    }

    fn record(content: &str, patches: &[&str]) -> PrRecord {
        PrRecord {
            relevant_files: vec![RelevantFile {
                path: "m.py".into(),
                content: content.into(),
            }],
            commits: patches
                .iter()
                .enumerate()
                .map(|(i, p)| Commit {
                    sha: format!("c{i}"),
                    message: format!("commit {i}"),
                    diffs: vec![FileChange {
                        path: "m.py".into(),
                        status: "modified".into(),
                        additions: 1,
                        patch: Some(p.to_string()),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn edits_of_one_file_apply_in_sequence() {
        // Two hunks; the second's search is taken from the file after the first.
        let content = "a\nb\nc\nd\ne\nf\n";
        let (plans, stats) = plan(
            &record(
                content,
                &["@@ -1,2 +1,3 @@\n a\n+a2\n b\n@@ -5,2 +6,2 @@\n e\n-f\n+F\n"],
            ),
            20,
        )
        .unwrap();
        assert_eq!(
            plans[0],
            vec![
                Op::Edit {
                    path: "m.py".into(),
                    search: "a\nb\n".into(),
                    replace: "a\na2\nb\n".into()
                },
                Op::Edit {
                    path: "m.py".into(),
                    search: "e\nf\n".into(),
                    replace: "e\nF\n".into()
                }
            ]
        );
        assert_eq!(stats.edits, 2);
        assert_eq!(stats.grown, 0);
    }

    #[test]
    fn a_pure_insertion_is_anchored_on_its_neighbours() {
        let (plans, stats) = plan(&record("a\nb\nc\n", &["@@ -1,0 +2 @@\n+x\n"]), 20).unwrap();
        assert_eq!(
            plans[0],
            vec![Op::Edit {
                path: "m.py".into(),
                search: "a\nb\n".into(),
                replace: "a\nx\nb\n".into()
            }]
        );
        assert_eq!((stats.grown, stats.grown_lines), (1, 2));
    }

    #[test]
    fn an_empty_file_gets_its_content_as_a_create() {
        let (plans, stats) = plan(&record("", &["@@ -0,0 +1,2 @@\n+a\n+b\n"]), 20).unwrap();
        assert_eq!(
            plans[0],
            vec![Op::Create {
                path: "m.py".into(),
                content: "a\nb\n".into()
            }]
        );
        assert_eq!(stats.creates, 1);
    }

    #[test]
    fn failures_have_reasons() {
        let mismatch = plan(&record("a\n", &["@@ -1 +1 @@\n-b\n+c\n"]), 20).unwrap_err();
        assert_eq!(mismatch.reason(), "patch_does_not_apply");
        assert_eq!(
            mismatch.to_string(),
            "commit c0: m.py: hunk 1 does not apply: at file line 1 expected \"b\", found \"a\""
        );
        let malformed = plan(&record("a\n", &["@@ -1 +1\n-a\n+c\n"]), 20).unwrap_err();
        assert_eq!(malformed.reason(), "malformed_patch");
        let mut r = record("a\n", &["@@ -1 +1 @@\n-a\n+c\n"]);
        r.commits[0].diffs[0].path = "other.py".into();
        assert_eq!(plan(&r, 20).unwrap_err().reason(), "unknown_file");
        r.commits[0].diffs[0].patch = None;
        assert_eq!(plan(&r, 20).unwrap_err().reason(), "missing_patch");
    }
}
