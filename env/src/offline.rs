//! Offline environments for real SWE-bench instances, where the official image is missing
//! and the repository cannot be cloned: a release's sdist from PyPI, unpacked in `/testbed`
//! on top of the base image, its dependencies installed from pinned wheels (no index, no
//! network), then patches reverse-applied and committed — for a SWE-bench instance the gold
//! patch and the test patch, since the first release after `base_commit` already holds both.
//!
//! The result approximates the instance's `base_commit`: code that changed between that
//! commit and the release still differs. The commit is made with a fixed identity and date,
//! so its id depends on content only and stands in for `base_commit` in rollouts.
//!
//! The image is `davinci-env-offline:<name>-<key>`, the key BLAKE3 over the repository image
//! it starts from, the wheels, the patches and this module's scripts.

use crate::container::{Container, ContainerSpec, ExecRequest};
use crate::engine::Engine;
use crate::image::image_id;
use crate::repo_image::{ensure_repo_image, image_label, GIT_FIXED, LABEL_COMMIT};
use anyhow::{bail, Context};
use std::time::Duration;

pub const OFFLINE_REPO: &str = "davinci-env-offline";

/// Installs `/tmp/wheels/*.whl` into the system Python (Debian marks it externally managed;
/// the container is the environment).
const INSTALL: &str = r#"set -e
if ls /tmp/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --break-system-packages --root-user-action=ignore /tmp/wheels/*.whl
fi
rm -rf /tmp/wheels
ln -sf /usr/bin/python3 /usr/local/bin/python
"#;

/// Reverse-applies `/tmp/reverse-<i>.patch` in order and commits the result.
const REVERSE: &str = r#"set -e
for p in $(ls /tmp/reverse-*.patch 2>/dev/null | sort -V); do
  git apply -R --whitespace=nowarn "$p"
  rm -f "$p"
done
git add -A
GIT_FIXED commit -q --allow-empty -m 'offline base: release with patches reverse-applied'
git rev-parse HEAD
"#;

/// An environment to build.
#[derive(Clone, Debug)]
pub struct OfflineSpec<'a> {
    /// A short name for tags (`flask-2.3.0`).
    pub name: &'a str,
    pub sdist: &'a [u8],
    /// `(filename, bytes)` of each wheel to install.
    pub wheels: Vec<(&'a str, &'a [u8])>,
    /// Reverse-applied in this order.
    pub reverse: Vec<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineImage {
    pub tag: String,
    /// The commit standing in for `base_commit`.
    pub commit: String,
}

pub fn offline_tag(base_tag: &str, spec: &OfflineSpec) -> String {
    let mut h = blake3::Hasher::new();
    h.update(crate::repo_image::repo_image_tag(base_tag, spec.name, spec.sdist).as_bytes());
    h.update(INSTALL.as_bytes());
    h.update(REVERSE.as_bytes());
    for (name, bytes) in &spec.wheels {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(blake3::hash(bytes).as_bytes());
    }
    for p in &spec.reverse {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let clean: String = spec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{OFFLINE_REPO}:{clean}-{}", &h.finalize().to_hex()[..16])
}

/// The image for `spec` on `base_tag`, built when the engine lacks it.
pub fn ensure_offline_image(
    engine: &Engine,
    base_tag: &str,
    spec: &OfflineSpec,
) -> anyhow::Result<OfflineImage> {
    let tag = offline_tag(base_tag, spec);
    if image_id(engine, &tag)?.is_some() {
        if let Some(commit) = image_label(engine, &tag, LABEL_COMMIT)? {
            return Ok(OfflineImage { tag, commit });
        }
    }
    let repo = ensure_repo_image(engine, base_tag, spec.name, spec.sdist)?;
    let mut cs = ContainerSpec::new(&repo.tag);
    cs.rollout_timeout = Duration::from_secs(1200);
    let workdir = cs.workdir.clone();
    let c = Container::start(engine, cs)
        .with_context(|| format!("starting {} to build {tag}", repo.tag))?;
    for (name, bytes) in &spec.wheels {
        c.write_file(&format!("/tmp/wheels/{name}"), bytes, 0o644)?;
    }
    let out = c.exec_with(
        &ExecRequest::bash(INSTALL)
            .as_root()
            .timeout(Duration::from_secs(600)),
    )?;
    if !out.success() {
        bail!(
            "{}: installing the wheels failed ({}): {}",
            spec.name,
            out.exit_code,
            out.combined().trim()
        );
    }
    for (i, p) in spec.reverse.iter().enumerate() {
        let mut p = p.to_string();
        if !p.ends_with('\n') {
            p.push('\n');
        }
        c.write_file(&format!("/tmp/reverse-{i}.patch"), p.as_bytes(), 0o644)?;
    }
    let out = c.exec_with(
        &ExecRequest::bash(&REVERSE.replace("GIT_FIXED", GIT_FIXED))
            .workdir(&workdir)
            .timeout(Duration::from_secs(300)),
    )?;
    if !out.success() {
        bail!(
            "{}: reverse-applying the patches failed ({}): {}",
            spec.name,
            out.exit_code,
            out.combined().trim()
        );
    }
    let commit = out
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    let (r, t) = tag.split_once(':').expect("tag has a colon");
    let docker = engine.docker().clone();
    let opts = bollard::query_parameters::CommitContainerOptionsBuilder::new()
        .container(c.id())
        .repo(r)
        .tag(t)
        .comment(&format!("{} offline base {commit}", spec.name))
        .pause(true)
        .build();
    let config = bollard::models::ContainerConfig {
        labels: Some(
            [(LABEL_COMMIT.to_string(), commit.clone())]
                .into_iter()
                .collect(),
        ),
        working_dir: Some(workdir),
        ..Default::default()
    };
    engine
        .block_on(async move { docker.commit_container(opts, config).await })
        .map_err(|e| engine.classify(e, &format!("commit image {tag}")))?;
    c.remove()?;
    tracing::info!(%tag, %commit, "built offline environment");
    Ok(OfflineImage { tag, commit })
}

/// The official image name for an instance: `swebench/sweb.eval.x86_64.<id>:latest` with
/// `__` written `_1776_`.
pub fn official_image(instance_id: &str) -> String {
    format!(
        "swebench/sweb.eval.x86_64.{}:latest",
        instance_id.replace("__", "_1776_").to_ascii_lowercase()
    )
}

/// In the official images the environment is conda's `testbed` under `/opt/miniconda3`
/// and the repository is `/testbed`; commands run as root there.
pub const OFFICIAL_SHELL_INIT: &str =
    "source /opt/miniconda3/bin/activate && conda activate testbed";

/// Test id → status of `instance`'s tests in a fresh container from `image`, after
/// applying `patches` in order.
pub fn statuses_with(
    engine: &Engine,
    image: &str,
    instance: &crate::instance::TaskInstance,
    patches: &[&str],
    timeout: Duration,
) -> anyhow::Result<crate::grading::StatusMap> {
    let mut spec = ContainerSpec::new(image);
    spec.rollout_timeout = timeout + Duration::from_secs(300);
    let c = Container::start(engine, spec)?;
    for (i, p) in patches.iter().enumerate() {
        let mut p = p.to_string();
        if !p.ends_with('\n') {
            p.push('\n');
        }
        let path = format!("/tmp/davinci-validate-{i}.patch");
        c.write_file(&path, p.as_bytes(), 0o644)?;
        let r =
            c.exec_with(&ExecRequest::bash(&format!("git apply -v {path}")).workdir("/testbed"))?;
        if !r.success() {
            bail!(
                "{}: patch {i} does not apply in {image}: {}",
                instance.instance_id,
                r.combined().trim()
            );
        }
    }
    let cmd = crate::grading::instance_test_cmd(instance);
    let r = c.exec_with(
        &ExecRequest::bash(&format!("{{ {cmd}\n}} 2>&1"))
            .workdir("/testbed")
            .timeout(timeout),
    )?;
    if r.timed_out {
        bail!("{}: `{cmd}` timed out in {image}", instance.instance_id);
    }
    let parser = crate::grading::instance_parser(instance)?;
    Ok(parser.parse(&r.combined())?)
}

/// FAIL_TO_PASS and PASS_TO_PASS by SWE-bench's validation rule: tests that do not pass with
/// the test patch alone and pass with the gold patch too, and tests that pass with both, in
/// the log's order.
pub fn derive_lists(
    engine: &Engine,
    image: &str,
    instance: &crate::instance::TaskInstance,
    timeout: Duration,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let before = statuses_with(engine, image, instance, &[&instance.test_patch], timeout)?;
    let after = statuses_with(
        engine,
        image,
        instance,
        &[&instance.patch, &instance.test_patch],
        timeout,
    )?;
    let passes = |m: &crate::grading::StatusMap, k: &str| m.status(k).is_some_and(|s| s.is_pass());
    let mut f2p = Vec::new();
    let mut p2p = Vec::new();
    for (k, _) in after.iter() {
        if passes(&after, k) {
            if passes(&before, k) {
                p2p.push(k.clone());
            } else {
                f2p.push(k.clone());
            }
        }
    }
    Ok((f2p, p2p))
}

#[cfg(test)]
mod tests {
    #[test]
    fn official_image_names() {
        assert_eq!(
            super::official_image("django__django-16569"),
            "swebench/sweb.eval.x86_64.django_1776_django-16569:latest"
        );
    }
}
