//! The SWE-agent tools over a container: `bash`, `str_replace_editor` and `submit`.
//!
//! A tool's own failure (a non-unique `old_str`, a missing file, a command that exits non-zero)
//! is an observation for the agent: `ToolResult { is_error: true, .. }`. Only infrastructure
//! failures (engine gone, rollout limit spent) are `Err`, and end the rollout.
//!
//! `bash` runs every command of a rollout in one shell session (`shell::ShellSession`, as
//! SWE-agent does through SWE-ReX): `cd`, `export` and an activated environment carry over;
//! a command past `bash_timeout` is killed without losing the session. Observations longer
//! than `max_observation_chars` keep their head and tail around a visible marker.

use crate::container::{Container, ExecRequest};
use crate::shell::ShellSession;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    pub output: String,
    pub is_error: bool,
    /// `bash` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

impl ToolResult {
    fn ok(output: impl Into<String>) -> ToolResult {
        ToolResult {
            output: output.into(),
            is_error: false,
            exit_code: None,
            timed_out: false,
        }
    }
    fn err(output: impl Into<String>) -> ToolResult {
        ToolResult {
            output: output.into(),
            is_error: true,
            exit_code: None,
            timed_out: false,
        }
    }
}

/// One `str_replace_editor` call, in the tool's JSON argument shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum EditorCommand {
    View {
        path: String,
        #[serde(default)]
        view_range: Option<[i64; 2]>,
    },
    Create {
        path: String,
        file_text: String,
    },
    StrReplace {
        path: String,
        old_str: String,
        #[serde(default)]
        new_str: Option<String>,
    },
    Insert {
        path: String,
        insert_line: usize,
        new_str: String,
    },
    UndoEdit {
        path: String,
    },
}

/// The marker placed where a long observation was cut.
pub fn truncation_marker(omitted: usize) -> String {
    format!("\n<<< observation truncated: {omitted} characters omitted >>>\n")
}

/// Keeps the first and last halves of `max` characters around a marker.
pub fn truncate_observation(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2).collect();
    let tail: String = s.chars().skip(n - (max - max / 2)).collect();
    format!("{head}{}{tail}", truncation_marker(n - max))
}

/// A file's bytes and mode before an edit; `None` when the edit created it.
type Snapshot = Option<(Vec<u8>, u32)>;

pub struct Tools<'c> {
    container: &'c Container,
    /// The repository the agent works in (`submit` diffs it).
    pub repo_dir: String,
    pub bash_timeout: Duration,
    pub max_observation_chars: usize,
    /// Per path, the contents before each edit (`None`: the file did not exist).
    history: HashMap<String, Vec<Snapshot>>,
    /// The rollout's shell, started with the first `bash` call.
    shell: ShellSession<'c>,
}

/// Lines shown around an edit.
const SNIPPET_LINES: usize = 4;

impl<'c> Tools<'c> {
    pub fn new(container: &'c Container, repo_dir: &str) -> Tools<'c> {
        Tools {
            container,
            repo_dir: repo_dir.to_string(),
            bash_timeout: Duration::from_secs(180),
            max_observation_chars: 16_000,
            history: HashMap::new(),
            shell: ShellSession::new(container, repo_dir),
        }
    }

    /// Lines the shell runs when it starts (e.g. activating the official images' conda
    /// environment); set before the first `bash` call.
    pub fn set_shell_init(&mut self, lines: Vec<String>) {
        self.shell.init = lines;
    }

    /// Dispatches a tool call by name with its JSON arguments.
    pub fn call(&mut self, name: &str, args: &serde_json::Value) -> anyhow::Result<ToolResult> {
        match name {
            "bash" => match args.get("command").and_then(|c| c.as_str()) {
                Some(c) => self.bash(c),
                None => Ok(ToolResult::err("bash: missing string argument `command`")),
            },
            "str_replace_editor" => match serde_json::from_value::<EditorCommand>(args.clone()) {
                Ok(cmd) => self.str_replace_editor(&cmd),
                Err(e) => Ok(ToolResult::err(format!("str_replace_editor: {e}"))),
            },
            "submit" => Ok(ToolResult::ok(self.submit()?)),
            other => Ok(ToolResult::err(format!(
                "unknown tool `{other}`; the tools are bash, str_replace_editor and submit"
            ))),
        }
    }

    pub fn bash(&mut self, command: &str) -> anyhow::Result<ToolResult> {
        let out = self.shell.run(command, self.bash_timeout)?;
        let mut text = out.combined();
        if out.timed_out {
            text.push_str(&format!(
                "\n<<< command timed out after {}s and was killed >>>",
                self.bash_timeout.as_secs_f64()
            ));
        }
        if out.output_truncated {
            text.push_str("\n<<< output capture limit reached >>>");
        }
        Ok(ToolResult {
            output: truncate_observation(&text, self.max_observation_chars),
            is_error: out.exit_code != 0 || out.timed_out,
            exit_code: Some(out.exit_code),
            timed_out: out.timed_out,
        })
    }

    pub fn str_replace_editor(&mut self, cmd: &EditorCommand) -> anyhow::Result<ToolResult> {
        let path = match cmd {
            EditorCommand::View { path, .. }
            | EditorCommand::Create { path, .. }
            | EditorCommand::StrReplace { path, .. }
            | EditorCommand::Insert { path, .. }
            | EditorCommand::UndoEdit { path } => path.clone(),
        };
        if !path.starts_with('/') {
            return Ok(ToolResult::err(format!(
                "The path {path} is not an absolute path, it should start with `/`."
            )));
        }
        let r = match cmd {
            EditorCommand::View { view_range, .. } => self.view(&path, *view_range)?,
            EditorCommand::Create { file_text, .. } => self.create(&path, file_text)?,
            EditorCommand::StrReplace {
                old_str, new_str, ..
            } => self.str_replace(&path, old_str, new_str.as_deref().unwrap_or(""))?,
            EditorCommand::Insert {
                insert_line,
                new_str,
                ..
            } => self.insert(&path, *insert_line, new_str)?,
            EditorCommand::UndoEdit { .. } => self.undo(&path)?,
        };
        Ok(ToolResult {
            output: truncate_observation(&r.output, self.max_observation_chars),
            ..r
        })
    }

    fn read_text(&self, path: &str) -> anyhow::Result<Result<(String, u32), ToolResult>> {
        match self.container.read_file(path) {
            Ok(Some((bytes, mode))) => match String::from_utf8(bytes) {
                Ok(s) => Ok(Ok((s, mode))),
                Err(_) => Ok(Err(ToolResult::err(format!(
                    "{path} is not a UTF-8 text file"
                )))),
            },
            Ok(None) => Ok(Err(ToolResult::err(format!(
                "The path {path} does not exist. Please provide a valid path."
            )))),
            Err(e) if is_user_error(&e) => Ok(Err(ToolResult::err(format!("{e}")))),
            Err(e) => Err(e),
        }
    }

    fn view(&mut self, path: &str, range: Option<[i64; 2]>) -> anyhow::Result<ToolResult> {
        let is_dir = self
            .container
            .exec_with(&ExecRequest {
                argv: vec!["test".into(), "-d".into(), path.into()],
                ..Default::default()
            })?
            .exit_code
            == 0;
        if is_dir {
            if range.is_some() {
                return Ok(ToolResult::err(
                    "The `view_range` parameter is not allowed when `path` points to a directory.",
                ));
            }
            let out = self.container.exec_with(&ExecRequest {
                argv: vec![
                    "find".into(),
                    path.into(),
                    "-maxdepth".into(),
                    "2".into(),
                    "-not".into(),
                    "-path".into(),
                    "*/.*".into(),
                ],
                ..Default::default()
            })?;
            let mut lines: Vec<&str> = out.stdout.lines().collect();
            lines.sort();
            return Ok(ToolResult::ok(format!(
                "Here's the files and directories up to 2 levels deep in {path}, excluding hidden items:\n{}\n",
                lines.join("\n")
            )));
        }
        let (text, _) = match self.read_text(path)? {
            Ok(t) => t,
            Err(r) => return Ok(r),
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let n = lines.len() as i64;
        let (start, end) = match range {
            None => (1, n),
            Some([s, e]) => {
                if s < 1 || s > n {
                    return Ok(ToolResult::err(format!(
                        "Invalid `view_range`: [{s}, {e}]. Its first element `{s}` should be within the range of lines of the file: [1, {n}]"
                    )));
                }
                let e = if e == -1 { n } else { e };
                if e < s || e > n {
                    return Ok(ToolResult::err(format!(
                        "Invalid `view_range`: [{s}, {e}]. Its second element should be -1 or within [{s}, {n}]"
                    )));
                }
                (s, e)
            }
        };
        let shown = numbered(&lines[(start - 1) as usize..end as usize], start as usize);
        Ok(ToolResult::ok(format!(
            "Here's the result of running `cat -n` on {path}:\n{shown}\n"
        )))
    }

    fn create(&mut self, path: &str, text: &str) -> anyhow::Result<ToolResult> {
        if self.container.download_tar(path)?.is_some() {
            return Ok(ToolResult::err(format!(
                "File already exists at: {path}. Cannot overwrite files using command `create`."
            )));
        }
        self.write(path, text.as_bytes(), 0o644, None)?;
        Ok(ToolResult::ok(format!(
            "File created successfully at: {path}"
        )))
    }

    fn str_replace(&mut self, path: &str, old: &str, new: &str) -> anyhow::Result<ToolResult> {
        let (text, mode) = match self.read_text(path)? {
            Ok(t) => t,
            Err(r) => return Ok(r),
        };
        if old.is_empty() {
            return Ok(ToolResult::err(
                "No replacement was performed: `old_str` is empty.",
            ));
        }
        let count = text.matches(old).count();
        if count != 1 {
            let detail = if count == 0 {
                format!(
                    "No replacement was performed, old_str `{old}` did not appear verbatim in {path} (found 0 times)."
                )
            } else {
                let lines: Vec<usize> = text
                    .match_indices(old)
                    .map(|(i, _)| text[..i].matches('\n').count() + 1)
                    .collect();
                format!(
                    "No replacement was performed. Multiple occurrences of old_str `{old}` in {path}: found {count} times, in lines {lines:?}. Please ensure it is unique."
                )
            };
            return Ok(ToolResult::err(detail));
        }
        let at = text.find(old).expect("counted once");
        let updated = format!("{}{new}{}", &text[..at], &text[at + old.len()..]);
        self.write(
            path,
            updated.as_bytes(),
            mode,
            Some((text.clone().into_bytes(), mode)),
        )?;
        let line = text[..at].matches('\n').count();
        let snippet = snippet(&updated, line, new.matches('\n').count());
        Ok(ToolResult::ok(format!(
            "The file {path} has been edited. Here's the result of running `cat -n` on a snippet of {path}:\n{snippet}\nReview the changes and make sure they are as expected. Edit the file again if necessary."
        )))
    }

    fn insert(&mut self, path: &str, after: usize, new: &str) -> anyhow::Result<ToolResult> {
        let (text, mode) = match self.read_text(path)? {
            Ok(t) => t,
            Err(r) => return Ok(r),
        };
        let lines: Vec<&str> = text.split('\n').collect();
        if after > lines.len() {
            return Ok(ToolResult::err(format!(
                "Invalid `insert_line` parameter: {after}. It should be within the range of lines of the file: [0, {}]",
                lines.len()
            )));
        }
        let mut out: Vec<&str> = lines[..after].to_vec();
        out.extend(new.split('\n'));
        out.extend_from_slice(&lines[after..]);
        let updated = out.join("\n");
        self.write(
            path,
            updated.as_bytes(),
            mode,
            Some((text.into_bytes(), mode)),
        )?;
        let snippet = snippet(&updated, after, new.matches('\n').count());
        Ok(ToolResult::ok(format!(
            "The file {path} has been edited. Here's the result of running `cat -n` on a snippet of the edited file:\n{snippet}\nReview the changes and make sure they are as expected (correct indentation, no duplicate lines, etc). Edit the file again if necessary."
        )))
    }

    fn undo(&mut self, path: &str) -> anyhow::Result<ToolResult> {
        let Some(prev) = self.history.get_mut(path).and_then(|h| h.pop()) else {
            return Ok(ToolResult::err(format!(
                "No edit history found for {path}."
            )));
        };
        match prev {
            Some((bytes, mode)) => {
                self.container.write_file(path, &bytes, mode)?;
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.split('\n').collect();
                Ok(ToolResult::ok(format!(
                    "Last edit to {path} undone successfully. Here's the result of running `cat -n` on {path}:\n{}\n",
                    numbered(&lines, 1)
                )))
            }
            None => {
                let rm = self.container.exec_with(&ExecRequest {
                    argv: vec!["rm".into(), "-f".into(), path.into()],
                    ..Default::default()
                })?;
                if rm.exit_code != 0 {
                    return Ok(ToolResult::err(rm.combined()));
                }
                Ok(ToolResult::ok(format!(
                    "Last edit to {path} undone successfully: the file it created is removed."
                )))
            }
        }
    }

    fn write(
        &mut self,
        path: &str,
        bytes: &[u8],
        mode: u32,
        previous: Snapshot,
    ) -> anyhow::Result<()> {
        self.container.write_file(path, bytes, mode)?;
        self.history
            .entry(path.to_string())
            .or_default()
            .push(previous);
        Ok(())
    }

    /// Stages everything and returns `git diff --cached` of the repository: the patch.
    pub fn submit(&mut self) -> anyhow::Result<String> {
        let out = self.container.exec_with(
            &ExecRequest::bash("git add -A && git diff --cached --no-color")
                .workdir(&self.repo_dir)
                .timeout(Duration::from_secs(120)),
        )?;
        if !out.success() {
            anyhow::bail!(
                "submit: git diff in {} failed ({}): {}",
                self.repo_dir,
                out.exit_code,
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }
}

fn is_user_error(e: &anyhow::Error) -> bool {
    let m = e.to_string();
    m.contains("is a directory") || m.contains("is not a regular file")
}

fn numbered(lines: &[&str], first: usize) -> String {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{:6}\t{l}", i + first))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `cat -n` of the lines around an edit starting at 0-based `line` spanning `extra` lines.
fn snippet(text: &str, line: usize, extra: usize) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let start = line.saturating_sub(SNIPPET_LINES);
    let end = (line + extra + SNIPPET_LINES + 1).min(lines.len());
    numbered(&lines[start..end], start + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_head_and_tail_with_a_marker() {
        let s: String = "a".repeat(50) + &"b".repeat(50);
        let t = truncate_observation(&s, 20);
        assert!(t.starts_with("aaaaaaaaaa<<<") || t.starts_with("aaaaaaaaaa\n<<<"));
        assert!(t.ends_with("bbbbbbbbbb"));
        assert!(t.contains("80 characters omitted"));
        assert_eq!(truncate_observation("short", 20), "short");
    }

    #[test]
    fn editor_commands_parse_from_tool_call_json() {
        let c: EditorCommand = serde_json::from_value(serde_json::json!({
            "command": "str_replace", "path": "/a", "old_str": "x", "new_str": "y"
        }))
        .unwrap();
        assert_eq!(
            c,
            EditorCommand::StrReplace {
                path: "/a".into(),
                old_str: "x".into(),
                new_str: Some("y".into())
            }
        );
        let v: EditorCommand = serde_json::from_value(serde_json::json!({
            "command": "view", "path": "/a", "view_range": [1, -1]
        }))
        .unwrap();
        assert_eq!(
            v,
            EditorCommand::View {
                path: "/a".into(),
                view_range: Some([1, -1])
            }
        );
    }
}
