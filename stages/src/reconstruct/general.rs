//! The general rendering (D_ctx_gen): XML-like tags, the repository and its relevant files
//! first, then the pull request as a stream of events in time order.
//!
//! ```text
//! <repository>
//! <repo_name>owner/name</repo_name>
//! <repo_description>...</repo_description>
//! </repository>
//! <relevant_files>
//! <file path="pkg/mod.py">
//! <full content at the snapshot>
//! </file>
//! </relevant_files>
//! <issue number="12">                                  (only with a linked issue)
//! <issue_title>...</issue_title>
//! <issue_body>
//! ...
//! </issue_body>
//! <issue_comment author="login">
//! ...
//! </issue_comment>
//! </issue>
//! <pr number="34" author="login">
//! <pr_title>...</pr_title>
//! <pr_body>
//! ...
//! </pr_body>
//! <pr_summary>...</pr_summary>                         (only with an LLM summary)
//! </pr>
//! <pr_comment author="login">                          ┐
//! ...                                                  │
//! </pr_comment>                                        │
//! <pr_review author="login">                           │
//! <pr_review_state>CHANGES_REQUESTED</pr_review_state> │ comments, reviews and
//! <pr_review_body>  (left out when empty)             │ commits interleaved in
//! ...                                                  │ time order
//! </pr_review_body>                                    │
//! <pr_review_thread path="pkg/mod.py" line="7">        │
//! <diff_hunk>                                          │
//! @@ -5,3 +5,4 @@ ...                                  │
//! </diff_hunk>                                         │
//! <pr_review_comment author="login">                   │
//! ...                                                  │
//! </pr_review_comment>                                 │
//! </pr_review_thread>                                  │
//! </pr_review>                                         │
//! <pr_commit>                                          │
//! <commit_message>                                     │
//! ...                                                  │
//! </commit_message>                                    │
//! <commit_file path="pkg/mod.py" status="modified">    │
//! <patch>                                              │
//! --- a/pkg/mod.py                                     │
//! +++ b/pkg/mod.py                                     │
//! @@ -5,3 +5,4 @@ ...                                  │
//! </patch>                                             │
//! </commit_file>                                       │
//! </pr_commit>                                         ┘
//! <pr_status>closed</pr_status>
//! <pr_is_merged>true</pr_is_merged>
//! ```
//!
//! Review comments are grouped into threads: comments of one review on the same path and diff
//! hunk, in order of first appearance. Events are ordered by their RFC 3339 time (comments by
//! `created_at`, reviews by `submitted_at`, commits by author `date`); an event without a time
//! keeps its place after the previous event of its kind, and ties keep comments before reviews
//! before commits. A record without commits shows its net `files` as one `<pr_commit>` without
//! a `<commit_message>`. A renamed file carries `previous_path`; a file without a patch (binary or
//! too large) has no `<patch>`. Patches get `---`/`+++` headers (`/dev/null` for creates and
//! deletes), so each is a complete unified diff. `<pr_status>` is `closed` for a merged PR
//! (GitHub's state for one) and `unknown` otherwise, as the record does not carry the state.
//!
//! The tags are a layout, not XML: content is not escaped (escaping code would teach the
//! wrong text); attribute values have `&`, `"`, `<` and `>` escaped. Prose has CRLF turned
//! into LF and surrounding whitespace trimmed; file content and patches are byte for byte.

use super::python::{one_line, prose};
use crate::record::{FileChange, PrRecord, Review};

pub struct Rendering<'a> {
    pub summary: Option<&'a str>,
    /// Aligned with `record.commits`: the message to show (refined, else original).
    pub messages: Vec<&'a str>,
}

pub fn render(record: &PrRecord, r: &Rendering) -> String {
    let mut out = String::new();
    out.push_str("<repository>\n");
    inline(&mut out, "repo_name", &record.repo_name);
    inline(&mut out, "repo_description", &record.repo_description);
    out.push_str("</repository>\n");

    out.push_str("<relevant_files>\n");
    for f in &record.relevant_files {
        out.push_str(&format!("<file path=\"{}\">\n", attr(&f.path)));
        raw(&mut out, &f.content);
        out.push_str("</file>\n");
    }
    out.push_str("</relevant_files>\n");

    if let Some(issue) = &record.related_issue {
        out.push_str(&format!("<issue number=\"{}\">\n", issue.number));
        inline(&mut out, "issue_title", &issue.title);
        block(&mut out, "issue_body", "", &issue.body);
        for c in &issue.comments {
            block(&mut out, "issue_comment", &author(&c.author), &c.body);
        }
        out.push_str("</issue>\n");
    }

    out.push_str(&format!(
        "<pr number=\"{}\"{}>\n",
        record.number,
        author(&record.author)
    ));
    inline(&mut out, "pr_title", &record.title);
    block(&mut out, "pr_body", "", &record.body);
    if let Some(summary) = r.summary.map(prose).filter(|s| !s.is_empty()) {
        inline(&mut out, "pr_summary", &summary);
    }
    out.push_str("</pr>\n");

    for event in timeline(record) {
        match event {
            Event::Comment(i) => {
                let c = &record.comments[i];
                block(&mut out, "pr_comment", &author(&c.author), &c.body);
            }
            Event::Review(i) => review(&mut out, &record.reviews[i]),
            Event::Commit(i) => commit(&mut out, Some(r.messages[i]), &record.commits[i].diffs),
        }
    }
    if record.commits.is_empty() && !record.files.is_empty() {
        // A record without commits: its net changes, with no message to show.
        commit(&mut out, None, &record.files);
    }

    let merged = record.merged || record.merged_at.is_some();
    inline(
        &mut out,
        "pr_status",
        if merged { "closed" } else { "unknown" },
    );
    inline(
        &mut out,
        "pr_is_merged",
        if merged { "true" } else { "false" },
    );
    out
}

fn review(out: &mut String, review: &Review) {
    out.push_str(&format!("<pr_review{}>\n", author(&review.author)));
    inline(out, "pr_review_state", &review.state);
    if !prose(&review.body).is_empty() {
        block(out, "pr_review_body", "", &review.body);
    }
    // Threads: same path and hunk, in order of first appearance.
    let mut threads: Vec<(&str, &str, Vec<usize>)> = Vec::new();
    for (i, c) in review.comments.iter().enumerate() {
        match threads
            .iter_mut()
            .find(|(p, h, _)| *p == c.path && *h == c.diff_hunk)
        {
            Some(t) => t.2.push(i),
            None => threads.push((&c.path, &c.diff_hunk, vec![i])),
        }
    }
    for (path, hunk, members) in threads {
        let first = &review.comments[members[0]];
        let line = first
            .line
            .map(|l| format!(" line=\"{l}\""))
            .unwrap_or_default();
        out.push_str(&format!(
            "<pr_review_thread path=\"{}\"{line}>\n",
            attr(path)
        ));
        if !hunk.trim().is_empty() {
            out.push_str("<diff_hunk>\n");
            raw(out, hunk);
            out.push_str("</diff_hunk>\n");
        }
        for i in members {
            let c = &review.comments[i];
            block(out, "pr_review_comment", &author(&c.author), &c.body);
        }
        out.push_str("</pr_review_thread>\n");
    }
    out.push_str("</pr_review>\n");
}

fn commit(out: &mut String, message: Option<&str>, diffs: &[FileChange]) {
    out.push_str("<pr_commit>\n");
    if let Some(message) = message {
        block(out, "commit_message", "", message);
    }
    for f in diffs {
        commit_file(out, f);
    }
    out.push_str("</pr_commit>\n");
}

fn commit_file(out: &mut String, f: &FileChange) {
    let previous = f
        .previous_path
        .as_deref()
        .filter(|p| !p.is_empty() && *p != f.path)
        .map(|p| format!(" previous_path=\"{}\"", attr(p)))
        .unwrap_or_default();
    out.push_str(&format!(
        "<commit_file path=\"{}\"{previous} status=\"{}\">\n",
        attr(&f.path),
        attr(&f.status)
    ));
    if let Some(patch) = f.patch.as_deref().filter(|p| !p.trim().is_empty()) {
        out.push_str("<patch>\n");
        out.push_str(&super::patch::file_header(f));
        raw(out, patch);
        out.push_str("</patch>\n");
    }
    out.push_str("</commit_file>\n");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Comment(usize),
    Review(usize),
    Commit(usize),
}

/// Comments, reviews and commits in time order (see the module docs for the tie rules).
fn timeline(record: &PrRecord) -> Vec<Event> {
    let mut events: Vec<(i64, Event)> = Vec::new();
    let mut add = |times: Vec<Option<&str>>, make: fn(usize) -> Event| {
        let mut last = i64::MIN;
        for (i, t) in times.into_iter().enumerate() {
            if let Some(t) = t.and_then(parse_rfc3339) {
                last = t;
            }
            events.push((last, make(i)));
        }
    };
    add(
        record
            .comments
            .iter()
            .map(|c| c.created_at.as_deref())
            .collect(),
        Event::Comment,
    );
    add(
        record
            .reviews
            .iter()
            .map(|r| r.submitted_at.as_deref())
            .collect(),
        Event::Review,
    );
    add(
        record.commits.iter().map(|c| c.date.as_deref()).collect(),
        Event::Commit,
    );
    events.sort_by_key(|(t, _)| *t);
    events.into_iter().map(|(_, e)| e).collect()
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:00:00Z`, fractions and
/// `+hh:mm` offsets allowed); `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(d).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &rest[1 + digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let v = |a: u8, b: u8| ((a - b'0') * 10 + (b - b'0')) as i64;
            let minutes = v(*h1, *h2) * 60 + v(*m1, *m2);
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// ` author="login"`, or nothing for an unknown author.
fn author(login: &str) -> String {
    if login.is_empty() {
        String::new()
    } else {
        format!(" author=\"{}\"", attr(login))
    }
}

fn attr(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `<tag>value</tag>` on one line (prose; inner newlines folded to spaces).
fn inline(out: &mut String, tag: &str, value: &str) {
    out.push_str(&format!("<{tag}>{}</{tag}>\n", one_line(value)));
}

/// `<tag attrs>`, the prose on its own lines, `</tag>`; an empty body leaves the lines out.
fn block(out: &mut String, tag: &str, attrs: &str, body: &str) {
    out.push_str(&format!("<{tag}{attrs}>\n"));
    let body = prose(body);
    if !body.is_empty() {
        out.push_str(&body);
        out.push('\n');
    }
    out.push_str(&format!("</{tag}>\n"));
}

/// Content byte for byte, ending its last line.
fn raw(out: &mut String, content: &str) {
    out.push_str(content);
    if !content.is_empty() && !content.ends_with('\n') {
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Comment, Commit};

    #[test]
    fn rfc3339_times_parse_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56Z"), Some(1_709_210_096));
        assert_eq!(
            parse_rfc3339("2024-02-29T14:34:56.123+02:00"),
            Some(1_709_210_096)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T07:34:56-05:00"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
    }

    #[test]
    fn events_interleave_by_time_and_undated_ones_follow_their_kind() {
        let record = PrRecord {
            comments: vec![
                Comment {
                    created_at: Some("2024-01-03T00:00:00Z".into()),
                    ..Default::default()
                },
                Comment {
                    created_at: None,
                    ..Default::default()
                },
            ],
            commits: vec![
                Commit {
                    date: Some("2024-01-01T00:00:00Z".into()),
                    ..Default::default()
                },
                Commit {
                    date: Some("2024-01-04T00:00:00+00:00".into()),
                    ..Default::default()
                },
            ],
            reviews: vec![Review {
                submitted_at: Some("2024-01-03T00:00:00Z".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            timeline(&record),
            vec![
                Event::Commit(0),
                Event::Comment(0),
                Event::Comment(1),
                Event::Review(0),
                Event::Commit(1)
            ]
        );
    }

    #[test]
    fn a_record_without_commits_shows_its_net_changes() {
        let record = PrRecord {
            files: vec![FileChange {
                path: "a.py".into(),
                status: "removed".into(),
                patch: Some("@@ -1 +0,0 @@\n-x".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(
            &record,
            &Rendering {
                summary: None,
                messages: Vec::new(),
            },
        );
        assert!(text.ends_with(
            "</pr>\n<pr_commit>\n<commit_file path=\"a.py\" status=\"removed\">\n<patch>\n--- a/a.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n</patch>\n</commit_file>\n</pr_commit>\n<pr_status>unknown</pr_status>\n<pr_is_merged>false</pr_is_merged>\n"
        ), "{text}");
    }

    #[test]
    fn attributes_are_escaped_and_content_is_not() {
        let mut out = String::new();
        commit_file(
            &mut out,
            &FileChange {
                path: "a\"b<c>.py".into(),
                status: "added".into(),
                patch: Some("@@ -0,0 +1 @@\n+x = '<&>'".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            out,
            "<commit_file path=\"a&quot;b&lt;c&gt;.py\" status=\"added\">\n<patch>\n--- /dev/null\n+++ b/a\"b<c>.py\n@@ -0,0 +1 @@\n+x = '<&>'\n</patch>\n</commit_file>\n"
        );
    }
}
