//! The one HTTP client setup (ureq) every stage uses: OpenAI-compatible endpoints, PyPI files.
//! HTTPS goes through rustls with the platform verifier, i.e. the system's CA store and
//! `SSL_CERT_FILE` (what curl and pip trust; egress proxies that re-sign TLS need it). HTTP
//! statuses are answers, not errors: callers record or judge them.

use std::path::PathBuf;
use std::time::Duration;

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into()
}

/// `$XDG_CACHE_HOME/davinci-ledger/<what>`, else `~/.cache/davinci-ledger/<what>`: where
/// re-creatable downloads and builds (PyPI files, base images) are kept between runs.
pub fn cache_dir(what: &str) -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("davinci-ledger")
        .join(what)
}
