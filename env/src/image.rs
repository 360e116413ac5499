//! Base images: a Debian root filesystem built with `debootstrap --variant=minbase`, tarred
//! deterministically (entries sorted by name, numeric owners), hashed with BLAKE3, imported
//! into the engine with `create_image(from_src = "-")` and tagged with that hash.
//!
//! Everything slow is cached under a cache directory the caller chooses:
//! - `rootfs-<spec>/` the customised root filesystem (`rootfs-<spec>.complete` marks it done),
//! - `base-<spec>.json` the resulting `BaseImage` manifest (tag, tarball hash, packages).
//!
//! When the manifest exists and the engine still has the tagged image, nothing is rebuilt;
//! when the engine lost the image, the cached rootfs is tarred and imported again.
//!
//! The image carries a non-root user (`agent`, uid/gid 1000 by default) owning the work
//! directory (`/testbed`), and a system git config trusting every directory.

use crate::engine::Engine;
use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository under which base images are tagged; the tag is the tarball's BLAKE3.
pub const BASE_REPO: &str = "davinci-env-base";

/// What a base image is built from. Its canonical JSON keys the on-disk cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImageSpec {
    pub suite: String,
    pub mirror: String,
    pub variant: String,
    /// Extra packages (`debootstrap --include`), in the order given.
    pub include: Vec<String>,
    pub user: String,
    pub uid: u32,
    pub workdir: String,
}

impl Default for BaseImageSpec {
    fn default() -> Self {
        BaseImageSpec {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            variant: "minbase".into(),
            // `patch`: the last step of the harness's patch cascade.
            include: ["python3", "python3-pip", "python3-pytest", "git", "patch"]
                .map(String::from)
                .to_vec(),
            user: "agent".into(),
            uid: 1000,
            workdir: "/testbed".into(),
        }
    }
}

impl BaseImageSpec {
    /// A short key for the cache: BLAKE3 of the canonical JSON, 16 hex digits.
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).expect("spec serializes");
        blake3::hash(&json).to_hex()[..16].to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// A built (or found) base image: what the ledger records as the environment artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// `davinci-env-base:<rootfs_blake3>`.
    pub tag: String,
    /// The engine's image id (`sha256:...`); engine-local, not part of the content address.
    pub image_id: String,
    /// BLAKE3 of the rootfs tarball that was imported.
    pub rootfs_blake3: String,
    pub rootfs_tar_size: u64,
    /// `dpkg-query -W` inside the rootfs, sorted by name.
    pub packages: Vec<Package>,
    pub spec: BaseImageSpec,
}

impl BaseImage {
    /// The manifest as canonical JSON, without the engine-local image id: the bytes a stage
    /// writes as the image artifact (same rootfs → same bytes).
    pub fn manifest_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "tag": self.tag,
            "rootfs_blake3": self.rootfs_blake3,
            "rootfs_tar_size": self.rootfs_tar_size,
            "packages": self.packages,
            "spec": self.spec,
        });
        serde_json::to_vec_pretty(&v).expect("manifest serializes")
    }
}

/// What `ensure_base_image` had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOutcome {
    /// Manifest and tagged image were both there.
    Cached,
    /// The rootfs was cached; it was tarred and imported again.
    Imported,
    /// debootstrap ran.
    Built,
}

/// Returns the base image for `spec`, building and importing whatever is missing.
pub fn ensure_base_image(
    engine: &Engine,
    spec: &BaseImageSpec,
    cache_dir: &Path,
) -> anyhow::Result<(BaseImage, BuildOutcome)> {
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating cache dir {}", cache_dir.display()))?;
    let key = spec.key();
    // One builder per cache at a time (test processes run in parallel).
    let _lock = CacheLock::acquire(&cache_dir.join(format!("base-{key}.lock")))?;
    let manifest_path = cache_dir.join(format!("base-{key}.json"));
    if let Ok(bytes) = std::fs::read(&manifest_path) {
        if let Ok(mut img) = serde_json::from_slice::<BaseImage>(&bytes) {
            if let Some(id) = image_id(engine, &img.tag)? {
                img.image_id = id;
                return Ok((img, BuildOutcome::Cached));
            }
        }
    }
    let (rootfs, built) = ensure_rootfs(spec, cache_dir)?;
    let packages = dpkg_packages(&rootfs)?;
    let tar_path = cache_dir.join(format!("rootfs-{key}.tar"));
    let (hash, size) = tar_rootfs(&rootfs, &tar_path)?;
    let tag = format!("{BASE_REPO}:{hash}");
    if image_id(engine, &tag)?.is_none() {
        import_tarball(engine, &tar_path, BASE_REPO, &hash)?;
    }
    // The tarball is re-creatable from the rootfs; keep the disk small.
    let _ = std::fs::remove_file(&tar_path);
    let id = image_id(engine, &tag)?
        .with_context(|| format!("image {tag} is missing right after its import"))?;
    let img = BaseImage {
        tag,
        image_id: id,
        rootfs_blake3: hash,
        rootfs_tar_size: size,
        packages,
        spec: spec.clone(),
    };
    let tmp = manifest_path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&img)?)?;
    std::fs::rename(&tmp, &manifest_path)?;
    let outcome = if built {
        BuildOutcome::Built
    } else {
        BuildOutcome::Imported
    };
    Ok((img, outcome))
}

/// The image id of `reference`, or `None` when the engine does not have it.
pub fn image_id(engine: &Engine, reference: &str) -> anyhow::Result<Option<String>> {
    let docker = engine.docker().clone();
    let r = reference.to_string();
    match engine.block_on(async move { docker.inspect_image(&r).await }) {
        Ok(i) => Ok(Some(i.id.unwrap_or_default())),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(engine.classify(e, &format!("inspect image {reference}"))),
    }
}

/// Builds (or finds) the customised rootfs for `spec`. Returns its path and whether
/// debootstrap had to run.
pub fn ensure_rootfs(spec: &BaseImageSpec, cache_dir: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let key = spec.key();
    let dir = cache_dir.join(format!("rootfs-{key}"));
    let complete = cache_dir.join(format!("rootfs-{key}.complete"));
    if complete.exists() && dir.is_dir() {
        return Ok((dir, false));
    }
    let tmp = cache_dir.join(format!("rootfs-{key}.tmp"));
    // A finished debootstrap whose customisation did not complete is resumed.
    let bootstrapped = tmp.join(".davinci-debootstrap-ok");
    let mut ran = false;
    if !bootstrapped.exists() {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("removing a partial rootfs {}", tmp.display()))?;
        }
        debootstrap(spec, &tmp)?;
        std::fs::write(&bootstrapped, b"")?;
        ran = true;
    }
    customise(spec, &tmp)?;
    std::fs::remove_file(&bootstrapped)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir)?;
    std::fs::write(&complete, spec.key())?;
    Ok((dir, ran))
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail: String = format!("{stdout}\n{stderr}")
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("{what} failed ({}):\n{tail}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debootstrap(spec: &BaseImageSpec, target: &Path) -> anyhow::Result<()> {
    tracing::info!(target = %target.display(), suite = spec.suite, "debootstrap (slow, once per machine)");
    let mut cmd = Command::new("debootstrap");
    cmd.arg(format!("--variant={}", spec.variant));
    if !spec.include.is_empty() {
        cmd.arg(format!("--include={}", spec.include.join(",")));
    }
    cmd.arg(&spec.suite).arg(target).arg(&spec.mirror);
    run(&mut cmd, "debootstrap")?;
    Ok(())
}

fn customise(spec: &BaseImageSpec, root: &Path) -> anyhow::Result<()> {
    let chroot = |args: &[&str], what: &str| -> anyhow::Result<String> {
        run(Command::new("chroot").arg(root).args(args), what)
    };
    let uid = spec.uid.to_string();
    let has_user = chroot(&["getent", "passwd", &spec.user], "getent").is_ok();
    if !has_user {
        chroot(&["groupadd", "-g", &uid, &spec.user], "groupadd")?;
        chroot(
            &[
                "useradd",
                "-m",
                "-u",
                &uid,
                "-g",
                &uid,
                "-s",
                "/bin/bash",
                &spec.user,
            ],
            "useradd",
        )?;
    }
    let workdir = root.join(spec.workdir.trim_start_matches('/'));
    std::fs::create_dir_all(&workdir)?;
    chown(&workdir, spec.uid)?;
    std::fs::write(
        root.join("etc/gitconfig"),
        "[safe]\n\tdirectory = *\n[user]\n\tname = davinci-env\n\temail = env@davinci.invalid\n\
         [init]\n\tdefaultBranch = main\n",
    )?;
    // Caches that only make the image bigger (and less reproducible).
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let p = root.join(d);
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                let path = e.path();
                if path.is_file() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, uid) };
    if rc != 0 {
        bail!(
            "chown {} to {uid}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The installed packages, from `dpkg-query -W` run inside the rootfs, sorted by name.
pub fn dpkg_packages(root: &Path) -> anyhow::Result<Vec<Package>> {
    let out = run(
        Command::new("chroot").arg(root).args([
            "dpkg-query",
            "-W",
            "-f=${Package}\t${Version}\t${Architecture}\n",
        ]),
        "dpkg-query -W",
    )?;
    let mut pkgs: Vec<Package> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split('\t');
            Package {
                name: f.next().unwrap_or_default().to_string(),
                version: f.next().unwrap_or_default().to_string(),
                arch: f.next().unwrap_or_default().to_string(),
            }
        })
        .collect();
    pkgs.sort_by(|a, b| a.name.cmp(&b.name).then(a.arch.cmp(&b.arch)));
    Ok(pkgs)
}

/// Tars `root` to `out` with GNU tar (entries sorted by name, numeric owners, the contents of
/// /proc, /sys and /dev left out) and returns the tarball's BLAKE3 (hex) and size. The same
/// rootfs always gives the same bytes.
pub fn tar_rootfs(root: &Path, out: &Path) -> anyhow::Result<(String, u64)> {
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--format=gnu",
            "--xattrs",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "--exclude=./dev/*",
            "--exclude=./.davinci-debootstrap-ok",
            "-C",
        ])
        .arg(root)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .stdin(Stdio::null())
        .status()
        .context("starting tar")?;
    if !status.success() {
        bail!("tar of {} failed ({status})", root.display());
    }
    let mut f = std::fs::File::open(out)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Imports a rootfs tarball as `repo:tag`, streaming the file as the request body.
pub fn import_tarball(engine: &Engine, tar: &Path, repo: &str, tag: &str) -> anyhow::Result<()> {
    use bollard::query_parameters::CreateImageOptions;
    let file = std::fs::File::open(tar).with_context(|| format!("opening {}", tar.display()))?;
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        message: Some("davinci-env base rootfs".into()),
        ..Default::default()
    };
    let docker = engine.docker().clone();
    let body = file_stream(file);
    let res: Result<(), bollard::errors::Error> = engine.block_on(async move {
        let mut s = docker.create_image(Some(opts), Some(bollard::body_try_stream(body)), None);
        while let Some(item) = s.next().await {
            item?;
        }
        Ok(())
    });
    res.map_err(|e| engine.classify(e, &format!("import {}", tar.display())))
}

/// The file as a stream of 1 MiB chunks, read on a blocking thread.
fn file_stream(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    futures_util::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let res = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 1 << 20];
            let r = loop {
                match reader.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            (reader, buf, r)
        })
        .await;
        match res {
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
            Ok((_, _, Ok(0))) => None,
            Ok((reader, mut buf, Ok(n))) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(reader)))
            }
            Ok((_, _, Err(e))) => Some((Err(e), None)),
        }
    })
}

/// An exclusive `flock` on a file, released on drop.
struct CacheLock(#[allow(dead_code)] std::fs::File);

impl CacheLock {
    fn acquire(path: &Path) -> anyhow::Result<CacheLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(CacheLock(f))
    }
}
