//! The script and style sheet, compiled into the binary (nothing is read from disk or fetched
//! at run time), served as files so the Content-Security-Policy needs no inline script or
//! style.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub const CSS_PATH: &str = "/static/app.css";
pub const JS_PATH: &str = "/static/app.js";

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

pub async fn css(headers: HeaderMap) -> Response {
    asset(&headers, CSS, "text/css; charset=utf-8")
}

pub async fn js(headers: HeaderMap) -> Response {
    asset(&headers, JS, "text/javascript; charset=utf-8")
}

fn asset(headers: &HeaderMap, body: &'static str, content_type: &'static str) -> Response {
    let etag = format!("\"{}\"", &blake3_hex(body.as_bytes())[..16]);
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ETAG,
            HeaderValue::from_str(&etag).expect("hex is a valid header value"),
        ),
    ];
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

fn blake3_hex(bytes: &[u8]) -> String {
    ledger::Hash::of(bytes).to_hex()
}
