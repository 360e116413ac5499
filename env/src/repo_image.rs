//! Per-repository images: a base image with a project's source tree committed in the work
//! directory and put on Python's path, committed as `davinci-env-repo:<key>`.
//!
//! The key is BLAKE3 over the base image tag, the source archive's bytes and this module's
//! setup script, so the same inputs find the same image and anything else builds a new one.
//! Git commits are made with a fixed author, committer and date, so the repository's commit
//! ids depend only on the files: a synthesized bug's `base_commit` is the same on every
//! machine. The image is an engine-local cache; whoever holds the archive can rebuild it.

use crate::container::{Container, ContainerSpec, ExecRequest};
use crate::engine::Engine;
use crate::image::image_id;
use anyhow::{bail, Context};
use std::time::Duration;

pub const REPO_IMAGE_REPO: &str = "davinci-env-repo";
/// The label holding the repository's initial commit.
pub const LABEL_COMMIT: &str = "davinci.env.commit";

/// `git` with a fixed identity and date: commit ids depend on content only.
pub const GIT_FIXED: &str = "GIT_AUTHOR_NAME=davinci GIT_AUTHOR_EMAIL=davinci@localhost \
GIT_COMMITTER_NAME=davinci GIT_COMMITTER_EMAIL=davinci@localhost \
GIT_AUTHOR_DATE='2000-01-01T00:00:00+0000' GIT_COMMITTER_DATE='2000-01-01T00:00:00+0000' git";

/// Unpacks `/tmp/source.tar.gz` (one top-level directory, as sdists are) into the work
/// directory, puts it on Python's path with a `.pth` file (`src/` when the project uses that
/// layout), and commits it.
const SETUP: &str = r#"set -e
cd "$WORKDIR"
tar -xzf /tmp/source.tar.gz --strip-components=1 --no-same-owner -C "$WORKDIR"
rm -f /tmp/source.tar.gz
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site"
if [ -d "$WORKDIR/src" ]; then echo "$WORKDIR/src" > "$site/testbed.pth"; else echo "$WORKDIR" > "$site/testbed.pth"; fi
chown -R "$OWNER" "$WORKDIR"
"#;

const COMMIT: &str =
    "git init -q && git add -A && GIT_FIXED commit -qm 'source' && git rev-parse HEAD";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoImage {
    /// `davinci-env-repo:<key>`.
    pub tag: String,
    /// The commit holding the unpacked source.
    pub commit: String,
}

/// The tag an archive gets on top of `base_tag`.
pub fn repo_image_tag(base_tag: &str, name: &str, archive: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(base_tag.as_bytes());
    h.update(&[0]);
    h.update(SETUP.as_bytes());
    h.update(COMMIT.as_bytes());
    h.update(&[0]);
    h.update(archive);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{REPO_IMAGE_REPO}:{clean}-{}", &h.finalize().to_hex()[..16])
}

/// Returns the repository image for `archive` on `base_tag`, building it when the engine does
/// not have it.
pub fn ensure_repo_image(
    engine: &Engine,
    base_tag: &str,
    name: &str,
    archive: &[u8],
) -> anyhow::Result<RepoImage> {
    let tag = repo_image_tag(base_tag, name, archive);
    if image_id(engine, &tag)?.is_some() {
        if let Some(commit) = image_label(engine, &tag, LABEL_COMMIT)? {
            return Ok(RepoImage { tag, commit });
        }
    }
    let mut spec = ContainerSpec::new(base_tag);
    spec.rollout_timeout = Duration::from_secs(900);
    let workdir = spec.workdir.clone();
    let owner = spec.user.clone();
    let c = Container::start(engine, spec)
        .with_context(|| format!("starting a container from {base_tag} to build {tag}"))?;
    c.write_file("/tmp/source.tar.gz", archive, 0o644)?;
    let out = c.exec_with(
        &ExecRequest {
            env: vec![format!("WORKDIR={workdir}"), format!("OWNER={owner}")],
            ..ExecRequest::bash(SETUP)
        }
        .as_root()
        .timeout(Duration::from_secs(600)),
    )?;
    if !out.success() {
        bail!(
            "unpacking {name} into {workdir} failed ({}): {}",
            out.exit_code,
            out.combined().trim()
        );
    }
    let out = c.exec_with(
        &ExecRequest::bash(&COMMIT.replace("GIT_FIXED", GIT_FIXED))
            .workdir(&workdir)
            .timeout(Duration::from_secs(300)),
    )?;
    if !out.success() {
        bail!(
            "committing {name} in {workdir} failed ({}): {}",
            out.exit_code,
            out.combined().trim()
        );
    }
    let commit = out.stdout.trim().to_string();
    let (repo, t) = tag.split_once(':').expect("tag has a colon");
    let docker = engine.docker().clone();
    let opts = bollard::query_parameters::CommitContainerOptionsBuilder::new()
        .container(c.id())
        .repo(repo)
        .tag(t)
        .comment(&format!("{name} unpacked and committed at {commit}"))
        .pause(true)
        .build();
    let config = bollard::models::ContainerConfig {
        labels: Some(
            [(LABEL_COMMIT.to_string(), commit.clone())]
                .into_iter()
                .collect(),
        ),
        working_dir: Some(workdir.clone()),
        ..Default::default()
    };
    engine
        .block_on(async move { docker.commit_container(opts, config).await })
        .map_err(|e| engine.classify(e, &format!("commit image {tag}")))?;
    c.remove()?;
    tracing::info!(%tag, %commit, "built repository image");
    Ok(RepoImage { tag, commit })
}

/// A label of an image, `None` when the image or the label is missing.
pub fn image_label(engine: &Engine, reference: &str, key: &str) -> anyhow::Result<Option<String>> {
    let docker = engine.docker().clone();
    let r = reference.to_string();
    match engine.block_on(async move { docker.inspect_image(&r).await }) {
        Ok(i) => Ok(i
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(key).cloned())),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(engine.classify(e, &format!("inspect image {reference}"))),
    }
}
