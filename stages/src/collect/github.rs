//! The GitHub REST collector: merged pull requests with their conversation, commits, per-file
//! patches, linked issue and the contents of the files they touch, as [`PrRecord`]s.
//!
//! Requests go through octocrab's HTTP client; the JSON is read into small local structs (the
//! typed octocrab models reject too much of what the API really sends). Every HTTP exchange
//! passes through [`StageContext::observe`], keyed by a canonical encoding of the request
//! (`site`, `epoch`, method, API-relative path and query, `Accept`; never the token, never the
//! host, so a mirror or a test server at another address reuses the recordings). What is
//! recorded is the answer: 2xx JSON, and the answers that say a resource cannot be had (404,
//! 410, 451; 409 for an empty repository; 422 for a commit GitHub no longer has), which are
//! skipped with their reason (a failed repository search fails the run). Transient failures
//! are never recorded: 5xx, rate limits (primary: `x-ratelimit-remaining: 0` until
//! `x-ratelimit-reset`; secondary: 403/429 with `retry-after`), cut connections and bodies that
//! are not JSON are retried, and a request that still fails fails the collection with the URL
//! and the status. Other errors (401, 403 without a rate limit, 400) fail at once. So a replay
//! rebuilds the collection offline and an interrupted crawl resumes without refetching what it
//! already has.
//!
//! Conditional requests: a crawl with `revalidate_epoch` set sends `If-None-Match` with the
//! ETag recorded for the same request under that epoch; a `304 Not Modified` (which GitHub does
//! not count against the rate limit) is recorded under the new epoch together with the body it
//! confirms, so every epoch's recordings stand on their own.
//!
//! Selection rules (see RECIPE.md): merged PRs only; snapshot = parent of the PR's first
//! commit, falling back to the base SHA; relevant files = files the PR touches, at the snapshot,
//! renamed (and copied) files under their old path, added files left out; linked issue = the
//! first issue (not pull request) the body closes with a GitHub closing keyword.

use crate::record::{
    Comment, Commit, FileChange, Issue, PrRecord, RelevantFile, Review, ReviewComment,
};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt;
use ledger::stage::StageContext;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The observation source name of every recorded GitHub exchange.
pub const SOURCE: &str = "github";

const ACCEPT: &str = "application/vnd.github+json";
const API_VERSION: &str = "2022-11-28";
/// Response headers kept in a recording; everything else (cookies, server timing, request ids)
/// is dropped.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "last-modified",
    "link",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-resource",
    "x-ratelimit-used",
];
/// Longest single backoff after a 5xx or a failed connection.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How many closing references of a PR body are tried before giving up on a linked issue.
const MAX_ISSUE_CANDIDATES: usize = 5;

/// Parameters of a GitHub collection. Every field has a default; `repos` or `search` must
/// select something (see [`GithubParams::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubParams {
    /// API root, e.g. `https://api.github.com` or `https://ghe.example.com/api/v3`.
    pub base_url: String,
    /// Names the API in request keys instead of `base_url`, so recordings made through a
    /// mirror (or at another port) answer the same requests.
    pub site: String,
    /// Explicit repositories, `owner/name`, taken as given (no star/archive filter).
    pub repos: Vec<String>,
    /// Repositories found by the search API, added after `repos` (duplicates dropped).
    pub search: Option<RepoSearch>,
    /// Stop listing a repository after this many merged PRs (newest first).
    pub max_prs_per_repo: Option<usize>,
    /// Page size of every listing, 1 to 100.
    pub per_page: u32,
    /// Re-sends after a 5xx, a failed connection or a body that is not JSON, per request.
    pub max_retries: u32,
    /// First backoff after such a failure; doubles each attempt (at most 60 s).
    pub retry_base_ms: u64,
    /// Rate-limit waits per request before giving up.
    pub max_rate_limit_waits: u32,
    /// Longest single rate-limit wait (a primary reset can be up to an hour away).
    pub max_rate_limit_wait_s: u64,
    /// Wait after a secondary rate limit that names no `retry-after`.
    pub secondary_wait_s: u64,
    /// Connect and read timeout of one request.
    pub timeout_s: u64,
    /// Environment variable holding the token, read at run time; the token itself is never
    /// part of the config, the request keys, the recordings or the logs.
    pub token_env: String,
    /// Crawl label, part of every request key: the same epoch reuses its recordings (resume,
    /// replay), a new epoch fetches again.
    pub epoch: String,
    /// Revalidate with `If-None-Match` against what this earlier epoch recorded.
    pub revalidate_epoch: Option<String>,
}

/// Repository selection through `GET /search/repositories`, most stars first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepoSearch {
    pub min_stars: u64,
    /// GitHub's language name, e.g. `Python`; `None` for all languages.
    pub language: Option<String>,
    pub include_archived: bool,
    /// At most 1000: the search API returns no more.
    pub max_repos: usize,
}

impl Default for GithubParams {
    fn default() -> GithubParams {
        GithubParams {
            base_url: "https://api.github.com".into(),
            site: "github.com".into(),
            repos: Vec::new(),
            search: None,
            max_prs_per_repo: None,
            per_page: 100,
            max_retries: 5,
            retry_base_ms: 1000,
            max_rate_limit_waits: 20,
            max_rate_limit_wait_s: 3700,
            secondary_wait_s: 60,
            timeout_s: 60,
            token_env: "GITHUB_TOKEN".into(),
            epoch: String::new(),
            revalidate_epoch: None,
        }
    }
}

impl Default for RepoSearch {
    fn default() -> RepoSearch {
        RepoSearch {
            min_stars: 5,
            language: None,
            include_archived: false,
            max_repos: 1000,
        }
    }
}

impl GithubParams {
    /// Checks what serde cannot: the repository names, the page size, the base URL.
    pub fn validate(&self) -> Result<()> {
        if self.repos.is_empty() && self.search.is_none() {
            bail!("give `repos` (owner/name) or a `search` table");
        }
        for repo in &self.repos {
            let parts: Vec<&str> = repo.split('/').collect();
            let ok = parts.len() == 2
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                });
            if !ok {
                bail!("`repos`: `{repo}` is not an owner/name repository");
            }
        }
        if !(1..=100).contains(&self.per_page) {
            bail!("`per_page` must be 1 to 100, not {}", self.per_page);
        }
        if let Some(search) = &self.search {
            if !(1..=1000).contains(&search.max_repos) {
                bail!("`search.max_repos` must be 1 to 1000 (the search API's limit)");
            }
        }
        if self.token_env.is_empty() {
            bail!("`token_env` must name an environment variable");
        }
        if self.revalidate_epoch.as_deref() == Some(self.epoch.as_str()) {
            bail!("`revalidate_epoch` must differ from `epoch`");
        }
        ApiBase::parse(&self.base_url)?;
        Ok(())
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GithubStats {
    /// HTTP requests sent (retries included).
    pub requests: u64,
    /// Requests answered by recorded observations (nothing sent).
    pub from_cache: u64,
    /// Requests sent again after a transient failure (rate limit, 5xx, cut connection, body
    /// that is not JSON).
    pub retries: u64,
    /// Sleeps for a primary or secondary rate limit.
    pub rate_limit_waits: u64,
    /// Conditional requests answered `304 Not Modified`.
    pub not_modified: u64,
    /// Resources left out, with why: `(url, reason)`.
    pub skipped: Vec<(String, String)>,
    /// Repositories whose PRs were listed.
    pub repos: u64,
    /// Records handed to the sink.
    pub prs: u64,
    /// Commits whose own page is gone (e.g. 422: GitHub no longer has the commit): their PR
    /// is kept, the commit marked `diffs_unavailable` (and `filter` counts it).
    pub commits_unavailable: u64,
}

/// Crawls the selected repositories and hands every merged PR to `sink`, in order: repositories
/// as selected, PRs newest first.
pub fn collect(
    ctx: &mut StageContext,
    params: &GithubParams,
    sink: &mut dyn FnMut(PrRecord) -> Result<()>,
) -> Result<GithubStats> {
    params.validate()?;
    let base = ApiBase::parse(&params.base_url)?;
    let http = Http::new(params, &base)?;
    let mut client = Client {
        ctx,
        params,
        base,
        http,
        stats: GithubStats::default(),
        pause_until: HashMap::new(),
    };
    for repo in client.select_repos()? {
        client.crawl_repo(&repo, sink)?;
    }
    Ok(client.stats)
}

// ---------------------------------------------------------------------------------------------
// The JSON we read (GitHub sends much more; unknown fields are ignored).

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct User {
    login: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RepoJson {
    full_name: String,
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SearchPage {
    items: Vec<RepoJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PullListItem {
    number: u64,
    merged_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitRef {
    sha: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pull {
    number: u64,
    title: String,
    body: Option<String>,
    user: Option<User>,
    created_at: Option<String>,
    merged_at: Option<String>,
    merged: bool,
    merge_commit_sha: Option<String>,
    base: GitRef,
    comments: Option<u64>,
    review_comments: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FileJson {
    filename: String,
    previous_filename: Option<String>,
    status: String,
    additions: u64,
    deletions: u64,
    patch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitActor {
    name: String,
    date: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GitCommit {
    message: String,
    author: Option<GitActor>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CommitJson {
    sha: String,
    commit: GitCommit,
    author: Option<User>,
    parents: Vec<GitRef>,
    /// Only in the single-commit answer.
    files: Vec<FileJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CommentJson {
    user: Option<User>,
    body: Option<String>,
    created_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReviewJson {
    id: u64,
    user: Option<User>,
    body: Option<String>,
    state: String,
    submitted_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReviewCommentJson {
    pull_request_review_id: Option<u64>,
    user: Option<User>,
    body: String,
    path: String,
    line: Option<u64>,
    original_line: Option<u64>,
    diff_hunk: String,
    created_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IssueJson {
    number: u64,
    title: String,
    body: Option<String>,
    comments: Option<u64>,
    /// Present when the "issue" is a pull request.
    pull_request: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContentsJson {
    #[serde(rename = "type")]
    kind: String,
    encoding: Option<String>,
    content: Option<String>,
    size: u64,
}

fn login(user: &Option<User>) -> String {
    user.as_ref().map(|u| u.login.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Requests, recordings and the transport.

/// The canonical request: what an observation is keyed by.
#[derive(Serialize)]
struct RequestKey<'a> {
    kind: &'static str,
    site: &'a str,
    epoch: &'a str,
    method: &'static str,
    /// Path and query relative to the API root.
    path: &'a str,
    accept: &'static str,
}

fn request_key(site: &str, epoch: &str, path: &str) -> Vec<u8> {
    serde_json::to_vec(&RequestKey {
        kind: "github-rest/1",
        site,
        epoch,
        method: "GET",
        path,
        accept: ACCEPT,
    })
    .expect("a request key serializes")
}

/// A recorded response: the status, the headers in [`KEPT_HEADERS`] and the body. A `304`
/// carries the body of the recording it revalidated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name)?.trim().parse().ok()
    }

    /// GitHub's error `message`, if the body carries one.
    fn message(&self) -> String {
        #[derive(Deserialize)]
        struct Message {
            message: String,
        }
        match serde_json::from_str::<Message>(&self.body) {
            Ok(m) => m.message,
            Err(_) => self.body.chars().take(200).collect(),
        }
    }
}

/// The API root, split so that paths can be joined to it and links read back relative to it.
#[derive(Debug, Clone)]
struct ApiBase {
    scheme: String,
    authority: String,
    /// Path prefix without a trailing slash (`""` for api.github.com, `/api/v3` for GHE).
    prefix: String,
}

impl ApiBase {
    fn parse(url: &str) -> Result<ApiBase> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("`base_url` `{url}` is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_string(),
            _ => bail!("`base_url` `{url}` must start with http:// or https://"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("`base_url` `{url}` has no host"))?
            .to_string();
        if uri.query().is_some() {
            bail!("`base_url` `{url}` must not have a query");
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(ApiBase {
            scheme,
            authority,
            prefix,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{}{path}", self.scheme, self.authority, self.prefix)
    }

    /// A `Link` URL as a path relative to the API root. Only the path and query are kept: the
    /// host of a recorded link may be a mirror's, and the token goes to `base_url` only.
    fn relative(&self, link: &str) -> Result<String> {
        let uri: http::Uri = link
            .parse()
            .with_context(|| format!("Link header URL `{link}` is not a URL"))?;
        let pq = uri
            .path_and_query()
            .map(|p| p.as_str())
            .ok_or_else(|| anyhow!("Link header URL `{link}` has no path"))?;
        let rest = pq.strip_prefix(self.prefix.as_str()).unwrap_or(pq);
        if !rest.starts_with('/') {
            bail!("Link header URL `{link}` is not under the API root");
        }
        Ok(rest.to_string())
    }
}

/// The URL of the `rel="next"` page in a `Link` header.
fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let mut pieces = part.split(';');
        let target = pieces.next()?.trim();
        let target = target.strip_prefix('<')?.strip_suffix('>')?;
        pieces
            .any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=")
                    .map(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
                    .unwrap_or(false)
            })
            .then_some(target)
    })
}

/// octocrab on a current-thread tokio runtime, driven one request at a time.
struct Http {
    runtime: tokio::runtime::Runtime,
    octocrab: octocrab::Octocrab,
}

/// An HTTP answer as it came off the wire.
struct Raw {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Http {
    fn new(params: &GithubParams, base: &ApiBase) -> Result<Http> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        let timeout = Some(Duration::from_secs(params.timeout_s.max(1)));
        let mut builder = octocrab::Octocrab::builder()
            .base_uri(base.url(""))
            .map_err(|e| anyhow!("`base_url` `{}`: {e}", params.base_url))?
            .add_retry_config(octocrab::service::middleware::retry::RetryConfig::None)
            .set_connect_timeout(timeout)
            .set_read_timeout(timeout)
            .set_write_timeout(timeout);
        match std::env::var(&params.token_env) {
            Ok(token) if !token.trim().is_empty() => {
                builder = builder.personal_token(token.trim().to_string());
            }
            _ => tracing::warn!(
                "{} is not set: unauthenticated GitHub requests (60 an hour)",
                params.token_env
            ),
        }
        // octocrab spawns its request buffer on the runtime it is built in.
        let octocrab = {
            let _guard = runtime.enter();
            builder
                .build()
                .map_err(|e| anyhow!("building the GitHub client: {}", error_chain(&e)))?
        };
        Ok(Http { runtime, octocrab })
    }

    fn get(&self, url: &str, if_none_match: Option<&str>) -> Result<Raw, String> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ACCEPT, HeaderValue::from_static(ACCEPT));
        headers.insert(
            HeaderName::from_static("x-github-api-version"),
            HeaderValue::from_static(API_VERSION),
        );
        if let Some(etag) = if_none_match {
            let value = HeaderValue::from_str(etag).map_err(|e| format!("bad ETag: {e}"))?;
            headers.insert(http::header::IF_NONE_MATCH, value);
        }
        self.runtime.block_on(async {
            let response = self
                .octocrab
                ._get_with_headers(url, Some(headers))
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter(|(name, _)| KEPT_HEADERS.contains(&name.as_str()))
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
                })
                .collect();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {}", error_chain(&e)))?
                .to_bytes()
                .to_vec();
            Ok::<Raw, String>(Raw {
                status,
                headers,
                body,
            })
        })
    }
}

/// An error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = s.source();
    }
    text
}

/// Why a live exchange was not recorded.
enum Failure {
    /// Sleep, then send again (not counted against `max_retries`).
    RateLimit { wait: Duration, what: String },
    /// Back off, then send again.
    Transient {
        what: String,
        retry_after: Option<Duration>,
    },
    /// Sending again will not help.
    Fatal(String),
}

/// An answered request.
struct Resp {
    url: String,
    recorded: Recorded,
}

impl Resp {
    fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let de = &mut serde_json::Deserializer::from_str(&self.recorded.body);
        serde_path_to_error::deserialize(de)
            .with_context(|| format!("GET {}: unexpected JSON", self.url))
    }

    fn next(&self, base: &ApiBase) -> Result<Option<String>> {
        match self.recorded.header("link").and_then(next_link) {
            Some(link) => {
                Ok(Some(base.relative(link).with_context(|| {
                    format!("GET {}: following pagination", self.url)
                })?))
            }
            None => Ok(None),
        }
    }
}

fn status_text(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP {status} {reason}").trim_end().to_string()
}

fn now_epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Time until an `x-ratelimit-reset` epoch second (at least one second: resets land on whole
/// seconds and clocks drift).
fn until_reset(reset: u64) -> Duration {
    let wait_ms = (u128::from(reset) * 1000).saturating_sub(now_epoch_ms());
    Duration::from_millis(wait_ms.clamp(1000, u128::from(u64::MAX)) as u64)
}

struct Client<'c> {
    ctx: &'c mut StageContext,
    params: &'c GithubParams,
    base: ApiBase,
    http: Http,
    stats: GithubStats,
    /// Per rate-limit resource (`core`, `search`): set when a live answer reported the quota
    /// exhausted, so that the next request sent against it waits for the reset.
    pause_until: HashMap<&'static str, Instant>,
}

/// The repository a crawl walks.
struct Repo {
    full_name: String,
    description: String,
}

impl Client<'_> {
    /// Sleeps, at most `max_rate_limit_wait_s`.
    fn sleep(&self, wait: Duration) {
        std::thread::sleep(wait.min(Duration::from_secs(self.params.max_rate_limit_wait_s)));
    }

    /// The ETag recorded for `path` under `revalidate_epoch`, with that recording.
    fn previous(&mut self, path: &str) -> Option<(String, Recorded)> {
        let epoch = self.params.revalidate_epoch.as_deref()?;
        let key = request_key(&self.params.site, epoch, path);
        // A lookup only: the fetch refuses, so nothing is sent or recorded.
        let bytes = self
            .ctx
            .observe(SOURCE, &key, || Err(anyhow!("not recorded")))
            .ok()?;
        let recorded: Recorded = serde_json::from_slice(&bytes).ok()?;
        let etag = recorded.header("etag")?.to_string();
        matches!(recorded.status, 200 | 304).then_some((etag, recorded))
    }

    /// GETs `path` (relative to the API root): from its recording when there is one, else from
    /// the network, retrying transient failures. `Ok(None)` when the resource is gone (404,
    /// 410, 451, 409, 422): the reason is added to `skipped`.
    fn get(&mut self, path: &str) -> Result<Option<Resp>> {
        let url = self.base.url(path);
        let key = request_key(&self.params.site, &self.params.epoch, path);
        let previous = self.previous(path);
        // GitHub meters the search API apart from the rest.
        let resource = if path.starts_with("/search/") {
            "search"
        } else {
            "core"
        };
        let mut attempts = 0u32;
        let mut waits = 0u32;
        let mut first_failure: Option<String> = None;
        loop {
            let mut failure = None;
            let mut live = false;
            let Client {
                ctx,
                http,
                stats,
                pause_until,
                params,
                ..
            } = self;
            let answer = ctx.observe(SOURCE, &key, || {
                live = true;
                if let Some(until) = pause_until.remove(resource) {
                    let wait = until.saturating_duration_since(Instant::now());
                    if !wait.is_zero() {
                        tracing::info!(
                            "primary rate limit exhausted: waiting {:.1} s",
                            wait.as_secs_f64()
                        );
                        stats.rate_limit_waits += 1;
                        std::thread::sleep(wait);
                    }
                }
                stats.requests += 1;
                let etag = previous.as_ref().map(|(etag, _)| etag.as_str());
                let raw = match http.get(&url, etag) {
                    Ok(raw) => raw,
                    Err(e) => {
                        failure = Some(Failure::Transient {
                            what: format!("request failed: {e}"),
                            retry_after: None,
                        });
                        bail!("not recorded");
                    }
                };
                let recorded = Recorded {
                    status: raw.status,
                    headers: raw.headers,
                    body: String::from_utf8_lossy(&raw.body).into_owned(),
                };
                // An answer that used the last request of the quota: pause before the next.
                // (A refusal waits in the retry loop instead.)
                if recorded.header_u64("x-ratelimit-remaining") == Some(0)
                    && !matches!(recorded.status, 403 | 429)
                {
                    if let Some(reset) = recorded.header_u64("x-ratelimit-reset") {
                        let wait = until_reset(reset)
                            .min(Duration::from_secs(params.max_rate_limit_wait_s));
                        pause_until.insert(resource, Instant::now() + wait);
                    }
                }
                match classify(recorded, previous.as_ref(), params) {
                    Ok(recorded) => {
                        Ok(serde_json::to_vec(&recorded).expect("a recording serializes"))
                    }
                    Err(f) => {
                        failure = Some(f);
                        bail!("not recorded");
                    }
                }
            });
            match (answer, failure) {
                (Ok(bytes), _) => {
                    let recorded: Recorded = serde_json::from_slice(&bytes)
                        .with_context(|| format!("GET {url}: the recorded response is corrupt"))?;
                    if !live {
                        self.stats.from_cache += 1;
                    }
                    return Ok(self.answered(url, recorded));
                }
                (Err(e), None) => return Err(e.context(format!("GET {url}"))),
                (Err(_), Some(Failure::Fatal(what))) => bail!("GET {url}: {what}"),
                (Err(_), Some(Failure::RateLimit { wait, what })) => {
                    waits += 1;
                    if waits > self.params.max_rate_limit_waits {
                        bail!(
                            "GET {url}: {what}; gave up after {} rate-limit waits",
                            waits - 1
                        );
                    }
                    tracing::warn!("GET {url}: {what}; waiting {:.1} s", wait.as_secs_f64());
                    self.sleep(wait);
                    self.stats.rate_limit_waits += 1;
                    self.stats.retries += 1;
                }
                (Err(_), Some(Failure::Transient { what, retry_after })) => {
                    attempts += 1;
                    if attempts > self.params.max_retries {
                        let first = match first_failure {
                            Some(first) if first != what => format!("; first failure: {first}"),
                            _ => String::new(),
                        };
                        bail!("GET {url}: {what} (gave up after {attempts} attempts{first})");
                    }
                    first_failure.get_or_insert_with(|| what.clone());
                    let backoff = Duration::from_millis(
                        self.params
                            .retry_base_ms
                            .saturating_mul(1u64 << (attempts - 1).min(20)),
                    )
                    .min(MAX_BACKOFF);
                    let wait = backoff.max(retry_after.unwrap_or_default());
                    tracing::warn!(
                        "GET {url}: {what}; retry {attempts}/{} in {:.1} s",
                        self.params.max_retries,
                        wait.as_secs_f64()
                    );
                    self.sleep(wait);
                    self.stats.retries += 1;
                }
            }
        }
    }

    /// Turns a recorded answer into a response or a skip.
    fn answered(&mut self, url: String, recorded: Recorded) -> Option<Resp> {
        match recorded.status {
            200..=299 => Some(Resp { url, recorded }),
            304 => {
                self.stats.not_modified += 1;
                Some(Resp { url, recorded })
            }
            status => {
                let reason = format!("{}: {}", status_text(status), recorded.message());
                tracing::info!("skipping {url}: {reason}");
                self.stats.skipped.push((url, reason));
                None
            }
        }
    }

    /// Every item of a paginated JSON array; `None` when the first page is gone.
    fn list<T: DeserializeOwned>(&mut self, path: String) -> Result<Option<Vec<T>>> {
        let mut items = Vec::new();
        let mut next = Some(path);
        let mut first = true;
        while let Some(path) = next.take() {
            let Some(resp) = self.get(&path)? else {
                return Ok(if first { None } else { Some(items) });
            };
            first = false;
            items.extend(resp.json::<Vec<T>>()?);
            next = resp.next(&self.base)?;
        }
        Ok(Some(items))
    }

    fn select_repos(&mut self) -> Result<Vec<Repo>> {
        let mut repos = Vec::new();
        let mut seen = HashSet::new();
        for name in self.params.repos.clone() {
            let Some(resp) = self.get(&format!("/repos/{name}"))? else {
                continue;
            };
            let json: RepoJson = resp.json()?;
            let full_name = if json.full_name.is_empty() {
                name.clone()
            } else {
                json.full_name
            };
            if seen.insert(full_name.to_lowercase()) {
                repos.push(Repo {
                    full_name,
                    description: json.description.unwrap_or_default(),
                });
            }
        }
        if let Some(search) = self.params.search.clone() {
            let mut q = format!("stars:>={}", search.min_stars);
            if let Some(language) = &search.language {
                q.push_str(&format!(" language:{language}"));
            }
            if !search.include_archived {
                q.push_str(" archived:false");
            }
            let mut next = Some(format!(
                "/search/repositories?q={}&sort=stars&order=desc&per_page={}",
                encode_query(&q),
                self.params.per_page
            ));
            let mut found = 0;
            let mut first = true;
            'pages: while let Some(path) = next.take() {
                let Some(resp) = self.get(&path)? else {
                    if first {
                        let (url, reason) = self.stats.skipped.last().expect("a skip");
                        bail!("repository search failed: GET {url}: {reason}");
                    }
                    break;
                };
                first = false;
                let page: SearchPage = resp.json()?;
                for item in page.items {
                    if found == search.max_repos {
                        break 'pages;
                    }
                    found += 1;
                    if seen.insert(item.full_name.to_lowercase()) {
                        repos.push(Repo {
                            full_name: item.full_name,
                            description: item.description.unwrap_or_default(),
                        });
                    }
                }
                next = resp.next(&self.base)?;
            }
        }
        Ok(repos)
    }

    fn crawl_repo(
        &mut self,
        repo: &Repo,
        sink: &mut dyn FnMut(PrRecord) -> Result<()>,
    ) -> Result<()> {
        let name = &repo.full_name;
        tracing::info!("listing merged pull requests of {name}");
        self.stats.repos += 1;
        let mut taken = 0usize;
        let mut next = Some(format!(
            "/repos/{name}/pulls?state=closed&sort=created&direction=desc&per_page={}",
            self.params.per_page
        ));
        while let Some(path) = next.take() {
            let Some(resp) = self.get(&path)? else {
                return Ok(());
            };
            let page: Vec<PullListItem> = resp.json()?;
            next = resp.next(&self.base)?;
            for item in page.into_iter().filter(|p| p.merged_at.is_some()) {
                if self.params.max_prs_per_repo == Some(taken) {
                    return Ok(());
                }
                taken += 1;
                self.ctx
                    .progress()
                    .set_message(format!("{name}#{}", item.number));
                if let Some(record) = self.pull_request(repo, item.number)? {
                    sink(record)?;
                    self.stats.prs += 1;
                }
            }
            // Enough taken: no need for the next page.
            if self.params.max_prs_per_repo == Some(taken) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One merged PR, or `None` when it (or one of the parts it cannot do without) is gone.
    fn pull_request(&mut self, repo: &Repo, number: u64) -> Result<Option<PrRecord>> {
        let name = &repo.full_name;
        let per_page = self.params.per_page;
        let Some(resp) = self.get(&format!("/repos/{name}/pulls/{number}"))? else {
            return Ok(None);
        };
        let pull: Pull = resp.json()?;
        if !pull.merged && pull.merged_at.is_none() {
            // The listing said merged; the detail disagrees. Nothing leaves without a reason.
            self.stats.skipped.push((
                resp.url.clone(),
                format!(
                    "PR #{number}: listed as merged, but its detail says `merged: false` with no `merged_at`"
                ),
            ));
            return Ok(None);
        }
        let Some(files) = self.list::<FileJson>(format!(
            "/repos/{name}/pulls/{number}/files?per_page={per_page}"
        ))?
        else {
            return Ok(None);
        };
        let Some(commit_list) = self.list::<CommitJson>(format!(
            "/repos/{name}/pulls/{number}/commits?per_page={per_page}"
        ))?
        else {
            return Ok(None);
        };
        let mut commits = Vec::with_capacity(commit_list.len());
        for c in &commit_list {
            // A commit GitHub no longer serves (its skip is counted by `get`) costs its diffs,
            // not the pull request: the PR's own file list still says what it changed.
            let (diffs, diffs_unavailable) = match self.commit_files(name, &c.sha)? {
                Some(diffs) => (diffs, false),
                None => {
                    self.stats.commits_unavailable += 1;
                    (Vec::new(), true)
                }
            };
            let author = match &c.author {
                Some(u) if !u.login.is_empty() => u.login.clone(),
                _ => c
                    .commit
                    .author
                    .as_ref()
                    .map(|a| a.name.clone())
                    .unwrap_or_default(),
            };
            commits.push(Commit {
                sha: c.sha.clone(),
                message: c.commit.message.clone(),
                author,
                date: c.commit.author.as_ref().and_then(|a| a.date.clone()),
                diffs,
                diffs_unavailable,
            });
        }
        let comments = if pull.comments == Some(0) {
            Vec::new()
        } else {
            self.comments(format!(
                "/repos/{name}/issues/{number}/comments?per_page={per_page}"
            ))?
        };
        let reviews = self.reviews(name, number, pull.review_comments)?;
        let body = pull.body.clone().unwrap_or_default();
        let related_issue = self.linked_issue(name, number, &body)?;
        let snapshot_sha = commit_list
            .first()
            .and_then(|c| c.parents.first())
            .map(|p| p.sha.clone())
            .filter(|sha| !sha.is_empty())
            .unwrap_or_else(|| pull.base.sha.clone());
        let files: Vec<FileChange> = files.into_iter().map(file_change).collect();
        let relevant_files = self.relevant_files(name, &snapshot_sha, &files)?;
        Ok(Some(PrRecord {
            repo_name: name.clone(),
            repo_description: repo.description.clone(),
            number: pull.number,
            title: pull.title,
            body,
            author: login(&pull.user),
            author_type: pull
                .user
                .as_ref()
                .map(|u| u.kind.clone())
                .unwrap_or_default(),
            merged: true,
            merged_at: pull.merged_at,
            created_at: pull.created_at,
            base_sha: pull.base.sha,
            merge_commit_sha: pull.merge_commit_sha,
            snapshot_sha,
            commits,
            files,
            comments,
            reviews,
            related_issue,
            relevant_files,
            source: SOURCE.to_string(),
        }))
    }

    /// The files of one commit with their patches (paginated past 300 files).
    fn commit_files(&mut self, repo: &str, sha: &str) -> Result<Option<Vec<FileChange>>> {
        let mut files = Vec::new();
        let mut next = Some(format!(
            "/repos/{repo}/commits/{sha}?per_page={}",
            self.params.per_page
        ));
        let mut first = true;
        while let Some(path) = next.take() {
            let Some(resp) = self.get(&path)? else {
                return Ok(if first { None } else { Some(files) });
            };
            first = false;
            let commit: CommitJson = resp.json()?;
            files.extend(commit.files.into_iter().map(file_change));
            next = resp.next(&self.base)?;
        }
        Ok(Some(files))
    }

    fn comments(&mut self, path: String) -> Result<Vec<Comment>> {
        Ok(self
            .list::<CommentJson>(path)?
            .unwrap_or_default()
            .into_iter()
            .map(|c| Comment {
                author: login(&c.user),
                created_at: c.created_at,
                body: c.body.unwrap_or_default(),
            })
            .collect())
    }

    /// Submitted reviews, oldest first, each with its inline comments (grouped by
    /// `pull_request_review_id`; comments of an unknown review form a review of their own).
    fn reviews(&mut self, repo: &str, number: u64, count: Option<u64>) -> Result<Vec<Review>> {
        let per_page = self.params.per_page;
        let listed = self
            .list::<ReviewJson>(format!(
                "/repos/{repo}/pulls/{number}/reviews?per_page={per_page}"
            ))?
            .unwrap_or_default();
        let inline = if count == Some(0) {
            Vec::new()
        } else {
            self.list::<ReviewCommentJson>(format!(
                "/repos/{repo}/pulls/{number}/comments?per_page={per_page}"
            ))?
            .unwrap_or_default()
        };
        let mut reviews = Vec::new();
        let mut by_id = HashMap::new();
        for r in listed.into_iter().filter(|r| r.state != "PENDING") {
            by_id.insert(r.id, reviews.len());
            reviews.push(Review {
                author: login(&r.user),
                state: r.state,
                submitted_at: r.submitted_at,
                body: r.body.unwrap_or_default(),
                comments: Vec::new(),
            });
        }
        let mut orphans: HashMap<Option<u64>, usize> = HashMap::new();
        for c in inline {
            let comment = ReviewComment {
                author: login(&c.user),
                path: c.path,
                line: c.line.or(c.original_line),
                diff_hunk: c.diff_hunk,
                body: c.body,
                created_at: c.created_at.clone(),
            };
            let at = match c.pull_request_review_id.and_then(|id| by_id.get(&id)) {
                Some(&at) => at,
                None => *orphans.entry(c.pull_request_review_id).or_insert_with(|| {
                    reviews.push(Review {
                        author: comment.author.clone(),
                        state: "COMMENTED".into(),
                        submitted_at: c.created_at,
                        body: String::new(),
                        comments: Vec::new(),
                    });
                    reviews.len() - 1
                }),
            };
            reviews[at].comments.push(comment);
        }
        reviews.sort_by(|a, b| {
            (a.submitted_at.is_none(), &a.submitted_at)
                .cmp(&(b.submitted_at.is_none(), &b.submitted_at))
        });
        Ok(reviews)
    }

    /// The first issue the body closes that is an issue (not a PR) and is still there.
    fn linked_issue(&mut self, repo: &str, pr: u64, body: &str) -> Result<Option<Issue>> {
        let candidates = closing_references(body, repo);
        for n in candidates
            .into_iter()
            .filter(|&n| n != pr)
            .take(MAX_ISSUE_CANDIDATES)
        {
            let Some(resp) = self.get(&format!("/repos/{repo}/issues/{n}"))? else {
                continue;
            };
            let issue: IssueJson = resp.json()?;
            if issue.pull_request.is_some() {
                continue;
            }
            let comments = if issue.comments == Some(0) {
                Vec::new()
            } else {
                self.comments(format!(
                    "/repos/{repo}/issues/{n}/comments?per_page={}",
                    self.params.per_page
                ))?
            };
            return Ok(Some(Issue {
                number: if issue.number == 0 { n } else { issue.number },
                title: issue.title,
                body: issue.body.unwrap_or_default(),
                comments,
            }));
        }
        Ok(None)
    }

    /// Full contents at `snapshot` of the files the PR touches: old paths for renames and
    /// copies, added files left out. Files that are gone, binary, too large for the contents
    /// API or not regular files are skipped with a reason.
    fn relevant_files(
        &mut self,
        repo: &str,
        snapshot: &str,
        files: &[FileChange],
    ) -> Result<Vec<RelevantFile>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for f in files.iter().filter(|f| f.status != "added") {
            let path = match f.status.as_str() {
                "renamed" | "copied" => f.previous_path.as_deref().unwrap_or(&f.path),
                _ => &f.path,
            };
            if !seen.insert(path.to_string()) {
                continue;
            }
            let request = format!(
                "/repos/{repo}/contents/{}?ref={}",
                encode_path(path),
                encode_query(snapshot)
            );
            let Some(resp) = self.get(&request)? else {
                continue;
            };
            let value: serde_json::Value = resp.json()?;
            let skip = |why: &str| (resp.url.clone(), why.to_string());
            if value.is_array() {
                self.stats.skipped.push(skip("a directory, not a file"));
                continue;
            }
            let contents: ContentsJson = resp.json()?;
            if contents.kind != "file" {
                let why = format!("not a regular file ({})", contents.kind);
                self.stats.skipped.push(skip(&why));
                continue;
            }
            let encoded = contents.content.unwrap_or_default();
            if contents.encoding.as_deref() != Some("base64")
                || (encoded.is_empty() && contents.size > 0)
            {
                let why = format!("{} bytes: too large for the contents API", contents.size);
                self.stats.skipped.push(skip(&why));
                continue;
            }
            let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .with_context(|| format!("GET {}: content is not base64", resp.url))?;
            match String::from_utf8(bytes) {
                Ok(content) => out.push(RelevantFile {
                    path: path.to_string(),
                    content,
                }),
                Err(_) => self.stats.skipped.push(skip("binary file (not UTF-8)")),
            }
        }
        Ok(out)
    }
}

/// Decides what a live answer means: `Ok` is recorded, `Err` is not.
fn classify(
    mut recorded: Recorded,
    previous: Option<&(String, Recorded)>,
    params: &GithubParams,
) -> Result<Recorded, Failure> {
    let status = recorded.status;
    match status {
        200..=299 => match serde_json::from_str::<serde::de::IgnoredAny>(&recorded.body) {
            Ok(_) => Ok(recorded),
            Err(e) => Err(Failure::Transient {
                what: format!(
                    "{}, but the body is not valid JSON ({e})",
                    status_text(status)
                ),
                retry_after: None,
            }),
        },
        304 => match previous {
            Some((_, before)) => {
                // Not modified: keep the body (and the links) it confirms.
                recorded.body = before.body.clone();
                for (name, value) in &before.headers {
                    recorded
                        .headers
                        .entry(name.clone())
                        .or_insert_with(|| value.clone());
                }
                Ok(recorded)
            }
            None => Err(Failure::Fatal(format!(
                "{} to a request that was not conditional",
                status_text(status)
            ))),
        },
        404 | 409 | 410 | 422 | 451 => Ok(recorded),
        403 | 429 => {
            let message = recorded.message();
            let retry_after = recorded.header_u64("retry-after");
            let exhausted = recorded.header_u64("x-ratelimit-remaining") == Some(0);
            let limited = status == 429
                || retry_after.is_some()
                || exhausted
                || message.to_lowercase().contains("rate limit");
            if !limited {
                return Err(Failure::Fatal(format!(
                    "{}: {message}",
                    status_text(status)
                )));
            }
            let (wait, kind) = match (retry_after, exhausted) {
                (Some(secs), _) => (Duration::from_secs(secs.max(1)), "secondary"),
                (None, true) => (
                    recorded
                        .header_u64("x-ratelimit-reset")
                        .map(until_reset)
                        .unwrap_or(Duration::from_secs(params.secondary_wait_s)),
                    "primary",
                ),
                (None, false) => (Duration::from_secs(params.secondary_wait_s), "secondary"),
            };
            Err(Failure::RateLimit {
                wait,
                what: format!("{} ({kind} rate limit): {message}", status_text(status)),
            })
        }
        500..=599 => Err(Failure::Transient {
            what: format!("{}: {}", status_text(status), recorded.message()),
            retry_after: recorded.header_u64("retry-after").map(Duration::from_secs),
        }),
        _ => Err(Failure::Fatal(format!(
            "{}: {}",
            status_text(status),
            recorded.message()
        ))),
    }
}

fn file_change(f: FileJson) -> FileChange {
    FileChange {
        path: f.filename,
        previous_path: f.previous_filename,
        status: f.status,
        additions: f.additions,
        deletions: f.deletions,
        patch: f.patch,
    }
}

const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const PATH_SEGMENT: &percent_encoding::AsciiSet = QUERY;

/// A query value, percent-encoded.
fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY).to_string()
}

/// A repository file path, each segment percent-encoded.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| percent_encoding::utf8_percent_encode(segment, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Issue numbers a PR body closes, in order: a closing keyword (close, closes, closed, fix,
/// fixes, fixed, resolve, resolves, resolved; any case; optional colon) followed by `#N`,
/// `owner/name#N` or an issue URL of the same repository.
pub fn closing_references(body: &str, repo: &str) -> Vec<u64> {
    const KEYWORDS: &[&str] = &[
        "closes", "closed", "close", "fixes", "fixed", "fix", "resolves", "resolved", "resolve",
    ];
    let lower = body.to_lowercase();
    let repo = repo.to_lowercase();
    let bytes = lower.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let keyword = at_word_start
            .then(|| KEYWORDS.iter().find(|k| lower[i..].starts_with(*k)))
            .flatten();
        let Some(keyword) = keyword else {
            i += 1;
            continue;
        };
        let mut j = i + keyword.len();
        i = j;
        if bytes.get(j) == Some(&b':') {
            j += 1;
        }
        let spaces = bytes[j..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        if spaces == 0 {
            continue;
        }
        j += spaces;
        let rest = &lower[j..];
        let number_after = |s: &str| -> Option<u64> {
            let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
            let after = s[digits.len()..].chars().next();
            if digits.is_empty() || after.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                return None;
            }
            digits.parse().ok()
        };
        let n = if let Some(s) = rest.strip_prefix('#') {
            number_after(s)
        } else if let Some(s) = rest
            .strip_prefix(&format!("{repo}#"))
            .or_else(|| rest.strip_prefix(&format!("https://github.com/{repo}/issues/")))
        {
            number_after(s)
        } else {
            None
        };
        if let Some(n) = n {
            if !found.contains(&n) {
                found.push(n);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_references_follow_github_keywords() {
        let repo = "acme/widgets";
        assert_eq!(closing_references("Fixes #12", repo), vec![12]);
        assert_eq!(closing_references("fixes: #3, closes #4", repo), vec![3, 4]);
        assert_eq!(closing_references("RESOLVED acme/widgets#7", repo), vec![7]);
        assert_eq!(
            closing_references("Resolves Acme/Widgets#7 and fix #7", repo),
            vec![7]
        );
        assert_eq!(
            closing_references("closes https://github.com/acme/widgets/issues/9.", repo),
            vec![9]
        );
        assert!(closing_references("closes other/repo#5", repo).is_empty());
        assert!(closing_references("prefixes #5 and suffix#6", repo).is_empty());
        assert!(closing_references("fixes #12abc, see #4", repo).is_empty());
        assert!(closing_references("Fixes#12", repo).is_empty());
        assert!(closing_references("", repo).is_empty());
    }

    #[test]
    fn an_https_client_builds_offline() {
        // rustls with ring and the bundled webpki roots: nothing to load from the system.
        let params = GithubParams::default();
        Http::new(&params, &ApiBase::parse(&params.base_url).unwrap()).unwrap();
    }

    #[test]
    fn next_link_reads_rel_next() {
        let link = r#"<https://api.github.com/repositories/1/pulls?page=2>; rel="next", <https://api.github.com/repositories/1/pulls?page=5>; rel="last""#;
        assert_eq!(
            next_link(link),
            Some("https://api.github.com/repositories/1/pulls?page=2")
        );
        let last = r#"<https://x/a?page=1>; rel="prev", <https://x/a?page=1>; rel="first""#;
        assert_eq!(next_link(last), None);
    }

    #[test]
    fn links_are_read_relative_to_the_api_root() {
        let base = ApiBase::parse("https://ghe.example.com/api/v3/").unwrap();
        assert_eq!(
            base.url("/repos/a/b"),
            "https://ghe.example.com/api/v3/repos/a/b"
        );
        assert_eq!(
            base.relative("https://mirror:8080/api/v3/repos/a/b/pulls?page=2")
                .unwrap(),
            "/repos/a/b/pulls?page=2"
        );
        let gh = ApiBase::parse("https://api.github.com").unwrap();
        assert_eq!(
            gh.relative("http://127.0.0.1:9/x?page=2").unwrap(),
            "/x?page=2"
        );
    }

    #[test]
    fn request_keys_name_no_host_and_no_token() {
        let key = String::from_utf8(request_key("github.com", "e1", "/repos/a/b")).unwrap();
        assert_eq!(
            key,
            r#"{"kind":"github-rest/1","site":"github.com","epoch":"e1","method":"GET","path":"/repos/a/b","accept":"application/vnd.github+json"}"#
        );
    }

    #[test]
    fn paths_and_queries_are_percent_encoded() {
        assert_eq!(encode_path("docs/a b/c#d.md"), "docs/a%20b/c%23d.md");
        assert_eq!(
            encode_query("stars:>=5 language:C++"),
            "stars%3A%3E%3D5%20language%3AC%2B%2B"
        );
    }

    #[test]
    fn params_validate() {
        let mut p = GithubParams {
            repos: vec!["acme/widgets".into()],
            ..GithubParams::default()
        };
        p.validate().unwrap();
        p.repos = vec!["acme".into()];
        assert!(p.validate().is_err());
        p.repos = Vec::new();
        assert!(p.validate().is_err());
        p.search = Some(RepoSearch::default());
        p.validate().unwrap();
        p.per_page = 0;
        assert!(p.validate().is_err());
        let parsed: GithubParams =
            serde_json::from_str(r#"{"repos":["a/b"],"search":{"language":"Python"}}"#).unwrap();
        assert_eq!(parsed.search.unwrap().min_stars, 5);
        assert!(serde_json::from_str::<GithubParams>(r#"{"token":"x"}"#).is_err());
    }

    #[test]
    fn rate_limits_and_server_errors_are_not_recorded() {
        let params = GithubParams::default();
        let answer = |status: u16, headers: &[(&str, &str)], body: &str| {
            classify(
                Recorded {
                    status,
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    body: body.into(),
                },
                None,
                &params,
            )
        };
        assert!(answer(200, &[], "{}").is_ok());
        assert!(answer(404, &[], r#"{"message":"Not Found"}"#).is_ok());
        assert!(answer(451, &[], "{}").is_ok());
        assert!(answer(422, &[], r#"{"message":"No commit found for SHA: 1"}"#).is_ok());
        assert!(matches!(
            answer(200, &[], "{"),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            answer(502, &[], ""),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            answer(403, &[("retry-after", "3")], "{}"),
            Err(Failure::RateLimit { wait, .. }) if wait == Duration::from_secs(3)
        ));
        assert!(matches!(
            answer(429, &[], "{}"),
            Err(Failure::RateLimit { wait, .. }) if wait == Duration::from_secs(60)
        ));
        assert!(matches!(
            answer(
                403,
                &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")],
                "{}"
            ),
            Err(Failure::RateLimit { .. })
        ));
        assert!(matches!(
            answer(
                403,
                &[],
                r#"{"message":"Resource not accessible by integration"}"#
            ),
            Err(Failure::Fatal(_))
        ));
        assert!(matches!(answer(401, &[], "{}"), Err(Failure::Fatal(_))));
        assert!(matches!(answer(304, &[], ""), Err(Failure::Fatal(_))));
    }
}
