//! Mining a local git clone: merged PRs from merge commits ("Merge pull request #N from …")
//! and squash commits ("… (#N)"), or, with `unit = "commit"`, every non-merge commit.
//!
//! Pure Rust through gitoxide. File changes come from a recursive tree comparison (identical
//! subtrees are skipped by id), renames are detected when a removed and an added path carry
//! the same blob, and patches are unified diffs with 3 lines of context in GitHub's `patch`
//! shape (hunks only). A local clone has no PR conversation, reviews or issues: those fields
//! stay empty rather than being guessed.

use crate::record::{Commit, FileChange, PrRecord, RelevantFile};
use anyhow::{anyhow, bail, Context, Result};
use gix::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Merged pull requests (merge and squash commits that name a PR number).
    #[default]
    Pr,
    /// Every non-merge commit, as a one-commit change.
    Commit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitParams {
    /// Path of the clone, relative to the experiment config's directory.
    pub repo: String,
    /// What to mine from: "HEAD", a branch or tag name, or a full commit id.
    #[serde(default = "default_rev")]
    pub rev: String,
    #[serde(default)]
    pub unit: Unit,
    /// `owner/name` recorded as `repo_name`; defaults to the clone's directory name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Files larger than this get no patch and no relevant-file content.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Keep only the newest N records (all when absent).
    #[serde(default)]
    pub max_records: Option<usize>,
}

fn default_rev() -> String {
    "HEAD".into()
}

fn default_max_file_bytes() -> u64 {
    1 << 20
}

/// What `collect` pins before keying: the commit the mining starts from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Fingerprint {
    pub repo_name: String,
    pub rev: String,
    pub commit: String,
    /// The clone's shallow boundary (`.git/shallow`: commits whose parents it lacks), sorted;
    /// empty for a full clone. Part of the pin because what can be mined depends on it: the
    /// same commit fetched deeper is a different action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shallow: Vec<String>,
}

pub fn open(workdir: &Path, params: &GitParams) -> Result<gix::Repository> {
    let path = workdir.join(&params.repo);
    gix::open(&path).with_context(|| format!("{}: not a git repository", path.display()))
}

pub fn repo_name(workdir: &Path, params: &GitParams) -> String {
    params.name.clone().unwrap_or_else(|| {
        let path = workdir.join(&params.repo);
        let path = path.canonicalize().unwrap_or(path);
        path.file_name().map_or("local/repo".into(), |n| {
            format!("local/{}", n.to_string_lossy())
        })
    })
}

/// Resolves `rev` to a commit id.
pub fn fingerprint(workdir: &Path, params: &GitParams) -> Result<Fingerprint> {
    let repo = open(workdir, params)?;
    let id = resolve(&repo, &params.rev)?;
    let mut shallow: Vec<String> = repo
        .shallow_commits()
        .context("reading the clone's shallow file")?
        .map(|commits| commits.iter().map(|id| id.to_string()).collect())
        .unwrap_or_default();
    shallow.sort();
    Ok(Fingerprint {
        repo_name: repo_name(workdir, params),
        rev: params.rev.clone(),
        commit: id.to_string(),
        shallow,
    })
}

fn resolve(repo: &gix::Repository, rev: &str) -> Result<ObjectId> {
    if rev == "HEAD" {
        return Ok(repo
            .head_id()
            .context("HEAD does not point at a commit")?
            .detach());
    }
    if let Ok(id) = ObjectId::from_hex(rev.as_bytes()) {
        return Ok(id);
    }
    for name in [
        rev.to_string(),
        format!("refs/heads/{rev}"),
        format!("refs/tags/{rev}"),
    ] {
        if let Ok(mut r) = repo.find_reference(name.as_str()) {
            return Ok(r.peel_to_id()?.detach());
        }
    }
    bail!("`{rev}` is neither HEAD, a branch, a tag nor a full commit id")
}

struct Node {
    parents: Vec<ObjectId>,
    time: i64,
}

/// Mines `fingerprint.commit`'s history, handing each record to `sink`, oldest first.
pub fn collect(
    repo: &gix::Repository,
    params: &GitParams,
    fingerprint: &Fingerprint,
    progress: &indicatif::ProgressBar,
    sink: &mut dyn FnMut(PrRecord) -> Result<()>,
) -> Result<GitStats> {
    let tip = ObjectId::from_hex(fingerprint.commit.as_bytes())?;
    repo.find_commit(tip).with_context(|| {
        format!(
            "commit {} is not in the clone (the history was rewritten or the clone is shallow)",
            fingerprint.commit
        )
    })?;
    let graph = history(repo, tip)?;
    let mut order: Vec<ObjectId> = graph.keys().copied().collect();
    order.sort_by_key(|id| (graph[id].time, *id));
    // A shallow clone's history stops at commits whose parents it lacks: they cannot be
    // compared with their parent, so a change that needs one of them is left out, counted.
    let boundary: HashSet<ObjectId> = graph
        .iter()
        .filter(|(_, n)| n.parents.iter().any(|p| !graph.contains_key(p)))
        .map(|(id, _)| *id)
        .collect();

    let mut units: Vec<(u64, Vec<ObjectId>, ObjectId)> = Vec::new(); // (number, commits, head)
    let mut stats = GitStats::default();
    let mut claimed: HashSet<u64> = HashSet::new();
    for (ordinal, id) in order.iter().enumerate() {
        let node = &graph[id];
        let commit = repo.find_commit(*id)?;
        let message = commit.message_raw_sloppy().to_string();
        match params.unit {
            Unit::Commit => {
                if node.parents.len() <= 1 {
                    units.push((ordinal as u64 + 1, vec![*id], *id));
                }
            }
            Unit::Pr => {
                if node.parents.len() == 2 {
                    if let Some(n) = merge_pr_number(&message) {
                        let commits = branch_commits(&graph, node.parents[0], node.parents[1]);
                        if !commits.is_empty() && claimed.insert(n) {
                            stats.merge_prs += 1;
                            units.push((n, commits, *id));
                        }
                    }
                } else if node.parents.len() == 1 {
                    if let Some(n) = squash_pr_number(&message) {
                        if claimed.insert(n) {
                            stats.squash_prs += 1;
                            units.push((n, vec![*id], *id));
                        }
                    }
                }
            }
        }
    }
    if !boundary.is_empty() {
        let before = units.len();
        units.retain(|(_, commits, head)| {
            !boundary.contains(head) && commits.iter().all(|c| !boundary.contains(c))
        });
        stats.shallow_boundary = (before - units.len()) as u64;
        let clone = repo.workdir().unwrap_or(repo.path()).display().to_string();
        if units.is_empty() {
            bail!(
                "{clone} is a shallow clone ({} commits reachable, {} of them at its boundary, without their parents):                  nothing in it can be mined as a change. Fetch the history with `git -C {clone} fetch --unshallow` (or clone without --depth)",
                graph.len(),
                boundary.len()
            );
        }
        tracing::warn!(
            "{clone} is a shallow clone: mining the {} changes it holds whole and leaving out {} at its boundary              (`git -C {clone} fetch --unshallow` gives the whole history)",
            units.len(),
            stats.shallow_boundary
        );
    }
    if let Some(max) = params.max_records {
        let skip = units.len().saturating_sub(max);
        units.drain(..skip);
    }
    progress.set_length(units.len() as u64);
    for (number, commits, head) in units {
        let record = build_record(repo, params, fingerprint, number, &commits, head, &graph)?;
        stats.records += 1;
        stats.commits += record.commits.len() as u64;
        sink(record)?;
        progress.inc(1);
    }
    Ok(stats)
}

#[derive(Debug, Default)]
pub struct GitStats {
    pub records: u64,
    pub commits: u64,
    pub merge_prs: u64,
    pub squash_prs: u64,
    /// Changes left out because a shallow clone lacks a parent they need.
    pub shallow_boundary: u64,
}

fn history(repo: &gix::Repository, tip: ObjectId) -> Result<HashMap<ObjectId, Node>> {
    let mut graph = HashMap::new();
    let mut queue = VecDeque::from([tip]);
    while let Some(id) = queue.pop_front() {
        if graph.contains_key(&id) {
            continue;
        }
        let commit = match repo.find_commit(id) {
            Ok(c) => c,
            // A shallow clone ends in commits whose parents are absent: history stops there.
            Err(_) => continue,
        };
        let parents: Vec<ObjectId> = commit.parent_ids().map(|p| p.detach()).collect();
        let time = commit.time().map(|t| t.seconds).unwrap_or(0);
        queue.extend(parents.iter().copied());
        graph.insert(id, Node { parents, time });
    }
    Ok(graph)
}

/// Commits reachable from `branch` but not from `base`, oldest first.
fn branch_commits(
    graph: &HashMap<ObjectId, Node>,
    base: ObjectId,
    branch: ObjectId,
) -> Vec<ObjectId> {
    let reachable = |from: ObjectId| {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([from]);
        while let Some(id) = queue.pop_front() {
            if seen.insert(id) {
                if let Some(n) = graph.get(&id) {
                    queue.extend(n.parents.iter().copied());
                }
            }
        }
        seen
    };
    let base_side = reachable(base);
    let mut commits: Vec<ObjectId> = reachable(branch)
        .into_iter()
        .filter(|id| !base_side.contains(id) && graph.contains_key(id))
        .filter(|id| graph[id].parents.len() <= 1)
        .collect();
    commits.sort_by_key(|id| (graph[id].time, *id));
    commits
}

/// "Merge pull request #123 from owner/branch" → 123.
pub fn merge_pr_number(message: &str) -> Option<u64> {
    let rest = message.strip_prefix("Merge pull request #")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// "Fix the thing (#123)" on the subject line → 123.
pub fn squash_pr_number(message: &str) -> Option<u64> {
    let subject = message.lines().next()?.trim_end();
    let inner = subject.strip_suffix(')')?;
    let start = inner.rfind("(#")?;
    inner[start + 2..].parse().ok()
}

fn split_message(message: &str) -> (String, String) {
    let message = message.trim();
    match message.split_once('\n') {
        Some((subject, body)) => (subject.trim().to_string(), body.trim().to_string()),
        None => (message.to_string(), String::new()),
    }
}

fn build_record(
    repo: &gix::Repository,
    params: &GitParams,
    fingerprint: &Fingerprint,
    number: u64,
    commits: &[ObjectId],
    head: ObjectId,
    graph: &HashMap<ObjectId, Node>,
) -> Result<PrRecord> {
    let first = commits[0];
    let snapshot = graph[&first].parents.first().copied();
    let head_commit = repo.find_commit(head)?;
    let head_message = head_commit.message_raw_sloppy().to_string();
    let is_merge = graph[&head].parents.len() == 2;
    // A merge commit's body carries the PR title; a squash commit's subject does.
    let (title, body) = if is_merge {
        let (_, rest) = split_message(&head_message);
        split_message(&rest)
    } else {
        let (subject, body) = split_message(&head_message);
        let title = match subject.rfind(" (#") {
            Some(i) if params.unit == Unit::Pr => subject[..i].to_string(),
            _ => subject,
        };
        (title, body)
    };
    let tip_of_change = if is_merge {
        graph[&head].parents[1]
    } else {
        head
    };

    let mut record_commits = Vec::new();
    for id in commits {
        let c = repo.find_commit(*id)?;
        let parent = graph[id].parents.first().copied();
        let author = c.author()?;
        record_commits.push(Commit {
            sha: id.to_string(),
            message: c.message_raw_sloppy().to_string().trim_end().to_string(),
            author: author.name.to_string(),
            date: c.time().ok().map(|t| ledger::event::rfc3339(t.seconds)),
            diffs: changes(repo, parent, *id, params.max_file_bytes)?,
            diffs_unavailable: false,
        });
    }
    let files = changes(repo, snapshot, tip_of_change, params.max_file_bytes)?;
    let mut relevant_files = Vec::new();
    if let Some(snap) = snapshot {
        let tree = repo.find_commit(snap)?.tree_id()?.detach();
        for f in &files {
            if f.status == "added" {
                continue;
            }
            let path = f.previous_path.as_deref().unwrap_or(&f.path);
            if let Some(content) = text_at(repo, tree, path, params.max_file_bytes)? {
                relevant_files.push(RelevantFile {
                    path: path.to_string(),
                    content,
                });
            }
        }
    }
    let first_commit = repo.find_commit(first)?;
    let author = first_commit.author()?.name.to_string();
    let author_type = if author.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    };
    let merged_at = head_commit
        .time()
        .ok()
        .map(|t| ledger::event::rfc3339(t.seconds));
    let created_at = first_commit
        .time()
        .ok()
        .map(|t| ledger::event::rfc3339(t.seconds));
    Ok(PrRecord {
        repo_name: fingerprint.repo_name.clone(),
        repo_description: params.description.clone(),
        number,
        title,
        body,
        author,
        author_type: author_type.into(),
        merged: true,
        merged_at,
        created_at,
        base_sha: snapshot.map(|s| s.to_string()).unwrap_or_default(),
        merge_commit_sha: Some(head.to_string()),
        snapshot_sha: snapshot.map(|s| s.to_string()).unwrap_or_default(),
        commits: record_commits,
        files,
        relevant_files,
        source: "git".into(),
        ..PrRecord::default()
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Entry {
    id: ObjectId,
    is_tree: bool,
    is_blob: bool,
}

/// Path → blob changes between two commits' trees (`None` = the empty tree).
fn changes(
    repo: &gix::Repository,
    old: Option<ObjectId>,
    new: ObjectId,
    max_bytes: u64,
) -> Result<Vec<FileChange>> {
    let old_tree = old
        .map(|c| {
            repo.find_commit(c)
                .and_then(|c| c.tree_id())
                .map(|t| t.detach())
        })
        .transpose()?;
    let new_tree = repo.find_commit(new)?.tree_id()?.detach();
    let mut raw: BTreeMap<String, (Option<ObjectId>, Option<ObjectId>)> = BTreeMap::new();
    diff_trees(repo, old_tree, Some(new_tree), "", &mut raw)?;

    // Exact renames: a removed path and an added path with the same blob.
    let mut removed_by_blob: HashMap<ObjectId, Vec<String>> = HashMap::new();
    for (path, (o, n)) in &raw {
        if let (Some(o), None) = (o, n) {
            removed_by_blob.entry(*o).or_default().push(path.clone());
        }
    }
    let mut renamed_from: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for (path, (o, n)) in &raw {
        let (status, previous_path, old_id) = match (o, n) {
            (None, Some(n)) => match removed_by_blob.get_mut(n).and_then(|v| v.pop()) {
                Some(from) => {
                    renamed_from.insert(from.clone());
                    ("renamed", Some(from), Some(*n))
                }
                None => ("added", None, None),
            },
            (Some(_), None) => ("removed", None, *o),
            (Some(_), Some(_)) => ("modified", None, *o),
            (None, None) => continue,
        };
        out.push((path.clone(), status, previous_path, old_id, *n));
    }
    out.retain(|(path, status, ..)| !(*status == "removed" && renamed_from.contains(path)));

    out.into_iter()
        .map(|(path, status, previous_path, old_id, new_id)| {
            let old_text = old_id
                .map(|id| blob_text(repo, id, max_bytes))
                .transpose()?
                .flatten();
            let new_text = new_id
                .map(|id| blob_text(repo, id, max_bytes))
                .transpose()?
                .flatten();
            let readable = (old_id.is_none() || old_text.is_some())
                && (new_id.is_none() || new_text.is_some());
            let patch = readable.then(|| {
                unified_hunks(
                    old_text.as_deref().unwrap_or(""),
                    new_text.as_deref().unwrap_or(""),
                )
            });
            let (additions, deletions) = patch.as_deref().map_or((0, 0), count_lines);
            Ok(FileChange {
                path,
                previous_path,
                status: status.to_string(),
                additions,
                deletions,
                patch: patch.filter(|p| !p.is_empty()),
            })
        })
        .collect()
}

fn diff_trees(
    repo: &gix::Repository,
    old: Option<ObjectId>,
    new: Option<ObjectId>,
    prefix: &str,
    out: &mut BTreeMap<String, (Option<ObjectId>, Option<ObjectId>)>,
) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let entries = |tree: Option<ObjectId>| -> Result<BTreeMap<String, Entry>> {
        let Some(id) = tree else {
            return Ok(BTreeMap::new());
        };
        let tree = repo.find_tree(id)?;
        let decoded = tree.decode()?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| {
                (
                    e.filename.to_string(),
                    Entry {
                        id: e.oid.to_owned(),
                        is_tree: e.mode.is_tree(),
                        is_blob: e.mode.is_blob_or_symlink(),
                    },
                )
            })
            .collect())
    };
    let (a, b) = (entries(old)?, entries(new)?);
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let path = format!("{prefix}{name}");
        let (x, y) = (a.get(name), b.get(name));
        if x == y {
            continue;
        }
        let tree_of = |e: Option<&Entry>| e.filter(|e| e.is_tree).map(|e| e.id);
        let blob_of = |e: Option<&Entry>| e.filter(|e| e.is_blob).map(|e| e.id);
        if tree_of(x).is_some() || tree_of(y).is_some() {
            diff_trees(repo, tree_of(x), tree_of(y), &format!("{path}/"), out)?;
        }
        let (bx, by) = (blob_of(x), blob_of(y));
        if bx != by {
            out.insert(path, (bx, by));
        }
    }
    Ok(())
}

fn blob_text(repo: &gix::Repository, id: ObjectId, max_bytes: u64) -> Result<Option<String>> {
    let object = repo.find_object(id)?;
    if object.data.len() as u64 > max_bytes {
        return Ok(None);
    }
    Ok(String::from_utf8(object.data.clone()).ok())
}

fn text_at(repo: &gix::Repository, tree: ObjectId, path: &str, max: u64) -> Result<Option<String>> {
    let mut current = tree;
    let parts: Vec<&str> = path.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let t = repo.find_tree(current)?;
        let decoded = t.decode()?;
        let Some(entry) = decoded
            .entries
            .iter()
            .find(|e| e.filename == part.as_bytes())
        else {
            return Ok(None);
        };
        let id = entry.oid.to_owned();
        if i + 1 == parts.len() {
            return if entry.mode.is_blob() {
                blob_text(repo, id, max)
            } else {
                Ok(None)
            };
        }
        if !entry.mode.is_tree() {
            return Err(anyhow!("{path}: `{part}` is not a directory"));
        }
        current = id;
    }
    Ok(None)
}

/// GitHub-style patch: unified hunks with 3 lines of context and no file header.
pub fn unified_hunks(old: &str, new: &str) -> String {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = String::new();
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        out.push_str(&hunk.to_string());
    }
    out
}

fn count_lines(patch: &str) -> (u64, u64) {
    let mut adds = 0;
    let mut dels = 0;
    for line in patch.lines() {
        if line.starts_with('+') {
            adds += 1;
        } else if line.starts_with('-') {
            dels += 1;
        }
    }
    (adds, dels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_numbers_from_messages() {
        assert_eq!(
            merge_pr_number("Merge pull request #42 from a/b\n\nTitle"),
            Some(42)
        );
        assert_eq!(merge_pr_number("Merge branch 'x'"), None);
        assert_eq!(squash_pr_number("Fix parser (#7)\n\nbody"), Some(7));
        assert_eq!(squash_pr_number("Fix (#7) later"), None);
        assert_eq!(squash_pr_number("Fix (#x)"), None);
    }

    #[test]
    fn hunks_have_no_header_and_mark_missing_newline() {
        let p = unified_hunks("a\nb\nc\n", "a\nB\nc");
        assert!(p.starts_with("@@ -1,3 +1,3 @@\n"), "{p}");
        assert!(p.contains("-b\n-c\n+B\n+c\n"), "{p}");
        assert!(p.contains("\\ No newline at end of file"), "{p}");
        assert_eq!(count_lines(&p), (2, 2));
    }
}
