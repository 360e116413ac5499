//! `ledger ui` in a real headless browser (Debian's `chromium` driven by `chromedriver` over
//! WebDriver): a ledger made by a small pipeline — a git repository whose PR body is hostile
//! HTML → collect → filter → reconstruct → tokenize, then SFT of a tiny model, twice with
//! different learning rates — is opened on the runs page, and the test clicks through run →
//! artifact → lineage → compare, reading what each page shows and checking it against
//! `ledger show --json` / `ledger lineage --format json`. The PR body's `<script>` and
//! `<img onerror>` must show as text and run nothing. New events of a `ledger run` started
//! while the page is open must appear without a reload. A screenshot of every page is kept in
//! `target/tmp/ui-screenshots/`.
//!
//! The browser is installed by `scripts/setup.sh`. Without one the test says so and passes,
//! unless `LEDGER_REQUIRE_BROWSER=1` (set by `scripts/test.sh`), when a missing browser fails.

mod common;

use common::{git, Ledger};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOSTILE: &str = r#"Hostile body: <script>window.__pwned = 1; document.title = "pwned";</script> and <img src=x onerror="window.__pwned = 2"> end."#;

fn find_on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// chromium and chromedriver, or `None` (after saying why) when the test is to be skipped.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let found = (
        find_on_path(&["chromium", "chromium-browser"]),
        find_on_path(&["chromedriver"]),
    );
    match found {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            let msg = "no chromium + chromedriver on PATH (`scripts/setup.sh` installs Debian's `chromium` and `chromium-driver`)";
            if std::env::var_os("LEDGER_REQUIRE_BROWSER").is_some_and(|v| v == "1") {
                panic!("{msg}; LEDGER_REQUIRE_BROWSER=1 makes that a failure");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

/// A child process killed when dropped; with `group`, its whole process group (chromedriver
/// and the browser it started, which would outlive a failed test otherwise).
struct Guard {
    child: Child,
    group: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.group {
            // SAFETY: killpg(2) on the process group this test created for the child (its
            // pid is the group id: `process_group(0)`); the child is not reaped yet.
            unsafe {
                libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `ledger ui --port 0`, and the address it printed.
fn start_ui(l: &Ledger, ablation: &Path) -> (Guard, String) {
    let mut child = l
        .command([
            "ui".as_ref(),
            "--port".as_ref(),
            "0".as_ref(),
            "--ablation".as_ref(),
            ablation.as_os_str(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ledger ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .trim_end_matches('/')
        .to_string();
    (
        Guard {
            child,
            group: false,
        },
        base,
    )
}

fn start_driver(driver: &Path) -> (Guard, String) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (
        Guard { child, group: true },
        format!("http://127.0.0.1:{port}"),
    )
}

/// A plain HTTP/1.1 GET: (status line and headers, body).
fn http_get(base: &str, path: &str, host: Option<&str>) -> (String, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host.unwrap_or(addr)
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

/// The hostile-PR repository: a merged PR, and a squash-merged one whose body is hostile.
fn repo(l: &Ledger) {
    let repo = l.root.join("proj");
    std::fs::create_dir_all(&repo).unwrap();
    let t0 = "2024-03-01T10:00:00Z";
    git(&repo, t0, &["init", "-q", "-b", "main"]);
    git(&repo, t0, &["config", "user.name", "Ada"]);
    git(&repo, t0, &["config", "user.email", "ada@example.com"]);
    l.write("proj/calc/ops.py", "def add(a, b):\n    return a - b\n");
    git(&repo, t0, &["add", "-A"]);
    git(&repo, t0, &["commit", "-q", "-m", "Initial import"]);
    git(&repo, t0, &["checkout", "-q", "-b", "fix"]);
    l.write("proj/calc/ops.py", "def add(a, b):\n    return a + b\n");
    git(
        &repo,
        "2024-03-02T10:00:00Z",
        &["commit", "-q", "-am", "Fix add"],
    );
    git(&repo, "2024-03-03T10:00:00Z", &["checkout", "-q", "main"]);
    git(
        &repo,
        "2024-03-03T10:00:00Z",
        &[
            "merge",
            "-q",
            "--no-ff",
            "fix",
            "-m",
            "Merge pull request #7 from ada/fix\n\nMake add add",
        ],
    );
    l.write(
        "proj/calc/ops.py",
        "def add(a, b):\n    return a + b\n\n\ndef neg(a):\n    return -a\n",
    );
    let message = format!("Add neg (#8)\n\n{HOSTILE}");
    git(
        &repo,
        "2024-03-04T10:00:00Z",
        &["commit", "-q", "-am", &message],
    );
}

/// SFT data: conversations with a tool call each (one tool answer is hostile too).
fn trajectories() -> String {
    (0..6)
        .map(|i| {
            json!({"id": format!("t{i}"), "resolved": true, "messages": [
                {"role": "system", "content": "You are a careful engineer."},
                {"role": "user", "content": format!("Fix f{i} so the tests pass.")},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": {"command": format!("cat f{i}.py")}}}]},
                {"role": "tool", "tool_call_id": "c1", "content": if i == 0 { HOSTILE.to_string() } else { format!("def f{i}(x):\n    return x") }},
                {"role": "assistant", "content": format!("return x * {i}")}
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

fn config(trajectories: &str, lr: &str) -> String {
    format!(
        r#"[experiment]
name = "ui-lr-{lr}"
seed = 3

[[stage]]
id = "prs"
uses = "collect"
source = "git"
git = {{ repo = "proj", name = "ada/calc", description = "A calculator" }}

[[stage]]
id = "python"
uses = "filter"
inputs = {{ prs = "prs.prs" }}

[[stage]]
id = "samples"
uses = "reconstruct"
inputs = {{ prs = "python.prs" }}
format = "python"

[[stage]]
id = "tokens"
uses = "tokenize"
inputs = {{ samples = "samples.samples" }}
vocab_size = 300
seq_len = 64

[[stage]]
id = "sft"
uses = "sft"
inputs = {{ trajectories = "@{trajectories}", tokenizer = "tokens.tokenizer" }}
model = {{ hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 1 }}
seq_len = 1024
epochs = 2
micro_batch = 2
global_batch = 2
peak_lr = {lr}
"#
    )
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
        .text()
        .await
        .unwrap()
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

/// A screenshot, `css` scrolled into view first.
async fn shot_at(c: &Client, dir: &Path, name: &str, css: &str) {
    c.execute(
        "document.querySelector(arguments[0]).scrollIntoView({block: 'start'}); window.scrollBy(0, -60);",
        vec![json!(css)],
    )
    .await
    .unwrap();
    shot(c, dir, name).await;
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` to click: {e}"))
        .click()
        .await
        .unwrap();
}

/// Waits until `path` is the page shown (a click navigated).
async fn wait_path(c: &Client, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = c.current_url().await.unwrap();
        if url.path().starts_with(prefix) {
            return;
        }
        assert!(Instant::now() < deadline, "still at {url}, not {prefix}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nothing hostile ran: no flag, the title intact, no image or script from the records.
async fn assert_nothing_ran(c: &Client) {
    let ran = c
        .execute(
            "return [typeof window.__pwned, document.title, document.querySelectorAll('#content img, #content script, main script').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ran[0], "undefined", "a hostile script ran: {ran}");
    assert_ne!(ran[1], "pwned", "a hostile script ran: {ran}");
    assert_eq!(ran[2], 0, "hostile markup became elements: {ran}");
}

fn stage_events(show: &Value) -> Vec<&Value> {
    show["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "stage")
        .collect()
}

#[test]
fn the_ui_in_a_real_browser() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let l = Ledger::new();
    repo(&l);
    l.write("sft.jsonl", trajectories());
    let added = l.ok(["add", "sft.jsonl"]);
    let traj = common::added_hashes(&added.stdout)[0].0.clone();
    let fast = l.run_config(&l.config("fast.toml", &config(&traj, "0.003")));
    let slow = l.run_config(&l.config("slow.toml", &config(&traj, "0.001")));
    let (run_a, run_b) = (
        fast["run_id"].as_str().unwrap().to_string(),
        slow["run_id"].as_str().unwrap().to_string(),
    );
    let show_a = l.ok(["show", "--json", &run_a]).json();
    let prs = common::step_output(&fast, "prs", "prs");
    let show_prs = l.ok(["show", "--json", &prs]).json();

    let ablation = l.write(
        "lr.toml",
        "[ablation]\nname = \"learning rate\"\n\n[[arm]]\nname = \"fast\"\nconfig = \"fast.toml\"\n\n\
         [[arm]]\nname = \"slow\"\nconfig = \"slow.toml\"\n\n\
         [[metric]]\nlabel = \"SFT held-out loss\"\nnode = \"sft\"\nname = \"heldout_loss.after\"\n",
    );
    let (_ui, base) = start_ui(&l, &ablation);
    // The security headers, and the Host check, on a plain request.
    let (head, _) = http_get(&base, "/", None);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let (rebound, _) = http_get(&base, "/", Some("attacker.example:80"));
    assert!(rebound.starts_with("http/1.1 421"), "{rebound}");

    let (_driver, driver_url) = start_driver(&driver);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }
        });
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&driver_url)
            .await
            .expect("a WebDriver session with headless chromium");

        // Runs: both runs, their step counts as the log says.
        c.goto(&format!("{base}/")).await.unwrap();
        assert_eq!(count(&c, "#runs tbody tr").await, 2);
        let row = format!("#runs tr[data-run='{run_a}']");
        let steps = stage_events(&show_a);
        let executed = steps.iter().filter(|e| e["detail"]["status"] == "succeeded").count();
        let cached = steps.len() - executed;
        assert_eq!(text(&c, &format!("{row} td.experiment")).await, "ui-lr-0.003");
        assert_eq!(text(&c, &format!("{row} td.executed")).await, executed.to_string());
        assert_eq!(text(&c, &format!("{row} td.cached")).await, cached.to_string());
        let row_b = format!("#runs tr[data-run='{run_b}']");
        assert_eq!(text(&c, &format!("{row_b} td.cached")).await, "4", "the D_ctx steps of the second run are cached");
        shot(&c, &shots, "1-runs").await;

        // Run: every step, in order, with the metrics `show --json` gives.
        click(&c, &format!("{row} a.hash")).await;
        wait_path(&c, "/run/").await;
        assert_eq!(text(&c, "#run-id").await, run_a);
        let nodes: Vec<&str> = steps.iter().map(|e| e["detail"]["node"].as_str().unwrap()).collect();
        let mut shown = Vec::new();
        for tr in c.find_all(Locator::Css("#steps tbody tr")).await.unwrap() {
            shown.push(tr.attr("data-node").await.unwrap().unwrap());
        }
        assert_eq!(shown, nodes);
        let collect = steps.iter().find(|e| e["detail"]["node"] == "prs").unwrap();
        let seq = collect["seq"].as_u64().unwrap();
        for (name, v) in collect["detail"]["metrics"].as_object().unwrap() {
            let cell = text(&c, &format!("#step-{seq} div[data-metric='{name}'] span")).await;
            assert_eq!(cell.parse::<f64>().unwrap(), v.as_f64().unwrap(), "metric {name}");
        }
        shot(&c, &shots, "2-run").await;

        // Artifact: the PR records, as `show --json` describes them; the hostile body is text.
        click(&c, &format!("#step-{seq} a.hash[href='/artifact/{prs}']")).await;
        wait_path(&c, "/artifact/").await;
        let info = &show_prs["artifact"];
        assert_eq!(text(&c, "#hash").await, prs);
        let size = c.find(Locator::Css("#size")).await.unwrap().attr("data-bytes").await.unwrap();
        assert_eq!(size.as_deref(), Some(info["size"].to_string().as_str()));
        assert_eq!(text(&c, "#media-type").await, info["media_type"].as_str().unwrap());
        assert_eq!(text(&c, "#output-name").await, info["provenance"]["output"].as_str().unwrap());
        assert_eq!(count(&c, "article[data-shape='pullrequest']").await, 2);
        let bodies = c.find_all(Locator::Css(".pr-body")).await.unwrap();
        let mut hostile_shown = false;
        for b in bodies {
            hostile_shown |= b.text().await.unwrap().contains(HOSTILE);
        }
        assert!(hostile_shown, "the hostile PR body is not shown as text");
        assert_nothing_ran(&c).await;
        shot(&c, &shots, "3-artifact").await;
        shot_at(&c, &shots, "3-artifact-hostile-pr", "article[data-shape='pullrequest']:last-child").await;

        // Lineage: the graph has a node for every artifact and step of `ledger lineage`.
        click(&c, "#lineage-link").await;
        wait_path(&c, "/lineage/").await;
        let graph = l.ok(["lineage", &prs, "--format", "json"]).json();
        let expected = graph["artifacts"].as_object().unwrap().len() + graph["steps"].as_object().unwrap().len();
        assert_eq!(count(&c, "#lineage-graph a[data-node]").await, expected);
        shot(&c, &shots, "4-lineage").await;
        // Nodes are links: the step node leads to its run.
        click(&c, "#lineage-graph a[data-node^='s'] rect").await;
        wait_path(&c, "/run/").await;

        // Compare: tick both runs on the runs page.
        c.goto(&format!("{base}/")).await.unwrap();
        click(&c, &format!("{row} input.pick")).await;
        click(&c, &format!("{row_b} input.pick")).await;
        click(&c, "#compare-form button[type=submit]").await;
        wait_path(&c, "/compare").await;
        assert_eq!(text(&c, "#divergence .first-divergent").await, "sft");
        let lr = c.find_all(Locator::Css("#config-diff tr[data-key='sft.peak_lr'] td.mono")).await.unwrap();
        let mut cells = Vec::new();
        for td in &lr {
            cells.push(td.text().await.unwrap());
        }
        // The compared runs in the page's order (the first is the baseline).
        let mut order = Vec::new();
        for a in c.find_all(Locator::Css("#compared tbody a.hash")).await.unwrap() {
            order.push(a.attr("title").await.unwrap().unwrap());
        }
        let lr_of = |run: &String| if *run == run_a { "0.003" } else { "0.001" };
        assert_eq!(cells[1..], [lr_of(&order[0]), lr_of(&order[1])], "{cells:?} for {order:?}");
        // The metrics shown are the steps' recorded ones.
        let sft_a = steps.iter().find(|e| e["detail"]["node"] == "sft").unwrap();
        let loss = sft_a["detail"]["metrics"]["heldout_loss.after"].as_f64();
        if let Some(loss) = loss {
            let column = order.iter().position(|r| *r == run_a).unwrap();
            let cells = c.find_all(Locator::Css("#metrics-diff tr[data-metric='sft.heldout_loss.after'] td.num span")).await.unwrap();
            // Cells: the baseline's value, then each other run's value and its delta.
            let title = cells[if column == 0 { 0 } else { 1 }].attr("title").await.unwrap().unwrap();
            assert_eq!(title.parse::<f64>().unwrap(), loss);
        }
        assert!(count(&c, "#curves polyline").await >= 2, "two runs' loss curves overlaid");
        shot(&c, &shots, "5-compare").await;
        shot_at(&c, &shots, "5-compare-curves", "#curves").await;

        // The ablation table: each arm's run and its metric, as recorded.
        c.goto(&format!("{base}/ablations")).await.unwrap();
        click(&c, "main ul a").await;
        wait_path(&c, "/ablation/").await;
        let show_b = l.ok(["show", "--json", &run_b]).json();
        for (arm, show) in [("fast", &show_a), ("slow", &show_b)] {
            let sft = stage_events(show).into_iter().find(|e| e["detail"]["node"] == "sft").unwrap();
            let want = sft["detail"]["metrics"]["heldout_loss.after"].as_f64().unwrap();
            let cell = c
                .find(Locator::Css(&format!("#ablation tr[data-arm='{arm}'] td[data-metric='SFT held-out loss'] span")))
                .await
                .unwrap();
            assert_eq!(cell.attr("title").await.unwrap().unwrap().parse::<f64>().unwrap(), want, "{arm}");
        }
        shot(&c, &shots, "5b-ablation").await;
        click(&c, "#compare-arms").await;
        wait_path(&c, "/compare").await;
        assert_eq!(count(&c, "#compared tbody tr").await, 2);

        // Two checkpoints' lineages: the D_ctx part shared, the SFT steps apart.
        let (model_a, model_b) = (
            common::step_output(&fast, "sft", "model"),
            common::step_output(&slow, "sft", "model"),
        );
        c.goto(&format!("{base}/lineage/{model_a}?with={model_b}")).await.unwrap();
        assert!(count(&c, "#lineage-graph g.node.shared").await >= 5);
        assert!(count(&c, "#lineage-graph g.node.only-a").await >= 2);
        assert!(count(&c, "#lineage-graph g.node.only-b").await >= 2);
        assert!(text(&c, "#divergent").await.contains("peak_lr"));
        shot(&c, &shots, "4b-lineage-diff").await;

        // The SFT data as conversations, with the hostile tool answer as text.
        c.goto(&format!("{base}/artifact/{traj}")).await.unwrap();
        assert_eq!(count(&c, "article[data-shape='trajectory']").await, 6);
        assert!(count(&c, ".msg.tool").await >= 6);
        assert!(text(&c, "article[data-index='0'] .msg.tool").await.contains(HOSTILE));
        assert_nothing_ran(&c).await;
        shot(&c, &shots, "6-trajectories").await;

        // The checkpoint's tensor table.
        let model = common::step_output(&fast, "sft", "model");
        c.goto(&format!("{base}/artifact/{model}")).await.unwrap();
        assert!(text(&c, "#tensors").await.contains("model.embed_tokens.weight"));
        shot(&c, &shots, "7-tensors").await;

        // The training plot (SVG) is shown as an image, which runs no script.
        let plot = common::step_output(&fast, "sft", "plot");
        c.goto(&format!("{base}/artifact/{plot}")).await.unwrap();
        let drawn = c
            .execute(
                "const i = document.querySelector('img.svg-artifact'); return i.complete && i.naturalWidth > 0;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(drawn, true, "the SVG plot did not load as an image");
        let (svg_head, _) = http_get(&base, &format!("/blob/{plot}/svg"), None);
        assert!(svg_head.contains("content-type: image/svg+xml"), "{svg_head}");
        assert!(svg_head.contains("sandbox"), "{svg_head}");

        // Audit: verify on request, to a clean verdict.
        c.goto(&format!("{base}/audit")).await.unwrap();
        click(&c, "#verify-button").await;
        let result = c
            .wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css("#verify-result"))
            .await
            .expect("verify finishes");
        assert!(result.text().await.unwrap().contains("clean"));
        // A replay from an artifact's page: the PR records rebuilt bit for bit.
        c.goto(&format!("{base}/artifact/{prs}")).await.unwrap();
        click(&c, "form[action='/audit/replay'] button").await;
        wait_path(&c, "/audit").await;
        c.wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css(&format!(".replay[data-target='{prs}'] .badge.identical")))
            .await
            .expect("the replay ends bit-identical");
        shot(&c, &shots, "8-audit").await;

        // Live: a run written while the runs page is open appears without a reload (the UI
        // holds no index a writer needs, so the run does not wait for it either).
        c.goto(&format!("{base}/")).await.unwrap();
        let again = l.run_config(&l.root.join("fast.toml"));
        let run_c = again["run_id"].as_str().unwrap().to_string();
        c.wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(&format!("#runs tr[data-run='{run_c}']")))
            .await
            .expect("the new run appears on the open page");
        shot(&c, &shots, "9-runs-live").await;
        c.close().await.unwrap();
    });
    eprintln!("screenshots in {}", shots.display());
}
