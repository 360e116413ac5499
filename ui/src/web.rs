//! Request plumbing shared by the pages: query strings, errors as pages, and running a page's
//! (blocking) ledger reads off the async threads.

use crate::state::{Shared, View};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use ledger::{Error as LedgerError, Hash};
use maud::Markup;
use std::sync::Arc;

/// A parsed query string; keys may repeat (`run=a&run=b`).
#[derive(Clone, Debug, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn number(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// This query with `key` set to `value` (other keys kept), as `?...`.
    pub fn with(&self, key: &str, value: &str) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.0.iter().filter(|(k, _)| k != key) {
            s.append_pair(k, v);
        }
        s.append_pair(key, value);
        format!("?{}", s.finish())
    }
}

/// `?k=v&...` from pairs, every value percent-encoded.
pub fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    format!("?{}", s.finish())
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum PageError {
    NotFound(String),
    BadRequest(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> PageError {
        match e.downcast::<LedgerError>() {
            Ok(e) => PageError::from(e),
            Err(e) => PageError::Internal(e),
        }
    }
}

impl From<LedgerError> for PageError {
    fn from(e: LedgerError) -> PageError {
        match e {
            LedgerError::NotFound(m) => PageError::NotFound(m),
            e @ (LedgerError::Invalid(_) | LedgerError::Ambiguous { .. }) => {
                PageError::BadRequest(e.to_string())
            }
            e => PageError::Internal(e.into()),
        }
    }
}

pub type PageResult = Result<Page, PageError>;

/// What a page handler answers.
pub enum Page {
    Html(Markup),
    Redirect(String),
}

impl From<Markup> for Page {
    fn from(m: Markup) -> Page {
        Page::Html(m)
    }
}

/// Runs a page's reads on a blocking thread with the current view.
pub async fn page(
    shared: Arc<Shared>,
    f: impl FnOnce(&Shared, &View) -> PageResult + Send + 'static,
) -> Response {
    let result = tokio::task::spawn_blocking(move || shared.read(|view| f(&shared, view))).await;
    match result {
        Ok(Ok(Page::Html(markup))) => Html(markup.into_string()).into_response(),
        Ok(Ok(Page::Redirect(to))) => {
            (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
        }
        Ok(Err(e)) => error_page(e),
        Err(join) => error_page(PageError::Internal(anyhow::anyhow!(
            "the page's reader failed: {join}"
        ))),
    }
}

pub fn error_page(e: PageError) -> Response {
    let (status, message) = match e {
        PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        PageError::Internal(e) => {
            tracing::error!("{e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
        }
    };
    let body = crate::pages::layout::error(status.as_u16(), &message);
    (status, Html(body.into_string())).into_response()
}

/// Resolves what a URL names (a tag, a full address, or a unique prefix of >= 8 hex digits)
/// through the index: the only way a request names anything in the store.
pub fn resolve(view: &View, what: &str) -> Result<Hash, PageError> {
    Ok(view.ledger.resolve(what)?)
}
