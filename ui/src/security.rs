//! Every response's security headers, and the checks every request passes before a handler
//! sees it.
//!
//! - A strict Content-Security-Policy: scripts and styles only as files from this server
//!   (no inline script, no inline style, no `eval`), no frames, forms only to this server.
//!   Everything an artifact says is escaped by the templates anyway; the policy is the second
//!   wall, should anything slip.
//! - The `Host` header must name this server (`127.0.0.1:PORT`, `localhost:PORT`, or the
//!   address it was explicitly bound to), so a web page on another site cannot read it through
//!   a DNS name rebound to 127.0.0.1.
//! - A `POST` (the audit jobs: they only read, but they cost CPU) must come from a page of
//!   this server (`Origin`), so another site cannot start them.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// For an artifact's SVG served on its own (shown in an `<img>`, where no script runs; this
/// policy keeps a script in it from running when the URL is opened directly).
pub const SVG_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; sandbox";

/// The `Host` values this server answers to (none listed: any, for a server bound to every
/// address on request).
#[derive(Clone, Debug)]
pub struct Hosts(pub Arc<Vec<String>>);

impl Hosts {
    pub fn for_port(port: u16, extra: Option<String>) -> Hosts {
        let mut hosts = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        hosts.extend(extra);
        Hosts(Arc::new(hosts))
    }

    fn allows(&self, host: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

pub async fn guard(State(hosts): State<Hosts>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !hosts.allows(&host) {
        tracing::warn!("refused a request for Host `{host}`");
        return with_headers(
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!("this server answers to {} only", hosts.0.join(", ")),
            )
                .into_response(),
        );
    }
    if request.method() == Method::POST && !same_origin(request.headers(), &host) {
        return with_headers(
            (
                StatusCode::FORBIDDEN,
                "a POST must come from a page of this server",
            )
                .into_response(),
        );
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    with_headers(response)
}

/// A browser names the page a request came from in `Origin`, or (a header no page can set)
/// says `Sec-Fetch-Site: same-origin`.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let site = headers.get("sec-fetch-site").and_then(|o| o.to_str().ok());
    origin == Some(&format!("http://{host}")) || site == Some("same-origin")
}

fn with_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages show a ledger that grows: never from a cache.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    response
}
