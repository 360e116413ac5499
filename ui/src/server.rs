//! The HTTP server: binding (127.0.0.1 unless told otherwise), the routes, and the runtime.
//! Every route only reads; the two POSTs start audit jobs that only read.

use crate::pages;
use crate::security::{self, Hosts};
use crate::state::Shared;
use crate::web::{self, error_page, Page, PageError, Query};
use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Options {
    pub dir: PathBuf,
    /// 0: any free port.
    pub port: u16,
    /// Another address than 127.0.0.1 (the flag `--bind`; warned about).
    pub bind: Option<IpAddr>,
    /// Ablation files whose tables the Ablations page shows.
    pub ablations: Vec<PathBuf>,
}

type S = State<Arc<Shared>>;

pub fn router(shared: Arc<Shared>, hosts: Hosts) -> Router {
    Router::new()
        .route("/", get(runs))
        .route("/run/{id}", get(run))
        .route("/artifact/{id}", get(artifact))
        .route("/blob/{id}/svg", get(svg))
        .route("/lineage/{id}", get(lineage))
        .route("/compare", get(compare))
        .route("/ablations", get(ablations))
        .route("/ablation/{index}", get(ablation))
        .route("/audit", get(audit))
        .route("/audit/verify", post(start_verify))
        .route("/audit/replay", post(start_replay))
        .route("/api/head", get(head))
        .route("/api/verify", get(verify_status))
        .route(crate::assets::CSS_PATH, get(crate::assets::css))
        .route(crate::assets::JS_PATH, get(crate::assets::js))
        .fallback(not_found)
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(hosts, security::guard))
}

async fn runs(State(s): S, RawQuery(q): RawQuery) -> Response {
    web::page(s, move |_, v| {
        pages::runs::page(v, &Query::parse(q.as_deref()))
    })
    .await
}

async fn run(State(s): S, UrlPath(id): UrlPath<String>, RawQuery(q): RawQuery) -> Response {
    web::page(s, move |_, v| {
        pages::run::page(v, &id, &Query::parse(q.as_deref()))
    })
    .await
}

async fn artifact(State(s): S, UrlPath(id): UrlPath<String>, RawQuery(q): RawQuery) -> Response {
    web::page(s, move |_, v| {
        pages::artifact::page(v, &id, &Query::parse(q.as_deref()))
    })
    .await
}

async fn lineage(State(s): S, UrlPath(id): UrlPath<String>, RawQuery(q): RawQuery) -> Response {
    web::page(s, move |_, v| {
        pages::lineage::page(v, &id, &Query::parse(q.as_deref()))
    })
    .await
}

async fn compare(State(s): S, RawQuery(q): RawQuery) -> Response {
    web::page(s, move |_, v| {
        pages::compare::page(v, &Query::parse(q.as_deref()))
    })
    .await
}

async fn ablations(State(s): S) -> Response {
    web::page(s, pages::ablation::list).await
}

async fn ablation(State(s): S, UrlPath(index): UrlPath<usize>) -> Response {
    web::page(s, move |sh, v| pages::ablation::page(sh, v, index)).await
}

async fn audit(State(s): S) -> Response {
    web::page(s, pages::audit::page).await
}

async fn svg(State(s): S, UrlPath(id): UrlPath<String>) -> Response {
    let result =
        tokio::task::spawn_blocking(move || s.read(|v| pages::artifact::svg(v, &id))).await;
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error_page(e),
        Err(e) => error_page(PageError::Internal(anyhow::anyhow!("{e}"))),
    }
}

async fn start_verify(State(s): S) -> Response {
    let started = s.audit.start_verify(&s.dir);
    tracing::info!("verify requested (started: {started})");
    see_other("/audit")
}

async fn start_replay(State(s): S, body: String) -> Response {
    let form = Query::parse(Some(&body));
    let what = form.get("hash").unwrap_or("").trim().to_string();
    web::page(s, move |sh, v| {
        let hash = web::resolve(v, &what)?;
        sh.audit
            .start_replay(&v.ledger, hash)
            .map_err(|e| PageError::BadRequest(format!("{e:#}")))?;
        Ok(Page::Redirect("/audit".into()))
    })
    .await
}

async fn head(State(s): S) -> Response {
    let (events, runs) = s.read(|v| (v.ledger.event_count(), v.runs.runs().len()));
    json(&serde_json::json!({ "events": events, "runs": runs }))
}

async fn verify_status(State(s): S) -> Response {
    json(&s.audit.verify_status())
}

async fn not_found() -> Response {
    error_page(PageError::NotFound("no such page".into()))
}

fn json(value: &impl serde::Serialize) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_string(value).unwrap_or_default(),
    )
        .into_response()
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// Opens the ledger, binds, and serves until Ctrl-C. `ready` is told the address once the
/// server accepts connections (the CLI prints it).
pub fn serve(options: Options, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let ip = options.bind.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let listener = std::net::TcpListener::bind((ip, options.port))
        .with_context(|| format!("cannot listen on {ip}:{}", options.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let extra = (!ip.is_loopback()).then(|| addr.to_string());
    if !ip.is_loopback() {
        // Said on stderr whatever the log level: the user should see it.
        eprintln!(
            "warning: serving on {addr}, not on the loopback address: anyone who can reach it can read this ledger"
        );
    }
    let hosts = if ip.is_unspecified() {
        // Bound to every address: any Host may name this server (the user asked for it).
        Hosts(Arc::new(Vec::new()))
    } else {
        Hosts::for_port(addr.port(), extra)
    };
    let shared = Shared::open(&options.dir, &options.ablations)?;
    shared.spawn_follower();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ledger-ui")
        .enable_io()
        .enable_time()
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = router(shared, hosts);
        ready(addr);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("Ctrl-C: stopping the server");
            })
            .await
            .context("serving")
    })
}
