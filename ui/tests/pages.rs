//! The server in process (the router, no socket): what the pages answer for a small ledger
//! made through the library, and what they refuse.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ledger::event::*;
use ledger::{Hash, Ledger, Wait};
use std::sync::Arc;
use tower::ServiceExt;
use ui::security::Hosts;
use ui::state::Shared;

const HOSTILE: &str = r#"<script>alert(1)</script><img src=x onerror="alert(2)">"#;

fn env() -> Environment {
    Environment {
        host: "h".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        threads: 2,
        device: "cpu".into(),
        cpu_features: vec![],
        ledger_version: "0.2.0".into(),
    }
}

/// Two runs of one step each; the second records a metric the first lacks. The step's output
/// is a JSONL of PR-like records with a hostile body.
fn fixture(dir: &std::path::Path) -> (Hash, Hash, Hash) {
    Ledger::init(dir).unwrap();
    let mut l = Ledger::open_writer(dir, Wait::NoWait).unwrap();
    let record = serde_json::json!({"number": 1, "title": HOSTILE, "body": HOSTILE, "commits": []});
    let (out, size) = l
        .store()
        .put_bytes(format!("{record}\n").as_bytes())
        .unwrap();
    let (config, _) = l.store().put_bytes(b"[experiment]\n").unwrap();
    let mut runs = Vec::new();
    for (i, metrics) in [vec![], vec![("score".to_string(), 0.5)]]
        .into_iter()
        .enumerate()
    {
        let run_id = Hash::of(&[i as u8]);
        runs.push(run_id);
        l.append(vec![
            EventKind::RunStarted(RunStarted {
                run_id,
                experiment: format!("exp-{i}"),
                config,
                config_path: "c.toml".into(),
            }),
            EventKind::StageRun(StageRun {
                run_id,
                node: "prs".into(),
                stage: "collect".into(),
                version: 1,
                action_key: Hash::of(b"action"),
                config: format!("{{\"n\":{i}}}"),
                seed: 7,
                inputs: vec![],
                outputs: vec![Output {
                    name: "prs".into(),
                    hash: out,
                    size,
                    media_type: "application/x-ndjson".into(),
                }],
                metrics,
                env: env(),
                status: if i == 0 {
                    RunStatus::Succeeded
                } else {
                    RunStatus::Cached { source_seq: 2 }
                },
                started_ms: 1000,
                ended_ms: 2000,
            }),
        ])
        .unwrap();
    }
    (runs[0], runs[1], out)
}

struct Server {
    _tmp: tempfile::TempDir,
    app: axum::Router,
    rt: tokio::runtime::Runtime,
}

impl Server {
    fn new() -> (Server, Hash, Hash, Hash) {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, out) = fixture(tmp.path());
        let shared: Arc<Shared> = Shared::open(tmp.path(), &[]).unwrap();
        let app = ui::router(shared, Hosts::for_port(80, None));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        (Server { _tmp: tmp, app, rt }, a, b, out)
    }

    fn get(&self, path: &str, host: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let req = Request::get(path)
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        self.send(req)
    }

    fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        self.rt.block_on(async {
            let r = self.app.clone().oneshot(req).await.unwrap();
            let (parts, body) = r.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            (
                parts.status,
                parts.headers,
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
    }
}

const HOST: &str = "127.0.0.1:80";

#[test]
fn pages_escape_hostile_records_and_carry_a_strict_policy() {
    let (s, _, _, out) = Server::new();
    let (status, headers, body) = s.get(&format!("/artifact/{out}"), HOST);
    assert_eq!(status, StatusCode::OK, "{body}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(
        !body.contains("<script>alert") && !body.contains("<img src=x"),
        "{body}"
    );
    // The page's only script is the file from the binary.
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(body.contains(r#"<script src="/static/app.js" defer></script>"#));
    let (status, headers, js) = s.get("/static/app.js", HOST);
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.contains("pollHead"));
}

#[test]
fn the_runs_page_filters_and_sorts_runs_without_a_metric_last() {
    let (s, a, b, _) = Server::new();
    let rows = |body: &str| -> Vec<String> {
        body.split("data-run=\"")
            .skip(1)
            .map(|r| r.split('"').next().unwrap().to_string())
            .collect()
    };
    let (_, _, body) = s.get("/", HOST);
    assert_eq!(rows(&body), [b.to_hex(), a.to_hex()], "newest first");
    for dir in ["asc", "desc"] {
        let (_, _, body) = s.get(
            &format!("/?metric=prs.score&sort=metric:prs.score&dir={dir}"),
            HOST,
        );
        assert_eq!(rows(&body), [b.to_hex(), a.to_hex()], "{dir}");
        assert!(
            body.contains(r#"data-metric="prs.score"><span title="0.5">0.5000</span>"#),
            "{body}"
        );
    }
    let (_, _, body) = s.get("/?q=exp-0", HOST);
    assert_eq!(rows(&body), [a.to_hex()]);
    let (_, _, body) = s.get("/?status=failed", HOST);
    assert!(rows(&body).is_empty());
}

#[test]
fn requests_name_nothing_but_resolved_hashes_and_this_host() {
    let (s, a, b, _) = Server::new();
    for path in [
        "/artifact/..%2F..%2Fetc%2Fpasswd",
        "/artifact/%2Fetc%2Fpasswd",
        "/blob/..%2Fevents.log/svg",
        "/run/events.log",
    ] {
        let (status, _, body) = s.get(path, HOST);
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{path}: {status} {body}"
        );
        assert!(!body.contains("root:"), "{path}");
    }
    let (status, _, _) = s.get("/artifact/0123", HOST);
    assert_eq!(status, StatusCode::BAD_REQUEST, "too short a prefix");
    // A DNS name rebound to 127.0.0.1 is not this server.
    let (status, _, _) = s.get("/", "evil.example");
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    // A cross-site POST is refused; a same-origin one starts verify.
    let post = |origin: &str| {
        Request::post("/audit/verify")
            .header("host", HOST)
            .header("origin", origin)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(s.send(post("http://evil.example")).0, StatusCode::FORBIDDEN);
    assert_eq!(s.send(post("http://127.0.0.1:80")).0, StatusCode::SEE_OTHER);
    // A run's page lists its step; the compare page aligns the two runs.
    let (status, _, body) = s.get(&format!("/run/{}", &a.to_hex()[..12]), HOST);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#"data-node="prs""#));
    let (status, _, body) = s.get(&format!("/compare?run={a}&run={b}"), HOST);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#"data-key="prs.n""#), "{body}");
}
