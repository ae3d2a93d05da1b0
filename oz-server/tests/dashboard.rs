//! The dashboard over real sockets, as a browser would use it but without one (the browser tests are
//! `oz-cli/tests/dashboard_browser.rs`): signing in and out, the cookie's attributes, the CSRF and
//! origin checks, what a sign-in can reach, and the pages' security headers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use support::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A form body, as a browser posts it.
fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Signs in with `key` and returns the cookie's `name=value` and its whole `Set-Cookie` line.
async fn sign_in(t: &TestServer, key: &str) -> (String, String) {
    let response = browser()
        .post(format!("{}/sign-in", t.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("api_key", key)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    assert_eq!(response.headers()["location"], "/runs");
    let set = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    let pair = set.split(';').next().unwrap().to_owned();
    (pair, set)
}

fn with_cookie(cookie: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("cookie", HeaderValue::from_str(cookie).unwrap());
    h
}

/// The CSRF token the server wrote into a page for this sign-in.
async fn csrf_of(t: &TestServer, cookie: &str) -> String {
    let page = browser().get(format!("{}/runs", t.base())).headers(with_cookie(cookie)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let at = html.find("data-csrf=\"").unwrap() + "data-csrf=\"".len();
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

async fn api_get(t: &TestServer, path: &str, headers: HeaderMap) -> (u16, Value) {
    let r = browser().get(t.url(path)).headers(headers).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn api_post(t: &TestServer, path: &str, headers: HeaderMap, body: Value) -> (u16, Value) {
    let r = browser().post(t.url(path)).headers(headers).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_sign_in_is_an_httponly_strict_cookie_that_acts_as_its_key_and_never_holds_it() {
    let t = TestServer::start().await;
    // Not signed in: every page leads to the sign-in page.
    for page in ["/", "/runs", "/runs/r1", "/workers"] {
        let r = browser().get(format!("{}{page}", t.base())).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/sign-in"), "{page}");
    }
    let form = browser().get(format!("{}/sign-in", t.base())).send().await.unwrap();
    assert_eq!(form.status(), 200);
    let policy = form.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(form.headers()["x-frame-options"], "DENY");

    let (cookie, set) = sign_in(&t, &t.key_a).await;
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    let key_secret = t.key_a.split('.').nth(1).unwrap();
    assert!(!set.contains(key_secret) && !set.contains(&t.key_a), "the cookie is not the key: {set}");

    // The cookie reads what the key reads, and only that team's.
    let run_a = t.create_run(&t.key_a, "w", "hello").await;
    let run_b = t.create_run(&t.key_b, "w", "other team").await;
    let (status, list) = api_get(&t, "/agent/runs", with_cookie(&cookie)).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [run_a.as_str()]);
    assert_eq!(api_get(&t, &format!("/agent/runs/{run_b}"), with_cookie(&cookie)).await.0, 404);
    let page = browser().get(format!("{}/runs/{run_b}", t.base())).headers(with_cookie(&cookie)).send().await.unwrap();
    assert_eq!(page.status(), 404, "another team's run page is not found");
    let page = browser().get(format!("{}/runs/{run_a}", t.base())).headers(with_cookie(&cookie)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("data-run-id=\"{run_a}\"")) && html.contains("data-role=\"admin\""), "{html}");
    assert!(!html.contains(key_secret), "no page holds the key");

    // A bearer key still wins over a cookie (a script that sends both means the key).
    let mut both = with_cookie(&cookie);
    both.insert("authorization", HeaderValue::from_str(&format!("Bearer {}", t.key_b)).unwrap());
    let (_, list_b) = api_get(&t, "/agent/runs", both).await;
    assert_eq!(list_b["runs"][0]["run_id"], run_b.as_str());
}

#[tokio::test]
async fn changes_need_the_pages_csrf_token_and_the_servers_own_origin() {
    let t = TestServer::start().await;
    let run = t.create_run(&t.key_a, "w", "steer me").await;
    let (cookie, _) = sign_in(&t, &t.key_a).await;
    let csrf = csrf_of(&t, &cookie).await;
    let cancel = format!("/agent/runs/{run}/cancel");

    let (status, body) = api_post(&t, &cancel, with_cookie(&cookie), json!({})).await;
    assert_eq!(status, 403, "no CSRF token: {body}");
    assert!(body["detail"].as_str().unwrap().contains("x-csrf-token"), "{body}");
    let mut wrong = with_cookie(&cookie);
    wrong.insert("x-csrf-token", HeaderValue::from_static("not-the-token"));
    assert_eq!(api_post(&t, &cancel, wrong, json!({})).await.0, 403);
    let mut cross_site = with_cookie(&cookie);
    cross_site.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
    cross_site.insert("origin", HeaderValue::from_static("https://evil.example"));
    assert_eq!(api_post(&t, &cancel, cross_site, json!({})).await.0, 403, "another origin");
    assert_eq!(t.state_of(&t.key_a, &run).await, "QUEUED", "nothing was changed by the refused requests");

    let mut good = with_cookie(&cookie);
    good.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
    good.insert("origin", HeaderValue::from_str(&t.base()).unwrap());
    let (status, body) = api_post(&t, &cancel, good, json!({})).await;
    assert_eq!(status, 200, "{body}");

    // Another sign-in's token does not do.
    let (other_cookie, _) = sign_in(&t, &t.key_a).await;
    let run2 = t.create_run(&t.key_a, "w", "again").await;
    let mut mixed = with_cookie(&other_cookie);
    mixed.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
    assert_eq!(api_post(&t, &format!("/agent/runs/{run2}/cancel"), mixed, json!({})).await.0, 403);

    // The session WebSocket from another origin is refused before it opens; from ours it opens.
    let ws_url = t.url(&format!("/agent/runs/{run2}/session?view=cells")).replacen("http", "ws", 1);
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_static("https://evil.example"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a cross-site WebSocket opened: {:?}", other.map(|_| ())),
    }
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    request.headers_mut().insert("origin", HeaderValue::from_str(&t.base()).unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let first =
        tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["type"], "cells");
    assert_eq!(first["lines"].as_array().unwrap().len(), 40);
}

#[tokio::test]
async fn a_sign_in_ends_with_signing_out_and_with_its_key_and_only_api_keys_sign_in() {
    let t = TestServer::start().await;
    let (cookie, _) = sign_in(&t, &t.key_a).await;
    let csrf = csrf_of(&t, &cookie).await;
    // Signing out needs the page's token too (a cross-site form could sign one out otherwise).
    let r = browser()
        .post(format!("{}/sign-out", t.base()))
        .headers(with_cookie(&cookie))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", "x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(api_get(&t, "/agent/runs", with_cookie(&cookie)).await.0, 200);
    let r = browser()
        .post(format!("{}/sign-out", t.base()))
        .headers(with_cookie(&cookie))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/sign-in"));
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(api_get(&t, "/agent/runs", with_cookie(&cookie)).await.0, 401, "the old cookie works nowhere");

    // A revoked key ends its sign-ins at once.
    let (status, made) = t.post("/admin/keys", &t.key_a, json!({"name": "browser"})).await;
    assert_eq!(status, 200, "{made}");
    let (cookie, _) = sign_in(&t, made["key"].as_str().unwrap()).await;
    assert_eq!(api_get(&t, "/agent/runs", with_cookie(&cookie)).await.0, 200);
    let (status, _) = t
        .call(reqwest::Method::DELETE, &format!("/admin/keys/{}", made["item"]["id"].as_str().unwrap()), &t.key_a, None)
        .await;
    assert!(status == 200 || status == 204, "{status}");
    assert_eq!(api_get(&t, "/agent/runs", with_cookie(&cookie)).await.0, 401);
    let page = browser().get(format!("{}/runs", t.base())).headers(with_cookie(&cookie)).send().await.unwrap();
    assert_eq!(page.status(), 303);

    // Worker credentials, workload tokens, garbage and cross-site forms do not sign in, and set no cookie.
    let worker = t.worker_credential(&t.key_a, "w1").await;
    for (key, origin) in [
        (worker.as_str(), None),
        ("ozw_0123456789abcdef.00", None),
        ("nonsense", None),
        (t.key_a.as_str(), Some("https://evil.example")),
    ] {
        let mut request = browser()
            .post(format!("{}/sign-in", t.base()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("api_key", key)]));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.unwrap();
        assert!(r.status().is_client_error(), "{key}: {}", r.status());
        assert!(r.headers().get("set-cookie").is_none(), "{key}");
        let html = r.text().await.unwrap();
        assert!(!html.contains(key) || key == "nonsense", "the page does not echo a credential");
    }
}

#[tokio::test]
async fn a_viewer_signed_in_reads_but_cannot_steer() {
    let t = TestServer::start().await;
    let (_, user) = t.post("/admin/users", &t.key_a, json!({"name": "vera", "role": "viewer"})).await;
    let (_, key) = t.post("/admin/keys", &t.key_a, json!({"name": "vera's", "user_id": user["id"]})).await;
    let run = t.create_run(&t.key_a, "w", "watch only").await;
    let (cookie, _) = sign_in(&t, key["key"].as_str().unwrap()).await;
    let csrf = csrf_of(&t, &cookie).await;
    let page = browser().get(format!("{}/runs/{run}", t.base())).headers(with_cookie(&cookie)).send().await.unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("data-role=\"viewer\"") && html.contains("vera"), "{html}");
    let mut headers = with_cookie(&cookie);
    headers.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
    let (status, body) = api_post(&t, &format!("/agent/runs/{run}/followups"), headers, json!({"message": "hi"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(t.state_of(&t.key_a, &run).await, "QUEUED");
}

#[tokio::test]
async fn the_assets_are_embedded_and_served_with_their_types() {
    let t = TestServer::start().await;
    for (path, kind) in [("/assets/dashboard.js", "text/javascript"), ("/assets/dashboard.css", "text/css")] {
        let r = browser().get(format!("{}{path}", t.base())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind));
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.text().await.unwrap().len() > 1000);
    }
}

#[tokio::test]
async fn over_https_the_cookie_is_host_prefixed_and_a_planted_second_cookie_is_refused() {
    let t = TestServer::start().await;
    // Behind a TLS proxy: the cookie is `__Host-`, `Secure`, and the plain name is not read.
    let response = browser()
        .post(format!("{}/sign-in", t.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-proto", "https, http")
        .body(form(&[("api_key", &t.key_a)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-oz_sign_in=ozs_") && set.contains("Secure") && set.contains("Path=/"), "{set}");
    assert!(!set.contains("Domain"), "{set}");
    let value = set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let https = |cookie: String| {
        let mut h = with_cookie(&cookie);
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h
    };
    assert_eq!(api_get(&t, "/agent/runs", https(format!("__Host-oz_sign_in={value}"))).await.0, 200);
    assert_eq!(
        api_get(&t, "/agent/runs", https(format!("oz_sign_in={value}"))).await.0,
        401,
        "over HTTPS a cookie without the prefix (which any sibling subdomain could set) is not read"
    );

    // Over HTTP, a second sign-in cookie beside the browser's own (set for a parent domain by a
    // sibling site: "sign in as the attacker") makes the request unauthenticated, not someone else's.
    let (mine, _) = sign_in(&t, &t.key_a).await;
    let (theirs, _) = sign_in(&t, &t.key_b).await;
    let (status, body) = api_get(&t, "/agent/runs", with_cookie(&format!("{mine}; {theirs}"))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("more than one"), "{body}");
    let page = browser()
        .get(format!("{}/runs", t.base()))
        .headers(with_cookie(&format!("{theirs}; {mine}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303, "the dashboard's pages ask to sign in again");
}

#[tokio::test]
async fn fetch_metadata_and_the_public_url_decide_what_origin_is_ours() {
    let config = oz_server::ServerConfig { public_url: Some("https://oz.example.com".into()), ..support::config() };
    let t = TestServer::start_with(
        config,
        std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap()),
    )
    .await;
    let run = t.create_run(&t.key_a, "w", "steer me").await;
    let (cookie, _) = sign_in(&t, &t.key_a).await;
    let csrf = csrf_of(&t, &cookie).await;
    let followup = format!("/agent/runs/{run}/followups");
    let headers = |extra: &[(&'static str, &'static str)]| {
        let mut h = with_cookie(&cookie);
        h.insert("x-csrf-token", HeaderValue::from_str(&csrf).unwrap());
        for (name, value) in extra {
            h.insert(*name, HeaderValue::from_static(value));
        }
        h
    };
    for (what, extra) in [
        ("a cross-site fetch", &[("sec-fetch-site", "cross-site")][..]),
        ("a sibling subdomain's fetch", &[("sec-fetch-site", "same-site")]),
        ("another origin", &[("origin", "https://oz.example.com.evil.example")]),
    ] {
        let (status, body) = api_post(&t, &followup, headers(extra), json!({"message": "no"})).await;
        assert_eq!(status, 403, "{what}: {body}");
    }
    // Our Host under the scheme we are served by is ours; under another scheme it is not (an http
    // page on this host is not one of our https pages).
    let host = t.base().trim_start_matches("http://").to_owned();
    for (scheme, want) in [("http", 403), ("https", 200)] {
        let mut h = headers(&[]);
        h.insert("origin", HeaderValue::from_str(&format!("{scheme}://{host}")).unwrap());
        let (status, body) = api_post(&t, &followup, h, json!({"message": scheme})).await;
        assert_eq!(status, want, "origin {scheme}://{host}: {body}");
    }
    // Behind a proxy that rewrites Host, the public URL's origin is ours.
    let ours = [("origin", "https://oz.example.com"), ("sec-fetch-site", "same-origin")];
    let (status, body) = api_post(&t, &followup, headers(&ours), json!({"message": "yes"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        t.followups_of(&t.key_a, &run).await,
        ["https", "yes"],
        "only the follow-ups from our own origin were recorded"
    );
}

#[tokio::test]
async fn signing_out_ends_open_streams_and_sessions_within_the_recheck() {
    let config =
        oz_server::ServerConfig { credential_recheck: std::time::Duration::from_millis(200), ..support::config() };
    let t = TestServer::start_with(
        config,
        std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap()),
    )
    .await;
    let run = t.create_run(&t.key_a, "w", "a long one").await;
    let (cookie, _) = sign_in(&t, &t.key_a).await;
    let csrf = csrf_of(&t, &cookie).await;
    let ws_url = t.url(&format!("/agent/runs/{run}/session?view=cells")).replacen("http", "ws", 1);
    let mut request = ws_url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let events = browser().get(t.url(&format!("/agent/runs/{run}/events"))).headers(with_cookie(&cookie)).send().await;
    let mut events = events.unwrap();
    assert_eq!(events.status(), 200);
    // Both stay open while the sign-in holds (well past a recheck)...
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = browser()
        .post(format!("{}/sign-out", t.base()))
        .headers(with_cookie(&cookie))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // ...and end soon after it is ended: the WebSocket with a policy close that says why.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(message) = socket.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) = message {
                return Some((u16::from(frame.code), frame.reason.to_string()));
            }
        }
        None
    })
    .await
    .expect("the session closes");
    let (code, reason) = closed.expect("a close frame");
    assert_eq!(code, 1008);
    assert!(reason.contains("sign-in ended"), "{reason}");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream ends");
    assert_eq!(t.state_of(&t.key_a, &run).await, "QUEUED", "the run itself goes on");
}

#[tokio::test]
async fn a_runs_page_offers_steering_only_to_those_its_sharing_lets_steer() {
    let t = TestServer::start().await;
    let (_, bob) = t.post("/admin/users", &t.key_a, json!({"name": "bob", "role": "member"})).await;
    let (_, bob_key) = t.post("/admin/keys", &t.key_a, json!({"name": "bob's", "user_id": bob["id"]})).await;
    let create = |sharing: Value| {
        t.post(
            "/agent/runs",
            &t.key_a,
            json!({"prompt": "p", "config": {"worker_host": "w", "session_sharing": sharing}}),
        )
    };
    let (_, private) = create(json!({"share": ["self"]})).await;
    let (_, watched) = create(json!({"share": ["team:view"]})).await;
    let (_, item) = t.get(&format!("/agent/runs/{}", private["run_id"].as_str().unwrap()), &t.key_a).await;
    let (cookie, _) = sign_in(&t, bob_key["key"].as_str().unwrap()).await;
    let page = |path: String| browser().get(format!("{}{path}", t.base())).headers(with_cookie(&cookie)).send();
    let r = page(format!("/runs/{}", watched["run_id"].as_str().unwrap())).await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("data-role=\"member\" data-access=\"view\""),
        "a member watching a run shared to view: {html}"
    );
    let r = page(format!("/runs/{}", private["run_id"].as_str().unwrap())).await.unwrap();
    assert_eq!(r.status(), 404, "another member's private run");
    let r = page(format!("/sessions/{}", item["session_id"].as_str().unwrap())).await.unwrap();
    assert_eq!(r.status(), 404, "its session link leads nowhere for bob");

    // The link followed before signing in comes back to the run after it.
    let r =
        browser().get(format!("{}/sessions/{}", t.base(), item["session_id"].as_str().unwrap())).send().await.unwrap();
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(to, format!("/sign-in?next=/sessions/{}", item["session_id"].as_str().unwrap()));
    let r = browser()
        .post(format!("{}/sign-in", t.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("api_key", &t.key_a), ("next", &format!("/sessions/{}", item["session_id"].as_str().unwrap()))]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let next = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(next, format!("/sessions/{}", item["session_id"].as_str().unwrap()));
    let admin_cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let r = browser().get(format!("{}{next}", t.base())).headers(with_cookie(&admin_cookie)).send().await.unwrap();
    assert_eq!(r.headers()["location"].to_str().unwrap(), format!("/runs/{}", private["run_id"].as_str().unwrap()));
    // Never to another site.
    let r = browser()
        .post(format!("{}/sign-in", t.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("api_key", &t.key_a), ("next", "//evil.example/runs/x")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/runs");
}
