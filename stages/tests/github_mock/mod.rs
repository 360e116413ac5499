//! A GitHub-compatible REST server for tests: HTTP/1.1 on 127.0.0.1, keep-alive, with the
//! payloads (full field sets, as api.github.com sends them) of a small fixed world, `Link`
//! pagination, ETags and `If-None-Match`, `x-ratelimit-*` headers, bearer-token checks, and
//! injectable faults: any status with any headers, primary and secondary rate limits, bodies
//! that are not JSON, and a connection cut mid-body after which the server is gone.
//!
//! Plain `std::net`, one thread per connection: no server crate needed.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const API: &str = "https://api.github.com";
const WEB: &str = "https://github.com";

// ---------------------------------------------------------------------------------------------
// The world's file contents and patches (the tests compare against these).

pub const PARSER_AT_SNAPSHOT: &str =
    "def parse(text):\n    tokens = text.split()\n    return [t for t in tokens if t]\n";
pub const PARSER_AT_BASE: &str =
    "def parse(text):\n    # base-branch version: must not be read\n    return tokenize(text)\n";
pub const PARSER_AT_5A: &str =
    "from .tokenizer import tokenize\n\n\ndef parse(text):\n    return tokenize(text)\n";
pub const UTIL_AT_SNAPSHOT: &str = "def strip_all(items):\n    return [i.strip() for i in items]\n";
pub const README_AT_SNAPSHOT: &str = "# widgets\n\nParse widget specs.\n";
pub const REQUIREMENTS_AT_B3: &str = "requests==2.31.0\nclick==8.1.7\n";
pub const CLI_MD_AT_B4: &str = "# CLI\n\nTODO\n";
pub const NOTES_AT_B4: &str = "old notes \u{2014} to be removed\n";
pub const CLI_PY_AT_6A: &str = "import argparse\n\nparser = argparse.ArgumentParser()\n";

pub const PATCH_C1_PARSER: &str = "@@ -1,3 +1,4 @@\n def parse(text):\n-    tokens = text.split()\n-    return [t for t in tokens if t]\n+    from .tokenizer import tokenize\n+    tokens = tokenize(text)\n+    return tokens\n";
pub const PATCH_C1_HELPERS: &str = "@@ -1,2 +1,3 @@\n+\"\"\"Small helpers.\"\"\"\n def strip_all(items):\n     return [i.strip() for i in items]\n";
pub const PATCH_C2_TESTS: &str = "@@ -0,0 +1,4 @@\n+from widgets.parser import parse\n+\n+def test_parse():\n+    assert parse('a b') == ['a', 'b']\n";
pub const PATCH_C2_PARSER: &str = "@@ -1,4 +1,4 @@\n def parse(text):\n-    from .tokenizer import tokenize\n+    from .tokenizer import tokenize  # noqa\n     tokens = tokenize(text)\n     return tokens\n";
pub const PATCH_C2_README: &str =
    "@@ -1,3 +1,5 @@\n # widgets\n \n Parse widget specs.\n+\n+Run the tests with `pytest`.\n";
pub const PATCH_PR1_PARSER: &str = "@@ -1,3 +1,4 @@\n def parse(text):\n-    tokens = text.split()\n-    return [t for t in tokens if t]\n+    from .tokenizer import tokenize  # noqa\n+    tokens = tokenize(text)\n+    return tokens\n";
pub const PATCH_REQUIREMENTS: &str =
    "@@ -1,2 +1,2 @@\n-requests==2.31.0\n+requests==2.32.0\n click==8.1.7\n";
pub const PATCH_CLI_MD: &str = "@@ -1,3 +1,3 @@\n # CLI\n \n-TODO\n+Run `widgets --help`.\n";
pub const PATCH_NOTES: &str = "@@ -1 +0,0 @@\n-old notes \u{2014} to be removed\n";
pub const PATCH_PR5_PARSER: &str = "@@ -3,3 +3,5 @@ from .tokenizer import tokenize\n \n def parse(text):\n+    if not text:\n+        return []\n     return tokenize(text)\n";
pub const PATCH_CLI_PY: &str = "@@ -1,3 +1,4 @@\n import argparse\n \n parser = argparse.ArgumentParser()\n+parser.add_argument('--verbose', action='store_true')\n";
pub const HUNK_PARSER: &str = "@@ -1,3 +1,4 @@\n def parse(text):\n-    tokens = text.split()\n-    return [t for t in tokens if t]\n+    from .tokenizer import tokenize\n+    tokens = tokenize(text)";
pub const HUNK_HELPERS: &str = "@@ -1,2 +1,3 @@\n+\"\"\"Small helpers.\"\"\"";

/// A 40-hex SHA made of one repeated pair, e.g. `sha("a0")`.
pub fn sha(pair: &str) -> String {
    pair.repeat(20)
}

// ---------------------------------------------------------------------------------------------
// Full REST payloads.

#[derive(Clone)]
pub struct UserSpec {
    pub login: &'static str,
    pub id: u64,
    pub kind: &'static str,
}

pub const ALICE: UserSpec = UserSpec {
    login: "alice",
    id: 1001,
    kind: "User",
};
pub const BOB: UserSpec = UserSpec {
    login: "bob",
    id: 1002,
    kind: "User",
};
pub const CAROL: UserSpec = UserSpec {
    login: "carol",
    id: 1003,
    kind: "User",
};
pub const DAVE: UserSpec = UserSpec {
    login: "dave",
    id: 1004,
    kind: "User",
};
pub const DEPENDABOT: UserSpec = UserSpec {
    login: "dependabot[bot]",
    id: 49699333,
    kind: "Bot",
};
pub const ACME: UserSpec = UserSpec {
    login: "acme",
    id: 5000,
    kind: "Organization",
};

fn user_json(u: &UserSpec) -> Value {
    let l = u.login;
    json!({
        "login": l,
        "id": u.id,
        "node_id": format!("MDQ6VXNlcj{}", u.id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", u.id),
        "gravatar_id": "",
        "url": format!("{API}/users/{l}"),
        "html_url": format!("{WEB}/{l}"),
        "followers_url": format!("{API}/users/{l}/followers"),
        "following_url": format!("{API}/users/{l}/following{{/other_user}}"),
        "gists_url": format!("{API}/users/{l}/gists{{/gist_id}}"),
        "starred_url": format!("{API}/users/{l}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{API}/users/{l}/subscriptions"),
        "organizations_url": format!("{API}/users/{l}/orgs"),
        "repos_url": format!("{API}/users/{l}/repos"),
        "events_url": format!("{API}/users/{l}/events{{/privacy}}"),
        "received_events_url": format!("{API}/users/{l}/received_events"),
        "type": u.kind,
        "user_view_type": "public",
        "site_admin": false
    })
}

#[derive(Clone)]
pub struct RepoSpec {
    pub name: &'static str,
    pub id: u64,
    pub description: Option<&'static str>,
    pub language: Option<&'static str>,
    pub stars: u64,
    pub archived: bool,
}

fn repo_json(r: &RepoSpec) -> Value {
    let full = format!("acme/{}", r.name);
    let u = format!("{API}/repos/{full}");
    let mut v = json!({
        "id": r.id,
        "node_id": format!("R_kgDOH{}", r.id),
        "name": r.name,
        "full_name": full,
        "private": false,
        "owner": user_json(&ACME),
        "html_url": format!("{WEB}/{full}"),
        "description": r.description,
        "fork": false,
        "url": u,
        "created_at": "2019-05-01T12:00:00Z",
        "updated_at": "2024-04-01T12:00:00Z",
        "pushed_at": "2024-04-01T11:00:00Z",
        "git_url": format!("git://github.com/{full}.git"),
        "ssh_url": format!("git@github.com:{full}.git"),
        "clone_url": format!("{WEB}/{full}.git"),
        "svn_url": format!("{WEB}/{full}"),
        "homepage": null,
        "size": 2048,
        "stargazers_count": r.stars,
        "watchers_count": r.stars,
        "language": r.language,
        "has_issues": true,
        "has_projects": true,
        "has_downloads": true,
        "has_wiki": false,
        "has_pages": false,
        "has_discussions": false,
        "forks_count": 3,
        "mirror_url": null,
        "archived": r.archived,
        "disabled": false,
        "open_issues_count": 4,
        "license": {
            "key": "mit",
            "name": "MIT License",
            "spdx_id": "MIT",
            "url": format!("{API}/licenses/mit"),
            "node_id": "MDc6TGljZW5zZTEz"
        },
        "allow_forking": true,
        "is_template": false,
        "web_commit_signoff_required": false,
        "topics": ["parsing", "widgets"],
        "visibility": "public",
        "forks": 3,
        "open_issues": 4,
        "watchers": r.stars,
        "default_branch": "main"
    });
    let obj = v.as_object_mut().unwrap();
    for (key, suffix) in [
        ("forks_url", "/forks"),
        ("keys_url", "/keys{/key_id}"),
        ("collaborators_url", "/collaborators{/collaborator}"),
        ("teams_url", "/teams"),
        ("hooks_url", "/hooks"),
        ("issue_events_url", "/issues/events{/number}"),
        ("events_url", "/events"),
        ("assignees_url", "/assignees{/user}"),
        ("branches_url", "/branches{/branch}"),
        ("tags_url", "/tags"),
        ("blobs_url", "/git/blobs{/sha}"),
        ("git_tags_url", "/git/tags{/sha}"),
        ("git_refs_url", "/git/refs{/sha}"),
        ("trees_url", "/git/trees{/sha}"),
        ("statuses_url", "/statuses/{sha}"),
        ("languages_url", "/languages"),
        ("stargazers_url", "/stargazers"),
        ("contributors_url", "/contributors"),
        ("subscribers_url", "/subscribers"),
        ("subscription_url", "/subscription"),
        ("commits_url", "/commits{/sha}"),
        ("git_commits_url", "/git/commits{/sha}"),
        ("comments_url", "/comments{/number}"),
        ("issue_comment_url", "/issues/comments{/number}"),
        ("contents_url", "/contents/{+path}"),
        ("compare_url", "/compare/{base}...{head}"),
        ("merges_url", "/merges"),
        ("archive_url", "/{archive_format}{/ref}"),
        ("downloads_url", "/downloads"),
        ("issues_url", "/issues{/number}"),
        ("pulls_url", "/pulls{/number}"),
        ("milestones_url", "/milestones{/number}"),
        (
            "notifications_url",
            "/notifications{?since,all,participating}",
        ),
        ("labels_url", "/labels{/name}"),
        ("releases_url", "/releases{/id}"),
        ("deployments_url", "/deployments"),
    ] {
        obj.insert(key.into(), json!(format!("{u}{suffix}")));
    }
    v
}

fn repo_detail_json(r: &RepoSpec) -> Value {
    let mut v = repo_json(r);
    let obj = v.as_object_mut().unwrap();
    obj.insert("network_count".into(), json!(3));
    obj.insert("subscribers_count".into(), json!(7));
    obj.insert("temp_clone_token".into(), json!(null));
    obj.insert("organization".into(), user_json(&ACME));
    obj.insert(
        "security_and_analysis".into(),
        json!({"secret_scanning": {"status": "enabled"}, "secret_scanning_push_protection": {"status": "enabled"}}),
    );
    v
}

fn search_item_json(r: &RepoSpec) -> Value {
    let mut v = repo_json(r);
    v.as_object_mut()
        .unwrap()
        .insert("score".into(), json!(1.0));
    v
}

#[derive(Clone)]
pub struct FileSpec {
    pub path: &'static str,
    pub previous: Option<&'static str>,
    pub status: &'static str,
    pub additions: u64,
    pub deletions: u64,
    pub patch: Option<&'static str>,
}

fn file_json(repo: &str, head: &str, f: &FileSpec) -> Value {
    let mut v = json!({
        "sha": sha("f0"),
        "filename": f.path,
        "status": f.status,
        "additions": f.additions,
        "deletions": f.deletions,
        "changes": f.additions + f.deletions,
        "blob_url": format!("{WEB}/{repo}/blob/{head}/{}", f.path),
        "raw_url": format!("{WEB}/{repo}/raw/{head}/{}", f.path),
        "contents_url": format!("{API}/repos/{repo}/contents/{}?ref={head}", f.path),
    });
    let obj = v.as_object_mut().unwrap();
    if let Some(patch) = f.patch {
        obj.insert("patch".into(), json!(patch));
    }
    if let Some(previous) = f.previous {
        obj.insert("previous_filename".into(), json!(previous));
    }
    v
}

#[derive(Clone)]
pub struct CommitSpec {
    pub sha: String,
    pub message: &'static str,
    pub author: Option<UserSpec>,
    pub author_name: &'static str,
    pub date: &'static str,
    pub parents: Vec<String>,
    pub files: Vec<FileSpec>,
}

fn commit_json(repo: &str, c: &CommitSpec, detail: bool) -> Value {
    let s = &c.sha;
    let actor = json!({
        "name": c.author_name,
        "email": format!("{}@example.com", c.author_name.to_lowercase().replace(' ', ".")),
        "date": c.date
    });
    let mut v = json!({
        "sha": s,
        "node_id": format!("C_kwDOH{}", &s[..8]),
        "commit": {
            "author": actor,
            "committer": actor,
            "message": c.message,
            "tree": {"sha": sha("7e"), "url": format!("{API}/repos/{repo}/git/trees/{}", sha("7e"))},
            "url": format!("{API}/repos/{repo}/git/commits/{s}"),
            "comment_count": 0,
            "verification": {"verified": false, "reason": "unsigned", "signature": null, "payload": null, "verified_at": null}
        },
        "url": format!("{API}/repos/{repo}/commits/{s}"),
        "html_url": format!("{WEB}/{repo}/commit/{s}"),
        "comments_url": format!("{API}/repos/{repo}/commits/{s}/comments"),
        "author": c.author.as_ref().map(user_json),
        "committer": c.author.as_ref().map(user_json),
        "parents": c.parents.iter().map(|p| json!({
            "sha": p,
            "url": format!("{API}/repos/{repo}/commits/{p}"),
            "html_url": format!("{WEB}/{repo}/commit/{p}")
        })).collect::<Vec<_>>()
    });
    if detail {
        let additions: u64 = c.files.iter().map(|f| f.additions).sum();
        let deletions: u64 = c.files.iter().map(|f| f.deletions).sum();
        v.as_object_mut().unwrap().insert(
            "stats".into(),
            json!({"total": additions + deletions, "additions": additions, "deletions": deletions}),
        );
    }
    v
}

#[derive(Clone)]
pub struct CommentSpec {
    pub id: u64,
    pub user: UserSpec,
    pub body: &'static str,
    pub at: &'static str,
}

fn reactions(url: String) -> Value {
    json!({"url": url, "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0,
           "confused": 0, "heart": 0, "rocket": 0, "eyes": 0})
}

fn issue_comment_json(repo: &str, number: u64, c: &CommentSpec) -> Value {
    json!({
        "url": format!("{API}/repos/{repo}/issues/comments/{}", c.id),
        "html_url": format!("{WEB}/{repo}/pull/{number}#issuecomment-{}", c.id),
        "issue_url": format!("{API}/repos/{repo}/issues/{number}"),
        "id": c.id,
        "node_id": format!("IC_kwDOH{}", c.id),
        "user": user_json(&c.user),
        "created_at": c.at,
        "updated_at": c.at,
        "author_association": "CONTRIBUTOR",
        "body": c.body,
        "reactions": reactions(format!("{API}/repos/{repo}/issues/comments/{}/reactions", c.id)),
        "performed_via_github_app": null
    })
}

#[derive(Clone)]
pub struct ReviewSpec {
    pub id: u64,
    pub user: UserSpec,
    pub state: &'static str,
    pub body: &'static str,
    pub at: Option<&'static str>,
}

fn review_json(repo: &str, number: u64, head: &str, r: &ReviewSpec) -> Value {
    json!({
        "id": r.id,
        "node_id": format!("PRR_kwDOH{}", r.id),
        "user": user_json(&r.user),
        "body": r.body,
        "state": r.state,
        "html_url": format!("{WEB}/{repo}/pull/{number}#pullrequestreview-{}", r.id),
        "pull_request_url": format!("{API}/repos/{repo}/pulls/{number}"),
        "author_association": "MEMBER",
        "_links": {
            "html": {"href": format!("{WEB}/{repo}/pull/{number}#pullrequestreview-{}", r.id)},
            "pull_request": {"href": format!("{API}/repos/{repo}/pulls/{number}")}
        },
        "submitted_at": r.at,
        "commit_id": head
    })
}

#[derive(Clone)]
pub struct ReviewCommentSpec {
    pub id: u64,
    pub review: u64,
    pub user: UserSpec,
    pub path: &'static str,
    pub line: Option<u64>,
    pub original_line: u64,
    pub hunk: &'static str,
    pub body: &'static str,
    pub at: &'static str,
    pub in_reply_to: Option<u64>,
}

fn review_comment_json(repo: &str, number: u64, head: &str, c: &ReviewCommentSpec) -> Value {
    let mut v = json!({
        "url": format!("{API}/repos/{repo}/pulls/comments/{}", c.id),
        "pull_request_review_id": c.review,
        "id": c.id,
        "node_id": format!("PRRC_kwDOH{}", c.id),
        "diff_hunk": c.hunk,
        "path": c.path,
        "commit_id": head,
        "original_commit_id": head,
        "user": user_json(&c.user),
        "body": c.body,
        "created_at": c.at,
        "updated_at": c.at,
        "html_url": format!("{WEB}/{repo}/pull/{number}#discussion_r{}", c.id),
        "pull_request_url": format!("{API}/repos/{repo}/pulls/{number}"),
        "author_association": "MEMBER",
        "_links": {
            "self": {"href": format!("{API}/repos/{repo}/pulls/comments/{}", c.id)},
            "html": {"href": format!("{WEB}/{repo}/pull/{number}#discussion_r{}", c.id)},
            "pull_request": {"href": format!("{API}/repos/{repo}/pulls/{number}")}
        },
        "reactions": reactions(format!("{API}/repos/{repo}/pulls/comments/{}/reactions", c.id)),
        "start_line": null,
        "original_start_line": null,
        "start_side": null,
        "line": c.line,
        "original_line": c.original_line,
        "side": "RIGHT",
        "original_position": 4,
        "position": c.line.map(|_| 4),
        "subject_type": "line"
    });
    if let Some(to) = c.in_reply_to {
        v.as_object_mut()
            .unwrap()
            .insert("in_reply_to_id".into(), json!(to));
    }
    v
}

#[derive(Clone)]
pub struct PrSpec {
    pub number: u64,
    pub id: u64,
    pub user: UserSpec,
    pub title: &'static str,
    pub body: Option<&'static str>,
    pub created: &'static str,
    pub closed: &'static str,
    pub merged: Option<&'static str>,
    pub base_sha: String,
    pub head_sha: String,
    pub merge_sha: Option<String>,
    pub commits: Vec<CommitSpec>,
    pub files: Vec<FileSpec>,
    pub comments: Vec<CommentSpec>,
    pub reviews: Vec<ReviewSpec>,
    pub review_comments: Vec<ReviewCommentSpec>,
}

fn branch_json(repo: &RepoSpec, label_ref: &str, sha: &str) -> Value {
    json!({
        "label": format!("acme:{label_ref}"),
        "ref": label_ref,
        "sha": sha,
        "user": user_json(&ACME),
        "repo": repo_json(repo)
    })
}

fn pull_json(repo: &RepoSpec, p: &PrSpec, detail: bool) -> Value {
    let full = format!("acme/{}", repo.name);
    let n = p.number;
    let u = format!("{API}/repos/{full}/pulls/{n}");
    let mut v = json!({
        "url": u,
        "id": p.id,
        "node_id": format!("PR_kwDOH{}", p.id),
        "html_url": format!("{WEB}/{full}/pull/{n}"),
        "diff_url": format!("{WEB}/{full}/pull/{n}.diff"),
        "patch_url": format!("{WEB}/{full}/pull/{n}.patch"),
        "issue_url": format!("{API}/repos/{full}/issues/{n}"),
        "number": n,
        "state": "closed",
        "locked": false,
        "title": p.title,
        "user": user_json(&p.user),
        "body": p.body,
        "labels": [],
        "milestone": null,
        "active_lock_reason": null,
        "created_at": p.created,
        "updated_at": p.closed,
        "closed_at": p.closed,
        "merged_at": p.merged,
        "merge_commit_sha": p.merge_sha,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "commits_url": format!("{u}/commits"),
        "review_comments_url": format!("{u}/comments"),
        "review_comment_url": format!("{API}/repos/{full}/pulls/comments{{/number}}"),
        "comments_url": format!("{API}/repos/{full}/issues/{n}/comments"),
        "statuses_url": format!("{API}/repos/{full}/statuses/{}", p.head_sha),
        "head": branch_json(repo, &format!("feature-{n}"), &p.head_sha),
        "base": branch_json(repo, "main", &p.base_sha),
        "_links": {
            "self": {"href": u},
            "html": {"href": format!("{WEB}/{full}/pull/{n}")},
            "issue": {"href": format!("{API}/repos/{full}/issues/{n}")},
            "comments": {"href": format!("{API}/repos/{full}/issues/{n}/comments")},
            "review_comments": {"href": format!("{u}/comments")},
            "review_comment": {"href": format!("{API}/repos/{full}/pulls/comments{{/number}}")},
            "commits": {"href": format!("{u}/commits")},
            "statuses": {"href": format!("{API}/repos/{full}/statuses/{}", p.head_sha)}
        },
        "author_association": "CONTRIBUTOR",
        "auto_merge": null,
        "draft": false
    });
    if detail {
        let obj = v.as_object_mut().unwrap();
        let merged_by = p.merged.map(|_| user_json(&BOB));
        for (k, val) in [
            ("merged", json!(p.merged.is_some())),
            ("mergeable", json!(null)),
            ("rebaseable", json!(null)),
            ("mergeable_state", json!("unknown")),
            ("merged_by", json!(merged_by)),
            ("comments", json!(p.comments.len())),
            ("review_comments", json!(p.review_comments.len())),
            ("maintainer_can_modify", json!(false)),
            ("commits", json!(p.commits.len())),
            (
                "additions",
                json!(p.files.iter().map(|f| f.additions).sum::<u64>()),
            ),
            (
                "deletions",
                json!(p.files.iter().map(|f| f.deletions).sum::<u64>()),
            ),
            ("changed_files", json!(p.files.len())),
        ] {
            obj.insert(k.into(), val);
        }
    }
    v
}

#[derive(Clone)]
pub struct IssueSpec {
    pub number: u64,
    pub id: u64,
    pub user: UserSpec,
    pub title: &'static str,
    pub body: Option<&'static str>,
    pub comments: Vec<CommentSpec>,
}

fn issue_json(repo: &str, i: &IssueSpec) -> Value {
    let n = i.number;
    let u = format!("{API}/repos/{repo}/issues/{n}");
    json!({
        "url": u,
        "repository_url": format!("{API}/repos/{repo}"),
        "labels_url": format!("{u}/labels{{/name}}"),
        "comments_url": format!("{u}/comments"),
        "events_url": format!("{u}/events"),
        "html_url": format!("{WEB}/{repo}/issues/{n}"),
        "id": i.id,
        "node_id": format!("I_kwDOH{}", i.id),
        "number": n,
        "title": i.title,
        "user": user_json(&i.user),
        "labels": [{"id": 77, "node_id": "LA_kwDOH77", "url": format!("{API}/repos/{repo}/labels/bug"),
                    "name": "bug", "color": "d73a4a", "default": true, "description": "Something isn't working"}],
        "state": "closed",
        "locked": false,
        "assignee": null,
        "assignees": [],
        "milestone": null,
        "comments": i.comments.len(),
        "created_at": "2024-02-20T10:00:00Z",
        "updated_at": "2024-03-03T12:00:00Z",
        "closed_at": "2024-03-03T12:00:00Z",
        "author_association": "NONE",
        "type": null,
        "active_lock_reason": null,
        "sub_issues_summary": {"total": 0, "completed": 0, "percent_completed": 0},
        "body": i.body,
        "closed_by": user_json(&BOB),
        "reactions": reactions(format!("{u}/reactions")),
        "timeline_url": format!("{u}/timeline"),
        "performed_via_github_app": null,
        "state_reason": "completed"
    })
}

/// `GET /issues/{n}` of a pull request: an issue with a `pull_request` member.
fn pr_as_issue_json(repo: &str, p: &PrSpec) -> Value {
    let mut v = issue_json(
        repo,
        &IssueSpec {
            number: p.number,
            id: p.id + 1,
            user: p.user.clone(),
            title: p.title,
            body: p.body,
            comments: p.comments.clone(),
        },
    );
    v.as_object_mut().unwrap().insert(
        "pull_request".into(),
        json!({
            "url": format!("{API}/repos/{repo}/pulls/{}", p.number),
            "html_url": format!("{WEB}/{repo}/pull/{}", p.number),
            "diff_url": format!("{WEB}/{repo}/pull/{}.diff", p.number),
            "patch_url": format!("{WEB}/{repo}/pull/{}.patch", p.number),
            "merged_at": p.merged
        }),
    );
    v
}

fn contents_json(repo: &str, path: &str, git_ref: &str, content: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    let u = format!("{API}/repos/{repo}/contents/{path}?ref={git_ref}");
    json!({
        "name": name,
        "path": path,
        "sha": sha("b0"),
        "size": content.len(),
        "url": u,
        "html_url": format!("{WEB}/{repo}/blob/{git_ref}/{path}"),
        "git_url": format!("{API}/repos/{repo}/git/blobs/{}", sha("b0")),
        "download_url": format!("https://raw.githubusercontent.com/{repo}/{git_ref}/{path}"),
        "type": "file",
        "content": base64_lines(content.as_bytes()),
        "encoding": "base64",
        "_links": {
            "self": u,
            "git": format!("{API}/repos/{repo}/git/blobs/{}", sha("b0")),
            "html": format!("{WEB}/{repo}/blob/{git_ref}/{path}")
        }
    })
}

/// Base64 as the contents API sends it: a newline every 60 characters.
fn base64_lines(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    let mut wrapped = String::new();
    for (i, c) in out.chars().enumerate() {
        if i > 0 && i % 60 == 0 {
            wrapped.push('\n');
        }
        wrapped.push(c);
    }
    wrapped.push('\n');
    wrapped
}

// ---------------------------------------------------------------------------------------------
// The world.

#[derive(Clone)]
pub struct RepoData {
    pub spec: RepoSpec,
    /// Newest first, as `GET /pulls?sort=created&direction=desc` lists them.
    pub pulls: Vec<PrSpec>,
    pub issues: Vec<IssueSpec>,
    /// `(path, ref) -> content`.
    pub contents: HashMap<(String, String), String>,
}

#[derive(Clone)]
pub struct World {
    pub repos: Vec<RepoData>,
    /// `owner/name -> (status, message)` for repositories that answer with an error.
    pub unavailable: BTreeMap<String, (u16, String)>,
}

fn file(
    path: &'static str,
    status: &'static str,
    additions: u64,
    deletions: u64,
    patch: &'static str,
) -> FileSpec {
    FileSpec {
        path,
        previous: None,
        status,
        additions,
        deletions,
        patch: Some(patch),
    }
}

fn contents(entries: &[(&str, &str, &str)]) -> HashMap<(String, String), String> {
    entries
        .iter()
        .map(|(path, git_ref, content)| {
            ((path.to_string(), git_ref.to_string()), content.to_string())
        })
        .collect()
}

impl World {
    /// acme/widgets (five PRs: merged, unmerged, bot, ...), acme/tools (one PR), acme/empty
    /// (none), and repositories the search must leave out (archived, Rust, two stars).
    pub fn standard() -> World {
        let widgets = RepoSpec {
            name: "widgets",
            id: 100,
            description: Some("Widgets for the acme toolkit"),
            language: Some("Python"),
            stars: 120,
            archived: false,
        };
        let renamed = FileSpec {
            path: "src/helpers.py",
            previous: Some("src/util.py"),
            status: "renamed",
            additions: 1,
            deletions: 0,
            patch: Some(PATCH_C1_HELPERS),
        };
        let pr1 = PrSpec {
            number: 1,
            id: 9001,
            user: ALICE,
            title: "Refactor the parser and move helpers",
            body: Some("Splits tokenizing out of `parse`, moves the helpers module.\n\nFixes #10"),
            created: "2024-03-01T10:00:00Z",
            closed: "2024-03-03T12:00:00Z",
            merged: Some("2024-03-03T12:00:00Z"),
            base_sha: sha("b1"),
            head_sha: sha("22"),
            merge_sha: Some(sha("d1")),
            commits: vec![
                CommitSpec {
                    sha: sha("11"),
                    message: "Split tokenizer out of parse",
                    author: Some(ALICE),
                    author_name: "Alice Liddell",
                    date: "2024-03-01T09:00:00Z",
                    parents: vec![sha("a0")],
                    files: vec![
                        file("src/parser.py", "modified", 3, 2, PATCH_C1_PARSER),
                        renamed.clone(),
                    ],
                },
                CommitSpec {
                    sha: sha("22"),
                    message: "Add parser tests\n\nCovers the tokenizer.",
                    author: None,
                    author_name: "Alice Liddell",
                    date: "2024-03-01T09:30:00Z",
                    parents: vec![sha("11")],
                    files: vec![
                        file("tests/test_parser.py", "added", 4, 0, PATCH_C2_TESTS),
                        file("src/parser.py", "modified", 1, 1, PATCH_C2_PARSER),
                        file("README.md", "modified", 2, 0, PATCH_C2_README),
                    ],
                },
            ],
            files: vec![
                file("src/parser.py", "modified", 3, 2, PATCH_PR1_PARSER),
                renamed,
                file("tests/test_parser.py", "added", 4, 0, PATCH_C2_TESTS),
                file("README.md", "modified", 2, 0, PATCH_C2_README),
            ],
            comments: vec![
                CommentSpec {
                    id: 501,
                    user: BOB,
                    body: "Nice cleanup. Does this change the public API?",
                    at: "2024-03-01T11:00:00Z",
                },
                CommentSpec {
                    id: 502,
                    user: ALICE,
                    body: "No, `parse` keeps its signature.",
                    at: "2024-03-01T11:30:00Z",
                },
                CommentSpec {
                    id: 503,
                    user: DAVE,
                    body: "Thanks both!",
                    at: "2024-03-03T12:05:00Z",
                },
            ],
            reviews: vec![
                ReviewSpec {
                    id: 201,
                    user: BOB,
                    state: "CHANGES_REQUESTED",
                    body: "A couple of nits.",
                    at: Some("2024-03-02T08:00:00Z"),
                },
                ReviewSpec {
                    id: 202,
                    user: ALICE,
                    state: "COMMENTED",
                    body: "",
                    at: Some("2024-03-02T09:00:00Z"),
                },
                ReviewSpec {
                    id: 203,
                    user: BOB,
                    state: "APPROVED",
                    body: "LGTM",
                    at: Some("2024-03-03T10:00:00Z"),
                },
            ],
            review_comments: vec![
                ReviewCommentSpec {
                    id: 301,
                    review: 201,
                    user: BOB,
                    path: "src/parser.py",
                    line: Some(4),
                    original_line: 4,
                    hunk: HUNK_PARSER,
                    body: "Please name this `tokens`.",
                    at: "2024-03-02T07:59:00Z",
                    in_reply_to: None,
                },
                ReviewCommentSpec {
                    id: 302,
                    review: 201,
                    user: BOB,
                    path: "src/helpers.py",
                    line: Some(1),
                    original_line: 1,
                    hunk: HUNK_HELPERS,
                    body: "Add a docstring?",
                    at: "2024-03-02T07:59:30Z",
                    in_reply_to: None,
                },
                ReviewCommentSpec {
                    id: 303,
                    review: 202,
                    user: ALICE,
                    path: "src/parser.py",
                    line: Some(4),
                    original_line: 4,
                    hunk: HUNK_PARSER,
                    body: "Renamed.",
                    at: "2024-03-02T09:00:00Z",
                    in_reply_to: Some(301),
                },
                ReviewCommentSpec {
                    id: 304,
                    review: 999,
                    user: CAROL,
                    path: "src/parser.py",
                    line: None,
                    original_line: 2,
                    hunk: HUNK_PARSER,
                    body: "Drive-by: typo here.",
                    at: "2024-03-02T12:00:00Z",
                    in_reply_to: None,
                },
            ],
        };
        let pr2 = PrSpec {
            number: 2,
            id: 9002,
            user: BOB,
            title: "Experimental async parser",
            body: Some("Closes #10"),
            created: "2024-03-05T10:00:00Z",
            closed: "2024-03-06T10:00:00Z",
            merged: None,
            base_sha: sha("b2"),
            head_sha: sha("e2"),
            merge_sha: Some(sha("d2")),
            commits: vec![],
            files: vec![],
            comments: vec![],
            reviews: vec![],
            review_comments: vec![],
        };
        let pr3 = PrSpec {
            number: 3,
            id: 9003,
            user: DEPENDABOT,
            title: "Bump requests from 2.31.0 to 2.32.0",
            body: Some("Bumps [requests](https://github.com/psf/requests) from 2.31.0 to 2.32.0."),
            created: "2024-03-07T10:00:00Z",
            closed: "2024-03-07T12:00:00Z",
            merged: Some("2024-03-07T12:00:00Z"),
            base_sha: sha("b3"),
            head_sha: sha("33"),
            merge_sha: Some(sha("d3")),
            commits: vec![CommitSpec {
                sha: sha("33"),
                message: "Bump requests from 2.31.0 to 2.32.0",
                author: Some(DEPENDABOT),
                author_name: "dependabot[bot]",
                date: "2024-03-07T09:59:00Z",
                parents: vec![sha("b3")],
                files: vec![file(
                    "requirements.txt",
                    "modified",
                    1,
                    1,
                    PATCH_REQUIREMENTS,
                )],
            }],
            files: vec![file(
                "requirements.txt",
                "modified",
                1,
                1,
                PATCH_REQUIREMENTS,
            )],
            comments: vec![],
            reviews: vec![],
            review_comments: vec![],
        };
        let pr4 = PrSpec {
            number: 4,
            id: 9004,
            user: CAROL,
            title: "Document the CLI and drop old notes",
            body: Some("Follow-up to #1.\r\n\r\nCLOSES #3, fixes acme/widgets#12"),
            created: "2024-03-08T10:00:00Z",
            closed: "2024-03-09T10:00:00Z",
            merged: Some("2024-03-09T10:00:00Z"),
            base_sha: sha("b4"),
            head_sha: sha("44"),
            merge_sha: Some(sha("d4")),
            commits: vec![CommitSpec {
                sha: sha("44"),
                message: "Document the CLI",
                author: Some(CAROL),
                author_name: "Carol",
                date: "2024-03-08T09:00:00Z",
                parents: vec![],
                files: vec![
                    file("docs/cli.md", "modified", 1, 1, PATCH_CLI_MD),
                    file("notes.txt", "removed", 0, 1, PATCH_NOTES),
                ],
            }],
            files: vec![
                file("docs/cli.md", "modified", 1, 1, PATCH_CLI_MD),
                file("notes.txt", "removed", 0, 1, PATCH_NOTES),
            ],
            comments: vec![CommentSpec {
                id: 504,
                user: DAVE,
                body: "Thanks!",
                at: "2024-03-09T11:00:00Z",
            }],
            reviews: vec![ReviewSpec {
                id: 204,
                user: BOB,
                state: "APPROVED",
                body: "",
                at: Some("2024-03-09T09:00:00Z"),
            }],
            review_comments: vec![],
        };
        let pr5 = PrSpec {
            number: 5,
            id: 9005,
            user: ALICE,
            title: "Handle empty input",
            body: None,
            created: "2024-03-10T10:00:00Z",
            closed: "2024-03-11T10:00:00Z",
            merged: Some("2024-03-11T10:00:00Z"),
            base_sha: sha("b5"),
            head_sha: sha("55"),
            merge_sha: Some(sha("d5")),
            commits: vec![CommitSpec {
                sha: sha("55"),
                message: "Return [] for empty input",
                author: Some(ALICE),
                author_name: "Alice Liddell",
                date: "2024-03-10T09:00:00Z",
                parents: vec![sha("5a")],
                files: vec![file("src/parser.py", "modified", 2, 0, PATCH_PR5_PARSER)],
            }],
            files: vec![file("src/parser.py", "modified", 2, 0, PATCH_PR5_PARSER)],
            comments: vec![],
            reviews: vec![
                ReviewSpec {
                    id: 205,
                    user: DAVE,
                    state: "COMMENTED",
                    body: "Looks fine.",
                    at: Some("2024-03-10T12:00:00Z"),
                },
                ReviewSpec {
                    id: 206,
                    user: ALICE,
                    state: "PENDING",
                    body: "draft",
                    at: None,
                },
            ],
            review_comments: vec![],
        };
        let widgets_data = RepoData {
            spec: widgets,
            pulls: vec![pr5, pr4, pr3, pr2, pr1],
            issues: vec![
                IssueSpec {
                    number: 10,
                    id: 8010,
                    user: CAROL,
                    title: "Parser chokes on nested brackets",
                    body: Some("`parse('[[1]]')` raises IndexError."),
                    comments: vec![
                        CommentSpec {
                            id: 601,
                            user: CAROL,
                            body: "Confirmed on 2.1.",
                            at: "2024-02-21T10:00:00Z",
                        },
                        CommentSpec {
                            id: 602,
                            user: ALICE,
                            body: "Working on it in #1.",
                            at: "2024-02-28T10:00:00Z",
                        },
                    ],
                },
                IssueSpec {
                    number: 12,
                    id: 8012,
                    user: DAVE,
                    title: "CLI is undocumented",
                    body: None,
                    comments: vec![],
                },
            ],
            contents: contents(&[
                ("src/parser.py", &sha("a0"), PARSER_AT_SNAPSHOT),
                ("src/util.py", &sha("a0"), UTIL_AT_SNAPSHOT),
                ("README.md", &sha("a0"), README_AT_SNAPSHOT),
                ("src/parser.py", &sha("b1"), PARSER_AT_BASE),
                ("src/util.py", &sha("b1"), UTIL_AT_SNAPSHOT),
                ("README.md", &sha("b1"), README_AT_SNAPSHOT),
                ("requirements.txt", &sha("b3"), REQUIREMENTS_AT_B3),
                ("docs/cli.md", &sha("b4"), CLI_MD_AT_B4),
                ("notes.txt", &sha("b4"), NOTES_AT_B4),
                ("src/parser.py", &sha("5a"), PARSER_AT_5A),
            ]),
        };
        let tools = RepoData {
            spec: RepoSpec {
                name: "tools",
                id: 101,
                description: Some("Command-line tools"),
                language: Some("Python"),
                stars: 40,
                archived: false,
            },
            pulls: vec![PrSpec {
                number: 1,
                id: 9101,
                user: DAVE,
                title: "Add --verbose flag",
                body: Some("Resolves #2"),
                created: "2024-04-01T10:00:00Z",
                closed: "2024-04-02T10:00:00Z",
                merged: Some("2024-04-02T10:00:00Z"),
                base_sha: sha("6b"),
                head_sha: sha("66"),
                merge_sha: Some(sha("d6")),
                commits: vec![CommitSpec {
                    sha: sha("66"),
                    message: "Add --verbose",
                    author: Some(DAVE),
                    author_name: "Dave",
                    date: "2024-04-01T09:00:00Z",
                    parents: vec![sha("6a")],
                    files: vec![file("cli.py", "modified", 1, 0, PATCH_CLI_PY)],
                }],
                files: vec![file("cli.py", "modified", 1, 0, PATCH_CLI_PY)],
                comments: vec![],
                reviews: vec![],
                review_comments: vec![],
            }],
            issues: vec![IssueSpec {
                number: 2,
                id: 8102,
                user: ALICE,
                title: "Need a verbose mode",
                body: Some("Hard to debug without it."),
                comments: vec![CommentSpec {
                    id: 701,
                    user: DAVE,
                    body: "On it.",
                    at: "2024-03-30T10:00:00Z",
                }],
            }],
            contents: contents(&[("cli.py", &sha("6a"), CLI_PY_AT_6A)]),
        };
        let plain = |name, id, language, stars, archived| RepoData {
            spec: RepoSpec {
                name,
                id,
                description: None,
                language,
                stars,
                archived,
            },
            pulls: vec![],
            issues: vec![],
            contents: HashMap::new(),
        };
        let mut unavailable = BTreeMap::new();
        unavailable.insert("acme/gone".to_string(), (404, "Not Found".to_string()));
        unavailable.insert(
            "acme/dmca".to_string(),
            (451, "Repository access blocked".to_string()),
        );
        World {
            repos: vec![
                widgets_data,
                tools,
                plain("empty", 102, Some("Python"), 10, false),
                plain("old", 103, Some("Python"), 300, true),
                plain("rusty", 104, Some("Rust"), 500, false),
                plain("tiny", 105, Some("Python"), 2, false),
            ],
            unavailable,
        }
    }

    pub fn repo_mut(&mut self, name: &str) -> &mut RepoData {
        self.repos.iter_mut().find(|r| r.spec.name == name).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Any status, headers and body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// 403 with `x-ratelimit-remaining: 0` and a reset one second ahead.
    PrimaryLimit,
    /// The normal answer, but announcing `x-ratelimit-remaining: 0` with a reset one second
    /// ahead.
    LastOfQuota,
    /// 200 with a body that is not JSON.
    Malformed,
    /// Headers and half the body, then the connection is cut and the server is gone.
    CutAndDie,
}

#[derive(Clone, Debug)]
pub struct Fault {
    /// The path (exact), or, when it holds a `?`, a prefix of path and query.
    pub target: String,
    pub kind: FaultKind,
    /// How many requests it answers; `None` for all.
    pub times: Option<usize>,
}

impl Fault {
    pub fn new(target: &str, kind: FaultKind, times: Option<usize>) -> Fault {
        Fault {
            target: target.to_string(),
            kind,
            times,
        }
    }

    pub fn status(
        target: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
        times: Option<usize>,
    ) -> Fault {
        Fault::new(
            target,
            FaultKind::Status {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.to_string(),
            },
            times,
        )
    }

    fn matches(&self, path: &str, target: &str) -> bool {
        if self.target.contains('?') {
            target.starts_with(&self.target)
        } else {
            path == self.target
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Clone, Debug)]
pub struct Logged {
    /// Path and query as requested.
    pub target: String,
    pub path: String,
    pub status: u16,
    pub if_none_match: Option<String>,
    pub authorization: Option<String>,
    /// The answer was cut off mid-body.
    pub cut: bool,
    pub at: Instant,
}

struct Shared {
    world: Mutex<World>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<Logged>>,
    alive: AtomicBool,
    token: Option<String>,
    remaining: AtomicU64,
    addr: SocketAddr,
}

pub struct MockGithub {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    cut: bool,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            cut: false,
        }
    }

    fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()}),
        )
    }
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl MockGithub {
    /// Serves `world` on 127.0.0.1 at a free port; with a `token`, every request must carry
    /// `Authorization: Bearer <token>` (else 401).
    pub fn start(world: World, token: Option<&str>) -> MockGithub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            world: Mutex::new(world),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            alive: AtomicBool::new(true),
            token: token.map(str::to_string),
            remaining: AtomicU64::new(5000),
            addr,
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if !shared.alive.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(stream, &shared));
                }
            })
        };
        MockGithub {
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn fault(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    pub fn edit(&self, f: impl FnOnce(&mut World)) {
        f(&mut self.shared.world.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// Stops accepting; connections still open are closed at their next request.
    pub fn shutdown(&mut self) {
        stop(&self.shared);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
    }
}

impl Drop for MockGithub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn stop(shared: &Shared) {
    if shared.alive.swap(false, Ordering::SeqCst) {
        // Wake the acceptor so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(shared.addr);
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !shared.alive.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let reply = respond(shared, &method, &target, &headers);
        if write_reply(&mut stream, &reply).is_err() || reply.cut {
            let _ = stream.shutdown(Shutdown::Both);
            if reply.cut {
                stop(shared);
            }
            return;
        }
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    head.push_str("server: github.com\r\n");
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let mut out = head.into_bytes();
    if reply.status == 304 {
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(b"content-type: application/json; charset=utf-8\r\n");
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", reply.body.len()).as_bytes());
        let body = reply.body.as_bytes();
        // A cut answer stops halfway through the body.
        out.extend_from_slice(if reply.cut {
            &body[..body.len() / 2]
        } else {
            body
        });
    }
    // One write: no Nagle/delayed-ACK stall between head and body.
    stream.write_all(&out)?;
    stream.flush()
}

fn etag_of(body: &str) -> String {
    // FNV-1a: stable across runs and processes.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("W/\"{h:016x}\"")
}

fn respond(
    shared: &Shared,
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = parse_query(query);
    let reset = epoch_secs() + 3600;
    let mut reply = if method != "GET" {
        Reply::error(405, "Method Not Allowed")
    } else if shared
        .token
        .as_ref()
        .is_some_and(|t| headers.get("authorization") != Some(&format!("Bearer {t}")))
    {
        Reply::error(401, "Bad credentials")
    } else {
        let fault = {
            let mut faults = shared.faults.lock().unwrap();
            let found = faults
                .iter_mut()
                .find(|f| f.matches(path, target) && f.times != Some(0));
            found.map(|f| {
                if let Some(n) = f.times.as_mut() {
                    *n -= 1;
                }
                f.kind.clone()
            })
        };
        let world = shared.world.lock().unwrap();
        let normal = |world: &World| route(world, shared.addr, path, target, &query);
        match fault {
            None => normal(&world),
            Some(FaultKind::Status {
                status,
                headers,
                body,
            }) => Reply {
                status,
                headers,
                body,
                cut: false,
            },
            Some(FaultKind::PrimaryLimit) => {
                let mut r = Reply::error(403, "API rate limit exceeded for user ID 1001. If you reach out to GitHub Support for help, please include the request ID.");
                r.headers.push(("x-ratelimit-remaining".into(), "0".into()));
                r.headers
                    .push(("x-ratelimit-reset".into(), (epoch_secs() + 1).to_string()));
                r
            }
            Some(FaultKind::LastOfQuota) => {
                let mut r = normal(&world);
                r.headers.push(("x-ratelimit-remaining".into(), "0".into()));
                r.headers
                    .push(("x-ratelimit-reset".into(), (epoch_secs() + 1).to_string()));
                r
            }
            Some(FaultKind::Malformed) => Reply {
                status: 200,
                headers: Vec::new(),
                body: "{\"number\": 1, \"title\": \"truncat".into(),
                cut: false,
            },
            Some(FaultKind::CutAndDie) => {
                let mut r = normal(&world);
                r.cut = true;
                r
            }
        }
    };
    let set = |r: &mut Reply, k: &str, v: String| {
        if !r.headers.iter().any(|(name, _)| name == k) {
            r.headers.push((k.to_string(), v));
        }
    };
    let remaining = shared
        .remaining
        .fetch_sub(1, Ordering::SeqCst)
        .saturating_sub(1);
    set(&mut reply, "x-ratelimit-limit", "5000".into());
    set(&mut reply, "x-ratelimit-remaining", remaining.to_string());
    set(&mut reply, "x-ratelimit-reset", reset.to_string());
    set(
        &mut reply,
        "x-ratelimit-used",
        (5000 - remaining).to_string(),
    );
    set(
        &mut reply,
        "x-ratelimit-resource",
        if path.starts_with("/search") {
            "search"
        } else {
            "core"
        }
        .into(),
    );
    set(
        &mut reply,
        "x-github-api-version-selected",
        "2022-11-28".into(),
    );
    set(
        &mut reply,
        "x-github-media-type",
        "github.v3; format=json".into(),
    );
    set(
        &mut reply,
        "x-github-request-id",
        format!("C0DE:{:X}", remaining),
    );
    if reply.status == 200 && !reply.cut {
        let etag = etag_of(&reply.body);
        if headers.get("if-none-match") == Some(&etag) {
            reply.status = 304;
            reply.body.clear();
        }
        set(&mut reply, "etag", etag);
        set(
            &mut reply,
            "cache-control",
            "private, max-age=60, s-maxage=60".into(),
        );
        set(
            &mut reply,
            "vary",
            "Accept, Authorization, Cookie, X-GitHub-OTP".into(),
        );
    }
    shared.log.lock().unwrap().push(Logged {
        target: target.to_string(),
        path: path.to_string(),
        status: reply.status,
        if_none_match: headers.get("if-none-match").cloned(),
        authorization: headers.get("authorization").cloned(),
        cut: reply.cut,
        at: Instant::now(),
    });
    reply
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// One page of `items` with GitHub's `Link` header.
fn paginate(
    addr: SocketAddr,
    path: &str,
    query: &BTreeMap<String, String>,
    items: &[Value],
) -> (Vec<Value>, Option<String>) {
    let per_page: usize = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let last = items.len().div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    let link_to = |n: usize| {
        let mut q = query.clone();
        q.insert("page".into(), n.to_string());
        let qs: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        format!("<http://{addr}{path}?{}>", qs.join("&"))
    };
    let mut rels = Vec::new();
    if page > 1 {
        rels.push(format!("{}; rel=\"prev\"", link_to(page - 1)));
    }
    if page < last {
        rels.push(format!("{}; rel=\"next\"", link_to(page + 1)));
        rels.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if page > 1 {
        rels.push(format!("{}; rel=\"first\"", link_to(1)));
    }
    (slice, (!rels.is_empty()).then(|| rels.join(", ")))
}

fn list_reply(
    addr: SocketAddr,
    path: &str,
    query: &BTreeMap<String, String>,
    items: &[Value],
) -> Reply {
    let (page, link) = paginate(addr, path, query, items);
    let mut r = Reply::json(200, Value::Array(page));
    if let Some(link) = link {
        r.headers.push(("link".into(), link));
    }
    r
}

fn route(
    world: &World,
    addr: SocketAddr,
    path: &str,
    _target: &str,
    query: &BTreeMap<String, String>,
) -> Reply {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found = || Reply::error(404, "Not Found");
    if segments == ["search", "repositories"] {
        return search(world, addr, path, query);
    }
    let ["repos", owner, name, rest @ ..] = segments.as_slice() else {
        return not_found();
    };
    let full = format!("{owner}/{name}");
    if let Some((status, message)) = world.unavailable.get(&full) {
        return Reply::error(*status, message);
    }
    let Some(repo) = world
        .repos
        .iter()
        .find(|r| *owner == "acme" && r.spec.name == *name)
    else {
        return not_found();
    };
    let pull = |n: &str| repo.pulls.iter().find(|p| p.number.to_string() == n);
    match rest {
        [] => Reply::json(200, repo_detail_json(&repo.spec)),
        ["pulls"] => {
            if query.get("state").map(String::as_str) != Some("closed") {
                return Reply::error(422, "this mock serves state=closed only");
            }
            let items: Vec<Value> = repo
                .pulls
                .iter()
                .map(|p| pull_json(&repo.spec, p, false))
                .collect();
            list_reply(addr, path, query, &items)
        }
        ["pulls", n] => match pull(n) {
            Some(p) => Reply::json(200, pull_json(&repo.spec, p, true)),
            None => not_found(),
        },
        ["pulls", n, what] => {
            let Some(p) = pull(n) else { return not_found() };
            let items: Vec<Value> = match *what {
                "files" => p
                    .files
                    .iter()
                    .map(|f| file_json(&full, &p.head_sha, f))
                    .collect(),
                "commits" => p
                    .commits
                    .iter()
                    .map(|c| commit_json(&full, c, false))
                    .collect(),
                "reviews" => p
                    .reviews
                    .iter()
                    .map(|r| review_json(&full, p.number, &p.head_sha, r))
                    .collect(),
                "comments" => p
                    .review_comments
                    .iter()
                    .map(|c| review_comment_json(&full, p.number, &p.head_sha, c))
                    .collect(),
                _ => return not_found(),
            };
            list_reply(addr, path, query, &items)
        }
        ["commits", s] => {
            let commit = repo
                .pulls
                .iter()
                .flat_map(|p| &p.commits)
                .find(|c| c.sha == *s);
            let Some(c) = commit else {
                return Reply::error(422, "No commit found for SHA");
            };
            let head = &c.sha;
            let files: Vec<Value> = c.files.iter().map(|f| file_json(&full, head, f)).collect();
            let (page, link) = paginate(addr, path, query, &files);
            let mut v = commit_json(&full, c, true);
            v.as_object_mut()
                .unwrap()
                .insert("files".into(), Value::Array(page));
            let mut r = Reply::json(200, v);
            if let Some(link) = link {
                r.headers.push(("link".into(), link));
            }
            r
        }
        ["issues", n] => {
            if let Some(i) = repo.issues.iter().find(|i| i.number.to_string() == *n) {
                return Reply::json(200, issue_json(&full, i));
            }
            match pull(n) {
                Some(p) => Reply::json(200, pr_as_issue_json(&full, p)),
                None => not_found(),
            }
        }
        ["issues", n, "comments"] => {
            let comments = if let Some(i) = repo.issues.iter().find(|i| i.number.to_string() == *n)
            {
                i.comments.clone()
            } else if let Some(p) = pull(n) {
                p.comments.clone()
            } else {
                return not_found();
            };
            let number: u64 = n.parse().unwrap();
            let items: Vec<Value> = comments
                .iter()
                .map(|c| issue_comment_json(&full, number, c))
                .collect();
            list_reply(addr, path, query, &items)
        }
        ["contents", file_path @ ..] => {
            let file_path = percent_decode(&file_path.join("/"));
            let git_ref = query.get("ref").cloned().unwrap_or_else(|| "main".into());
            match repo.contents.get(&(file_path.clone(), git_ref.clone())) {
                Some(content) => {
                    Reply::json(200, contents_json(&full, &file_path, &git_ref, content))
                }
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}

fn search(world: &World, addr: SocketAddr, path: &str, query: &BTreeMap<String, String>) -> Reply {
    let q = query.get("q").cloned().unwrap_or_default();
    let mut min_stars = 0;
    let mut language: Option<String> = None;
    let mut archived: Option<bool> = None;
    for term in q.split_whitespace() {
        match term.split_once(':') {
            Some(("stars", v)) => min_stars = v.trim_start_matches(">=").parse().unwrap_or(0),
            Some(("language", v)) => language = Some(v.to_lowercase()),
            Some(("archived", v)) => archived = Some(v == "true"),
            _ => return Reply::error(422, "Validation Failed"),
        }
    }
    if query.get("sort").map(String::as_str) != Some("stars") {
        return Reply::error(422, "this mock sorts by stars only");
    }
    let mut found: Vec<&RepoSpec> = world
        .repos
        .iter()
        .map(|r| &r.spec)
        .filter(|r| r.stars >= min_stars)
        .filter(|r| {
            language
                .as_ref()
                .is_none_or(|l| r.language.map(str::to_lowercase).as_ref() == Some(l))
        })
        .filter(|r| archived.is_none_or(|a| r.archived == a))
        .collect();
    found.sort_by_key(|r| std::cmp::Reverse(r.stars));
    let items: Vec<Value> = found.iter().map(|r| search_item_json(r)).collect();
    let (page, link) = paginate(addr, path, query, &items);
    let mut r = Reply::json(
        200,
        json!({"total_count": items.len(), "incomplete_results": false, "items": page}),
    );
    if let Some(link) = link {
        r.headers.push(("link".into(), link));
    }
    r
}
