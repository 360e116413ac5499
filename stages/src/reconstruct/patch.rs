//! GitHub-style unified diff hunks: parsing and applying.
//!
//! GitHub's `patch` field is a list of hunks without the `---`/`+++` file header:
//!
//! ```text
//! @@ -12,7 +12,8 @@ def area(shape):
//!      if shape is None:
//! -        return 0
//! +        raise ValueError("no shape")
//! \ No newline at end of file
//! ```
//!
//! A missing count means 1 (`@@ -3 +3 @@`). `\ No newline at end of file` applies to the line
//! before it. Lines are kept with their terminator (`"text\n"`, or `"text"` for a last line
//! without one), and a `\r` before the `\n` is part of the text, so CRLF files round-trip.
//!
//! Applying is exact about content and tolerant about position: a hunk whose old lines are not
//! at the line its header names is looked for at the nearest offset after the previous hunk
//! (what `patch` does without fuzz). Every error says which hunk, which line and what differed.

use std::fmt;

/// One line of a hunk body, terminator included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Context(String),
    Remove(String),
    Add(String),
}

impl Line {
    pub fn text(&self) -> &str {
        match self {
            Line::Context(t) | Line::Remove(t) | Line::Add(t) => t,
        }
    }

    fn text_mut(&mut self) -> &mut String {
        match self {
            Line::Context(t) | Line::Remove(t) | Line::Add(t) => t,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hunk {
    /// 1-based first old line (for an insertion with `old_len == 0`: the line it follows).
    pub old_start: usize,
    pub old_len: usize,
    pub new_start: usize,
    pub new_len: usize,
    /// The text after the closing `@@` (git's function context), trimmed.
    pub section: String,
    pub lines: Vec<Line>,
}

impl Hunk {
    /// The lines this hunk expects in the old file (context and removals), in order.
    pub fn old_lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::Context(t) | Line::Remove(t) => Some(t.as_str()),
            Line::Add(_) => None,
        })
    }

    /// The lines that replace them (context and additions), in order.
    pub fn new_lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().filter_map(|l| match l {
            Line::Context(t) | Line::Add(t) => Some(t.as_str()),
            Line::Remove(_) => None,
        })
    }

    /// 0-based index in the old file where the old lines start.
    fn nominal_index(&self) -> usize {
        if self.old_len == 0 {
            self.old_start
        } else {
            self.old_start - 1
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchError {
    /// The patch text itself is not a list of well-formed hunks. `line` is 1-based in the patch.
    Malformed { line: usize, message: String },
    /// A hunk's old lines are not in the file, neither where its header says nor elsewhere after
    /// the previous hunk. `line` is the 1-based file line the header names.
    Mismatch {
        hunk: usize,
        line: usize,
        expected: String,
        found: Option<String>,
    },
    /// An insertion-only hunk points past the end of the file.
    OutOfRange {
        hunk: usize,
        line: usize,
        len: usize,
    },
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::Malformed { line, message } => {
                write!(f, "malformed patch at patch line {line}: {message}")
            }
            PatchError::Mismatch {
                hunk,
                line,
                expected,
                found,
            } => {
                write!(
                    f,
                    "hunk {hunk} does not apply: at file line {line} expected {:?}, found ",
                    expected.trim_end_matches('\n')
                )?;
                match found {
                    Some(found) => write!(f, "{:?}", found.trim_end_matches('\n')),
                    None => write!(f, "the end of the file"),
                }
            }
            PatchError::OutOfRange { hunk, line, len } => write!(
                f,
                "hunk {hunk} does not apply: it inserts after line {line}, but the file has {len} lines"
            ),
        }
    }
}

impl std::error::Error for PatchError {}

/// The `--- a/old` / `+++ b/new` header that makes a GitHub patch a complete unified diff
/// (`/dev/null` on the side of a create or a delete).
pub fn file_header(change: &crate::record::FileChange) -> String {
    let old = match change.status.as_str() {
        "added" => "/dev/null".to_string(),
        _ => format!(
            "a/{}",
            change.previous_path.as_deref().unwrap_or(&change.path)
        ),
    };
    let new = match change.status.as_str() {
        "removed" => "/dev/null".to_string(),
        _ => format!("b/{}", change.path),
    };
    format!("--- {old}\n+++ {new}\n")
}

/// Splits content into lines, each with its `\n` (the last may lack one).
pub fn split_lines(content: &str) -> Vec<String> {
    content.split_inclusive('\n').map(str::to_string).collect()
}

/// Parses the hunks of a GitHub `patch`. Text before the first `@@` (a `diff --git` / `---` /
/// `+++` header, as `git diff` writes) is skipped; anything else out of place is an error.
pub fn parse(patch: &str) -> Result<Vec<Hunk>, PatchError> {
    let mut hunks: Vec<Hunk> = Vec::new();
    // Old and new lines still owed by the current hunk.
    let (mut old_left, mut new_left) = (0usize, 0usize);
    let raw: Vec<&str> = patch.split('\n').collect();
    // A trailing newline leaves one empty piece that is not a line.
    let count = if patch.ends_with('\n') {
        raw.len() - 1
    } else {
        raw.len()
    };
    let malformed = |line: usize, message: String| PatchError::Malformed { line, message };
    for (i, text) in raw[..count].iter().enumerate() {
        let n = i + 1;
        if let Some(rest) = text.strip_prefix("@@") {
            if let Some(h) = hunks.last() {
                if old_left > 0 || new_left > 0 {
                    return Err(malformed(
                        n,
                        format!(
                            "hunk {} ended early: {old_left} old and {new_left} new lines missing (header says -{},{} +{},{})",
                            hunks.len(),
                            h.old_start,
                            h.old_len,
                            h.new_start,
                            h.new_len
                        ),
                    ));
                }
            }
            let hunk = parse_header(rest).map_err(|m| malformed(n, format!("{m} in {text:?}")))?;
            if let Some(prev) = hunks.last() {
                if hunk.old_start < prev.old_start + prev.old_len {
                    return Err(malformed(
                        n,
                        format!(
                            "hunk {} starts at old line {}, inside or before hunk {}",
                            hunks.len() + 1,
                            hunk.old_start,
                            hunks.len()
                        ),
                    ));
                }
            }
            old_left = hunk.old_len;
            new_left = hunk.new_len;
            hunks.push(hunk);
            continue;
        }
        let number = hunks.len();
        let Some(hunk) = hunks.last_mut() else {
            // Header lines before the first hunk, as `git diff` prints them.
            if text.starts_with("diff ")
                || text.starts_with("index ")
                || text.starts_with("--- ")
                || text.starts_with("+++ ")
                || text.starts_with("new file mode")
                || text.starts_with("deleted file mode")
                || text.starts_with("similarity index")
                || text.starts_with("rename ")
                || text.starts_with("old mode")
                || text.starts_with("new mode")
            {
                continue;
            }
            return Err(malformed(
                n,
                format!("expected a hunk header `@@ -a,b +c,d @@`, found {text:?}"),
            ));
        };
        if text.starts_with('\\') {
            // "\ No newline at end of file": the previous line has no terminator.
            let Some(last) = hunk.lines.last_mut() else {
                return Err(malformed(n, "`\\` marker before any hunk line".into()));
            };
            let t = last.text_mut();
            if t.ends_with('\n') {
                t.pop();
            }
            continue;
        }
        let (kind, body) = match text.chars().next() {
            Some(' ') => ('c', &text[1..]),
            Some('-') => ('-', &text[1..]),
            Some('+') => ('+', &text[1..]),
            // Some tools strip the space of an empty context line.
            None => ('c', ""),
            Some(_) => {
                return Err(malformed(
                    n,
                    format!("a hunk line must start with ' ', '-', '+' or '\\', found {text:?}"),
                ))
            }
        };
        let line = format!("{body}\n");
        match kind {
            'c' if old_left > 0 && new_left > 0 => {
                old_left -= 1;
                new_left -= 1;
                hunk.lines.push(Line::Context(line));
            }
            '-' if old_left > 0 => {
                old_left -= 1;
                hunk.lines.push(Line::Remove(line));
            }
            '+' if new_left > 0 => {
                new_left -= 1;
                hunk.lines.push(Line::Add(line));
            }
            // A stray empty line after a complete hunk (a trailing blank line) is harmless.
            'c' if text.is_empty() && old_left == 0 && new_left == 0 => {}
            _ => {
                return Err(malformed(
                    n,
                    format!(
                        "hunk {number} has more lines than its header -{},{} +{},{} says: {text:?}",
                        hunk.old_start, hunk.old_len, hunk.new_start, hunk.new_len
                    ),
                ))
            }
        }
    }
    if let Some(h) = hunks.last() {
        if old_left > 0 || new_left > 0 {
            return Err(malformed(
                count.max(1),
                format!(
                    "hunk {} is cut short: {old_left} old and {new_left} new lines missing (header says -{},{} +{},{})",
                    hunks.len(),
                    h.old_start,
                    h.old_len,
                    h.new_start,
                    h.new_len
                ),
            ));
        }
    }
    Ok(hunks)
}

/// Parses ` -a,b +c,d @@ section` (the text after the opening `@@`).
fn parse_header(rest: &str) -> Result<Hunk, String> {
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected a space after `@@`")?;
    let (ranges, section) = rest.split_once(" @@").ok_or("expected a closing ` @@`")?;
    let mut parts = ranges.split(' ');
    let old = parts
        .next()
        .and_then(|p| p.strip_prefix('-'))
        .ok_or("expected `-a,b`")?;
    let new = parts
        .next()
        .and_then(|p| p.strip_prefix('+'))
        .ok_or("expected `+c,d`")?;
    if parts.next().is_some() {
        return Err("expected exactly two ranges".into());
    }
    let (old_start, old_len) = parse_range(old)?;
    let (new_start, new_len) = parse_range(new)?;
    if old_len > 0 && old_start == 0 {
        return Err("old range starts at line 0 but is not empty".into());
    }
    Ok(Hunk {
        old_start,
        old_len,
        new_start,
        new_len,
        section: section.trim().to_string(),
        lines: Vec::new(),
    })
}

fn parse_range(range: &str) -> Result<(usize, usize), String> {
    let number = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("`{s}` is not a line number"))
    };
    match range.split_once(',') {
        Some((start, len)) => Ok((number(start)?, number(len)?)),
        None => Ok((number(range)?, 1)),
    }
}

/// Where a hunk's old lines are in `lines`, searching from its nominal position (shifted by
/// what earlier hunks changed) outwards, never before `min`.
pub fn locate(
    lines: &[String],
    hunk: &Hunk,
    index: usize,
    shift: isize,
    min: usize,
) -> Result<usize, PatchError> {
    let old: Vec<&str> = hunk.old_lines().collect();
    let matches_at = |pos: usize| {
        pos + old.len() <= lines.len() && old.iter().zip(&lines[pos..]).all(|(a, b)| *a == b)
    };
    let nominal = (hunk.nominal_index() as isize + shift).max(min as isize) as usize;
    let max_start = lines.len().saturating_sub(old.len());
    if nominal <= max_start && matches_at(nominal) {
        return Ok(nominal);
    }
    if !old.is_empty() {
        let mut d = 1usize;
        loop {
            let below = nominal.checked_sub(d).filter(|p| *p >= min);
            let above = Some(nominal + d).filter(|p| *p <= max_start);
            if below.is_none() && above.is_none() {
                break;
            }
            for pos in [below, above].into_iter().flatten() {
                if matches_at(pos) {
                    return Ok(pos);
                }
            }
            d += 1;
        }
    }
    if old.is_empty() {
        return Err(PatchError::OutOfRange {
            hunk: index + 1,
            line: nominal,
            len: lines.len(),
        });
    }
    // Report the first differing line at the nominal position.
    let at = nominal.min(lines.len());
    let (offset, expected) = old
        .iter()
        .enumerate()
        .find(|(k, l)| lines.get(at + k).map(String::as_str) != Some(**l))
        .map(|(k, l)| (k, l.to_string()))
        .unwrap_or((0, String::new()));
    Err(PatchError::Mismatch {
        hunk: index + 1,
        line: at + offset + 1,
        expected,
        found: lines.get(at + offset).cloned(),
    })
}

/// One applied hunk: where its old lines were found in the content as it was before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub pos: usize,
    /// How far `pos` is from where the header (shifted by earlier hunks) put it.
    pub offset: isize,
    pub old_len: usize,
    pub new_len: usize,
}

/// Applies hunks to `lines` in place, calling `each` with the content just before each hunk
/// and where it applies (the search/replace renderer reads the file at that moment).
pub fn apply_each<E: From<PatchError>>(
    lines: &mut Vec<String>,
    hunks: &[Hunk],
    mut each: impl FnMut(&[String], &Hunk, &Applied) -> Result<(), E>,
) -> Result<(), E> {
    let mut shift: isize = 0;
    let mut min = 0usize;
    for (i, hunk) in hunks.iter().enumerate() {
        let pos = locate(lines, hunk, i, shift, min)?;
        let new: Vec<String> = hunk.new_lines().map(str::to_string).collect();
        let applied = Applied {
            pos,
            offset: pos as isize - (hunk.nominal_index() as isize + shift),
            old_len: hunk.old_len,
            new_len: new.len(),
        };
        each(lines, hunk, &applied)?;
        lines.splice(pos..pos + hunk.old_len, new);
        shift = pos as isize + applied.new_len as isize
            - (hunk.nominal_index() + hunk.old_len) as isize;
        min = pos + applied.new_len;
    }
    Ok(())
}

/// Applies parsed hunks to `content` and returns the new content.
pub fn apply_hunks(content: &str, hunks: &[Hunk]) -> Result<String, PatchError> {
    let mut lines = split_lines(content);
    apply_each::<PatchError>(&mut lines, hunks, |_, _, _| Ok(()))?;
    Ok(lines.concat())
}

/// Applies a patch to `content` and returns the new content.
pub fn apply(content: &str, patch: &str) -> Result<String, PatchError> {
    apply_hunks(content, &parse(patch)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_sections_and_no_newline_markers() {
        let hunks = parse(
            "@@ -1,3 +1,3 @@ def f():\n a\n-b\n+B\n c\n@@ -10 +10,2 @@\n-x\n\\ No newline at end of file\n+y\n+z\n\\ No newline at end of file",
        )
        .unwrap();
        assert_eq!(hunks.len(), 2);
        assert_eq!(hunks[0].section, "def f():");
        assert_eq!(
            hunks[0].lines,
            vec![
                Line::Context("a\n".into()),
                Line::Remove("b\n".into()),
                Line::Add("B\n".into()),
                Line::Context("c\n".into())
            ]
        );
        assert_eq!((hunks[1].old_start, hunks[1].old_len), (10, 1));
        assert_eq!(
            hunks[1].lines,
            vec![
                Line::Remove("x".into()),
                Line::Add("y\n".into()),
                Line::Add("z".into())
            ]
        );
    }

    #[test]
    fn applies_modifications_insertions_and_deletions() {
        let old = "a\nb\nc\nd\ne\n";
        assert_eq!(
            apply(old, "@@ -2,1 +2,1 @@\n-b\n+B\n").unwrap(),
            "a\nB\nc\nd\ne\n"
        );
        // Pure insertion with no context (git diff -U0): after line 2.
        assert_eq!(
            apply(old, "@@ -2,0 +3,2 @@\n+x\n+y\n").unwrap(),
            "a\nb\nx\ny\nc\nd\ne\n"
        );
        // At the very top.
        assert_eq!(
            apply(old, "@@ -0,0 +1 @@\n+top\n").unwrap(),
            "top\na\nb\nc\nd\ne\n"
        );
        // Two hunks; the second's position shifts by what the first added.
        assert_eq!(
            apply(
                old,
                "@@ -1,2 +1,3 @@\n a\n+a2\n b\n@@ -4,2 +5,1 @@\n d\n-e\n"
            )
            .unwrap(),
            "a\na2\nb\nc\nd\n"
        );
        // Creating and deleting whole files.
        assert_eq!(
            apply("", "@@ -0,0 +1,2 @@\n+new\n+file\n").unwrap(),
            "new\nfile\n"
        );
        assert_eq!(apply("x\ny\n", "@@ -1,2 +0,0 @@\n-x\n-y\n").unwrap(), "");
    }

    #[test]
    fn no_newline_at_end_of_file_round_trips() {
        let old = "a\nb";
        let new = apply(
            old,
            "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n",
        )
        .unwrap();
        assert_eq!(new, "a\nc");
        let added = apply(
            old,
            "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n",
        )
        .unwrap();
        assert_eq!(added, "a\nb\n");
    }

    #[test]
    fn crlf_lines_keep_their_carriage_return() {
        let old = "a\r\nb\r\n";
        assert_eq!(
            apply(old, "@@ -1,2 +1,2 @@\n a\r\n-b\r\n+c\r\n").unwrap(),
            "a\r\nc\r\n"
        );
    }

    #[test]
    fn shifted_hunks_are_found_at_the_nearest_offset() {
        // The header says line 2, but two lines were added above since.
        let old = "p\nq\na\nb\nc\n";
        assert_eq!(
            apply(old, "@@ -2,2 +2,2 @@\n a\n-b\n+B\n").unwrap(),
            "p\nq\na\nB\nc\n"
        );
    }

    #[test]
    fn errors_name_the_hunk_the_line_and_the_difference() {
        let err = apply("a\nb\nc\n", "@@ -2,1 +2,1 @@\n-x\n+y\n").unwrap_err();
        assert_eq!(
            err,
            PatchError::Mismatch {
                hunk: 1,
                line: 2,
                expected: "x\n".into(),
                found: Some("b\n".into())
            }
        );
        assert_eq!(
            err.to_string(),
            "hunk 1 does not apply: at file line 2 expected \"x\", found \"b\""
        );
        let past_end = apply("a\n", "@@ -3,1 +3,1 @@\n-x\n+y\n").unwrap_err();
        assert_eq!(
            past_end.to_string(),
            "hunk 1 does not apply: at file line 2 expected \"x\", found the end of the file"
        );
        let insert_past_end = apply("a\n", "@@ -4,0 +5 @@\n+y\n").unwrap_err();
        assert_eq!(
            insert_past_end.to_string(),
            "hunk 1 does not apply: it inserts after line 4, but the file has 1 lines"
        );
    }

    #[test]
    fn malformed_patches_are_rejected_with_their_line() {
        let cases = [
            ("not a patch\n", 1, "expected a hunk header"),
            ("@@ -1,2 +1,2\n a\n", 1, "closing ` @@`"),
            ("@@ -x,2 +1,2 @@\n", 1, "`x` is not a line number"),
            (
                "@@ -1,2 +1,2 @@\n a\n",
                2,
                "cut short: 1 old and 1 new lines missing",
            ),
            ("@@ -1,1 +1,1 @@\n a\n b\n", 3, "more lines than its header"),
            ("@@ -1,2 +1,2 @@\n a\n?b\n", 3, "must start with"),
            ("@@ -1,1 +1,1 @@\n a\n@@ -3,2 +3,1 @@\n c\n", 4, "cut short"),
            (
                "@@ -5,1 +5,1 @@\n a\n@@ -3,1 +3,1 @@\n c\n",
                3,
                "inside or before hunk 1",
            ),
        ];
        for (patch, line, needle) in cases {
            match parse(patch) {
                Err(PatchError::Malformed { line: l, message }) => {
                    assert_eq!(l, line, "{patch:?}: {message}");
                    assert!(message.contains(needle), "{patch:?}: {message}");
                }
                other => panic!("{patch:?}: expected a malformed-patch error, got {other:?}"),
            }
        }
    }

    #[test]
    fn git_diff_headers_are_skipped() {
        let hunks =
            parse("diff --git a/x b/x\nindex 1..2 100644\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
                .unwrap();
        assert_eq!(hunks.len(), 1);
    }
}
