//! The data schemas that flow between the D_ctx stages.
//!
//! `PrRecord` is what `collect` produces from either source (GitHub REST or a local git clone)
//! and what `filter` consumes; `Sample` is what `reconstruct` renders. Field names follow the
//! released daVinci-Dev data where it is known (`repo_name`, `repo_description`, `title`, `body`,
//! `pr_summary`, `related_issue`, `relevant_files`, `commits` with `message`,
//! `refined_message`, `diffs`).

use serde::{Deserialize, Serialize};

/// One merged pull request (or, with `unit = "commit"`, one commit) with everything needed to
/// render it: conversation, commits with per-file patches, and file contents at the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrRecord {
    /// `owner/name`.
    pub repo_name: String,
    pub repo_description: String,
    pub number: u64,
    pub title: String,
    pub body: String,
    pub author: String,
    /// GitHub's `user.type`: "User", "Bot" or "Organization".
    pub author_type: String,
    pub merged: bool,
    /// RFC 3339.
    pub merged_at: Option<String>,
    pub created_at: Option<String>,
    pub base_sha: String,
    pub merge_commit_sha: Option<String>,
    /// The commit whose tree `relevant_files` were read from: the parent of the PR's first
    /// commit, falling back to `base_sha`.
    pub snapshot_sha: String,
    pub commits: Vec<Commit>,
    /// The PR's net file changes.
    pub files: Vec<FileChange>,
    /// Conversation comments, oldest first.
    pub comments: Vec<Comment>,
    /// Reviews, oldest first, each with its grouped inline comments.
    pub reviews: Vec<Review>,
    pub related_issue: Option<Issue>,
    /// Full content at `snapshot_sha` of every file the PR touches (old path for renames;
    /// added files are not context).
    pub relevant_files: Vec<RelevantFile>,
    /// Where the record came from: "github" or "git".
    pub source: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Commit {
    pub sha: String,
    pub message: String,
    pub author: String,
    pub date: Option<String>,
    pub diffs: Vec<FileChange>,
    /// The source no longer has this commit's changes (GitHub answered 422 for it): `diffs` is
    /// empty for that reason, not because the commit changed nothing. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diffs_unavailable: bool,
}

/// A changed file. `status` uses GitHub's words: added, removed, modified, renamed, copied,
/// changed, unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileChange {
    pub path: String,
    pub previous_path: Option<String>,
    pub status: String,
    pub additions: u64,
    pub deletions: u64,
    /// Unified diff hunks (GitHub's `patch`: no `---`/`+++` header). `None` for binary files
    /// or patches too large for the API.
    pub patch: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Comment {
    pub author: String,
    pub created_at: Option<String>,
    pub body: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Review {
    pub author: String,
    /// APPROVED, CHANGES_REQUESTED, COMMENTED, DISMISSED.
    pub state: String,
    pub submitted_at: Option<String>,
    pub body: String,
    pub comments: Vec<ReviewComment>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReviewComment {
    pub author: String,
    pub path: String,
    pub line: Option<u64>,
    pub diff_hunk: String,
    pub body: String,
    pub created_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub comments: Vec<Comment>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelevantFile {
    pub path: String,
    pub content: String,
}

/// A rendered training sample (one line of a corpus shard).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sample {
    /// `<repo_name>#<number>`.
    pub id: String,
    /// "general" (XML-like) or "python" (Markdown + search/replace).
    pub format: String,
    pub repo_name: String,
    pub repo_description: String,
    pub number: u64,
    pub title: String,
    pub body: String,
    /// LLM-written summary; `None` when no endpoint is configured (never invented).
    pub pr_summary: Option<String>,
    pub related_issue: Option<Issue>,
    pub relevant_files: Vec<RelevantFile>,
    pub commits: Vec<SampleCommit>,
    /// The rendered training text.
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SampleCommit {
    pub sha: String,
    pub message: String,
    /// LLM rewrite of `message`; `None` when there is none (the original is then used).
    pub refined_message: Option<String>,
    pub diffs: Vec<FileChange>,
}
