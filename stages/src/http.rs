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

/// POSTs a JSON body and returns the recorded form of the answer, `HTTP <code>\n<raw body>`.
/// Transport failures, 429 and 5xx are retried `max_retries` times (1 s, 2 s, 4 s … between);
/// after that the last answer is returned (a transport failure is an error: it is no answer).
pub fn post_json_recorded(
    agent: &ureq::Agent,
    url: &str,
    bearer: Option<&str>,
    body: &[u8],
    max_retries: u32,
) -> anyhow::Result<Vec<u8>> {
    let mut attempt = 0;
    loop {
        let mut request = agent.post(url).header("Content-Type", "application/json");
        if let Some(key) = bearer {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let result = request.send(body).and_then(|mut response| {
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()?;
            Ok((status, body))
        });
        let retry = match &result {
            Ok((status, _)) => *status == 429 || *status >= 500,
            Err(_) => true,
        };
        if retry && attempt < max_retries {
            std::thread::sleep(Duration::from_secs(1 << attempt.min(6)));
            attempt += 1;
            continue;
        }
        let (status, body) = result.map_err(|e| anyhow::anyhow!("POST {url}: {e}"))?;
        let mut out = format!("HTTP {status}\n").into_bytes();
        out.extend_from_slice(&body);
        return Ok(out);
    }
}

/// Splits a recorded answer into its status and body.
pub fn split_recorded(recorded: &[u8]) -> Result<(u16, &[u8]), String> {
    let nl = recorded
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("the recorded answer has no status line")?;
    let status = std::str::from_utf8(&recorded[..nl])
        .ok()
        .and_then(|l| l.strip_prefix("HTTP "))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the recorded answer has no `HTTP <code>` status line")?;
    Ok((status, &recorded[nl + 1..]))
}
