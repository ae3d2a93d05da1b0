//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through `chromedriver`
//! by WebDriver) against a local stack over real sockets: signing in, the runs list updating live, a
//! run's terminal as it happens, a follow-up typed in the page reaching the running agent, keys typed
//! into its terminal answering the agent's question, the Interrupt button, a follow-up after the
//! run's end continuing it in the same page, a viewer who can neither steer nor type, another team's
//! run out of reach, the workers page with a warm pool. Screenshots of each page are written to
//! `target/test-artifacts/dashboard/` (or `$OZ_SCREENSHOT_DIR`).
//!
//! Skipped, loudly, when `chromedriver` is not installed, unless `OZ_REQUIRE_BROWSER=1` (CI sets it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use oz_cli::local::LocalStack;
use serde_json::{Value, json};

const OZ: &str = env!("CARGO_BIN_EXE_oz");
const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium under chromedriver, both ended when this is dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

impl Browser {
    /// `None` (after saying so) when there is no browser to drive and none is required.
    async fn start() -> Option<Self> {
        if !on_path(CHROMEDRIVER) || !std::path::Path::new(CHROMIUM).exists() {
            if std::env::var("OZ_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!(
                    "OZ_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed (apt-get install chromium chromium-driver)"
                );
            }
            eprintln!(
                "\n*** SKIPPED: the dashboard browser tests need chromium and chromedriver (apt-get install chromium chromium-driver); set OZ_REQUIRE_BROWSER=1 to fail instead ***\n"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => return Some(Browser { client, _driver: driver, _profile: profile }),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a session: {last:?}");
    }

    async fn screenshot(&self, name: &str) {
        let dir = std::env::var_os("OZ_SCREENSHOT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/dashboard"));
        std::fs::create_dir_all(&dir).unwrap();
        self.client.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Waits (up to a minute) until `script` (a function body) returns something truthy, and
    /// returns it.
    async fn until(&self, what: &str, script: &str) -> Value {
        for _ in 0..600 {
            let got = self.client.execute(script, vec![]).await.unwrap();
            if !matches!(got, Value::Null | Value::Bool(false)) && got != json!("") {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = self.client.execute("return document.body.innerText", vec![]).await.unwrap();
        panic!("{what}: never happened; the page says:\n{}", text.as_str().unwrap_or_default());
    }

    async fn terminal_shows(&self, text: &str) {
        let script = format!(
            "const t = document.getElementById('terminal'); return t && t.textContent.includes({})",
            json!(text)
        );
        self.until(&format!("the terminal shows {text:?}"), &script).await;
    }

    async fn sign_in(&self, base: &str, key: &str) {
        self.client.goto(&format!("{base}/runs")).await.unwrap();
        assert_eq!(self.path().await, "/sign-in", "not signed in: sent to sign in");
        self.client.find(Locator::Css("#api_key")).await.unwrap().send_keys(key).await.unwrap();
        self.client.find(Locator::Css("#sign-in")).await.unwrap().click().await.unwrap();
        self.until("signed in", "return location.pathname === '/runs'").await;
    }

    /// What `fetch` answers in the page for `method path` (with the page's CSRF token).
    async fn fetch_status(&self, method: &str, path: &str, body: Value) -> u64 {
        let script = r#"
            const [method, path, body, done] = arguments;
            const headers = { "content-type": "application/json", "x-csrf-token": document.body.dataset.csrf };
            fetch(path, { method, headers, body: method === "GET" ? undefined : JSON.stringify(body), credentials: "same-origin" })
              .then((r) => done(r.status), (e) => done(String(e)));"#;
        let got = self.client.execute_async(script, vec![json!(method), json!(path), body]).await.unwrap();
        got.as_u64().unwrap_or_else(|| panic!("fetch failed: {got}"))
    }
}

async fn oz(stack: &LocalStack, key: &str, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(OZ)
        .args(args)
        .env("WARP_API_KEY", key)
        .env("OZ_API_BASE_URL", format!("{}/api/v1", stack.server.url()))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "oz {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn environment(stack: &LocalStack, script: &str) -> String {
    let command = serde_json::to_string(&["/bin/sh", "-c", script]).unwrap();
    let env = format!("OZ_HARNESS_COMMAND={command}");
    let args = [
        "environment",
        "create",
        "--name",
        "browser",
        "--env",
        &env,
        "--setup-command",
        "true",
        "--output-format",
        "json",
    ];
    let out = oz(stack, &stack.api_key, &args).await;
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["uid"].as_str().unwrap().to_owned()
}

async fn start_run(stack: &LocalStack, env: &str, prompt: &str) -> String {
    let out =
        oz(stack, &stack.api_key, &["agent", "run-cloud", "-p", prompt, "-e", env, "--host", "local", "--no-follow"])
            .await;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn admin(stack: &LocalStack, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1{path}", stack.server.url()))
        .bearer_auth(&stack.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_runs_live_steers_them_and_keeps_viewers_and_other_teams_out() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stack = oz_cli::local::start_with_runner(dir.path(), "127.0.0.1:0", OZ.into()).await.unwrap();
    let base = stack.server.url();
    let gate = dir.path().join("quick-may-end");

    // Signing in, then the runs list, which follows runs as they are made and end, without reloading.
    browser.sign_in(&base, &stack.api_key).await;
    browser.client.execute("window.__same_page = true", vec![]).await.unwrap();
    let quick =
        environment(&stack, &format!("echo quick; while [ ! -e {} ]; do sleep 0.05; done", gate.display())).await;
    let quick_run = start_run(&stack, &quick, "a quick one").await;
    let listed_as = |run: &str, state: &str| {
        format!(
            "const a = document.querySelector('a.run-link[data-run-id=\"{run}\"]'); \
             return !!a && a.closest('tr').querySelector('.state').textContent === '{state}'"
        )
    };
    browser.until("the new run is listed as running", &listed_as(&quick_run, "INPROGRESS")).await;
    browser.screenshot("runs-list").await;
    std::fs::write(&gate, "").unwrap();
    browser.until("the run is listed as succeeded", &listed_as(&quick_run, "SUCCEEDED")).await;
    assert_eq!(
        browser.client.execute("return window.__same_page === true", vec![]).await.unwrap(),
        json!(true),
        "the list updated in place"
    );

    // A run's page: its terminal as it happens, and a follow-up typed in the page.
    let steered = environment(
        &stack,
        concat!(
            // Continued after its end by a follow-up: says what it was asked, and ends.
            r#"if [ "$OZ_EXECUTION" != 1 ]; then echo "continued: $OZ_PROMPT"; exit 0; fi; "#,
            r#"echo "hello from the agent"; n=0; while ! grep -q . "$OZ_FOLLOWUP_FILE" && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; echo "answer: $(head -n 1 "$OZ_FOLLOWUP_FILE" | sed 's/.*"message":"\([^"]*\)".*/\1/')"; "#,
            // A question on its terminal, answered by keys typed into the page.
            r#"printf 'your name? '; IFS= read -r name < /dev/tty; echo "hi $name"; "#,
            // Waits to be interrupted (SIGINT from the page's button), then ends in colour.
            r#"stop=0; trap 'echo "interrupted!"; stop=1' INT; n=0; while [ $stop = 0 ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; "#,
            r#"printf '\033[1;32mall done\033[0m\n'"#
        ),
    )
    .await;
    let run = start_run(&stack, &steered, "answer what you are told").await;
    browser
        .until("the run is listed", &format!("return !!document.querySelector('a.run-link[data-run-id=\"{run}\"]')"))
        .await;
    browser
        .client
        .find(Locator::Css(&format!("a.run-link[data-run-id=\"{run}\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.until("on the run's page", &format!("return location.pathname === '/runs/{run}'")).await;
    browser.terminal_shows("hello from the agent").await;
    browser.until("the session is live", "return document.getElementById('live').textContent === 'live'").await;
    browser.screenshot("run-live").await;
    browser.client.find(Locator::Css("#followup")).await.unwrap().send_keys("please add tests").await.unwrap();
    browser.client.find(Locator::Css("#send-followup")).await.unwrap().click().await.unwrap();
    browser.terminal_shows("answer: please add tests").await;
    // The agent asks on its terminal; the person clicks the terminal and types the answer.
    browser.terminal_shows("your name?").await;
    let terminal = browser.client.find(Locator::Css("#terminal")).await.unwrap();
    terminal.click().await.unwrap();
    terminal.send_keys("Ada\u{E007}").await.unwrap();
    browser.terminal_shows("hi Ada").await;
    browser.screenshot("run-typed").await;
    browser.until("the Interrupt button is enabled", "return !document.getElementById('interrupt').disabled").await;
    browser.client.find(Locator::Css("#interrupt")).await.unwrap().click().await.unwrap();
    browser.terminal_shows("interrupted!").await;
    let bold = browser
        .until("the agent's colours are drawn", "const b = [...document.querySelectorAll('#terminal span.b')].find((s) => s.textContent.includes('all done')); return b && b.style.color")
        .await;
    assert_eq!(bold, json!("rgb(0, 205, 0)"), "bold green, as the agent printed it");
    browser.until("the run ended", "return document.getElementById('live').textContent === 'ended: SUCCEEDED'").await;
    browser
        .until(
            "the follow-up is on the timeline",
            "return !!document.querySelector('#timeline li[data-kind=followup]')",
        )
        .await;
    browser.screenshot("run-ended").await;
    // A follow-up typed into the ended run's page continues it: the page follows it live again.
    browser.client.find(Locator::Css("#followup")).await.unwrap().send_keys("one more thing").await.unwrap();
    browser.client.find(Locator::Css("#send-followup")).await.unwrap().click().await.unwrap();
    browser.terminal_shows("continued: one more thing").await;
    browser
        .until(
            "the run went back to the queue on the timeline, and ended again",
            "return [...document.querySelectorAll('#timeline li[data-kind=state]')].some((li) => li.textContent.includes('state QUEUED: continued')) \
             && document.getElementById('live').textContent === 'ended: SUCCEEDED'",
        )
        .await;
    browser.screenshot("run-continued").await;
    // Both follow-ups went to this run (no child run was made).
    let list = stack.client().unwrap().runs().list().send().await.unwrap();
    assert_eq!(list.runs.len(), 2, "{:?}", list.runs.iter().map(|r| &r.run_id).collect::<Vec<_>>());

    // A viewer watches but cannot steer: no follow-up box, and the server refuses one anyway. A run
    // that is still going, for the viewer to try typing into.
    let release = dir.path().join("held-may-end");
    let held =
        environment(&stack, &format!("echo held; while [ ! -e {} ]; do sleep 0.05; done", release.display())).await;
    let held_run = start_run(&stack, &held, "held").await;
    let user = admin(&stack, "/admin/users", json!({"name": "vera", "role": "viewer"})).await;
    let viewer_key = admin(&stack, "/admin/keys", json!({"name": "vera's browser", "user_id": user["id"]})).await;
    browser.client.find(Locator::Css("#sign-out")).await.unwrap().click().await.unwrap();
    browser.until("signed out", "return location.pathname === '/sign-in'").await;
    browser.sign_in(&base, viewer_key["key"].as_str().unwrap()).await;
    browser.client.goto(&format!("{base}/runs/{run}")).await.unwrap();
    browser.terminal_shows("answer: please add tests").await;
    browser.until("the viewer is told", "return !!document.getElementById('viewer-note')").await;
    assert!(browser.client.find(Locator::Css("#followup")).await.is_err(), "a viewer has no follow-up box");
    assert!(browser.client.find(Locator::Css("#cancel")).await.is_err(), "nor a cancel button");
    let status = browser
        .fetch_status("POST", &format!("/api/v1/agent/runs/{run}/followups"), json!({"message": "sneaky"}))
        .await;
    assert_eq!(status, 403, "a viewer's follow-up is refused by the server");
    assert_eq!(
        browser.client.execute("return document.getElementById('terminal').tabIndex", vec![]).await.unwrap(),
        json!(-1),
        "a viewer's terminal takes no keys"
    );
    // Keys sent on a live run's session socket anyway (the page's cookie) are refused by the server.
    browser.client.goto(&format!("{base}/runs/{held_run}")).await.unwrap();
    browser.terminal_shows("held").await;
    let refused = browser
        .client
        .execute_async(
            r#"const [run, done] = arguments;
               const ws = new WebSocket("ws://" + location.host + "/api/v1/agent/runs/" + run + "/session?view=cells");
               ws.onopen = () => ws.send(JSON.stringify({ type: "input", data: "sneaky\r" }));
               ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m.type === "refused") { ws.close(); done(m.message); } };
               ws.onclose = () => done("closed without a refusal");"#,
            vec![json!(held_run)],
        )
        .await
        .unwrap();
    assert!(refused.as_str().unwrap().contains("to watch, not to steer"), "{refused}");
    std::fs::write(&release, "").unwrap();
    browser.screenshot("run-viewer").await;

    // Another team's run cannot be reached from this team's sign-in, by page or by API.
    // (The local stack's key is not a server admin's: the other team is made in its database.)
    let db = oz_server::store::sqlite::SqliteStore::open(&stack.data_dir.join("oz.db")).await.unwrap();
    let (_, other_key) = oz_server::bootstrap_team(&db, "other team").await.unwrap();
    let other_run = {
        let r = reqwest::Client::new()
            .post(format!("{base}/api/v1/agent/runs"))
            .bearer_auth(&other_key)
            .json(&json!({"prompt": "theirs"}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        body["run_id"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
    };
    browser.client.goto(&format!("{base}/runs/{other_run}")).await.unwrap();
    browser
        .until(
            "the page says there is no such run",
            "return document.getElementById('notice').textContent.includes('no such run')",
        )
        .await;
    assert_eq!(browser.fetch_status("GET", &format!("/api/v1/agent/runs/{other_run}"), Value::Null).await, 404);
    browser.client.goto(&format!("{base}/runs")).await.unwrap();
    browser.until("the list is drawn", "return document.querySelectorAll('a.run-link').length === 3").await;
    let listed: Value = browser
        .client
        .execute("return [...document.querySelectorAll('a.run-link')].map((a) => a.dataset.runId)", vec![])
        .await
        .unwrap();
    assert!(!listed.to_string().contains(&other_run), "{listed}");

    // The workers page: the worker, its load, and its warm pool filling up for an environment.
    stack
        .warm_pools
        .add(oz_worker::pool::WarmPoolConfig {
            environment: quick.clone(),
            size: 1,
            max_size: None,
            idle_secs: 600,
            refresh_secs: 60,
            max_age_secs: 3600,
            ready_within_secs: 120,
            max_memory_mb: None,
        })
        .unwrap();
    browser.client.goto(&format!("{base}/workers")).await.unwrap();
    browser.until("the worker is listed", "return document.querySelector('#workers td') && document.querySelector('#workers td').textContent === 'local'").await;
    browser
        .until(
            "its warm pool shows a ready sandbox for the environment, by name",
            "const row = document.querySelector('#warm-pools tbody tr'); \
             return !!row && row.children[1].textContent === 'browser' && row.children[2].textContent === '1'",
        )
        .await;
    browser.screenshot("workers").await;

    browser.client.clone().close().await.unwrap();
    stack.stop().await;
}
