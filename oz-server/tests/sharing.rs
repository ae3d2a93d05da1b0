//! Session sharing over real sockets: a run's `session_sharing` decides, with the caller's role, who
//! sees it and who steers it on every path: the run's item, the list, its events (SSE), its
//! transcript, its session (WebSocket), follow-ups and cancel, the session link's redirect and the
//! dashboard's pages. A run the caller may not see is not found; one it may only watch is forbidden
//! to steer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::TestServer;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A user of team A with `role` and an API key acting as them: (user id, key).
async fn user(t: &TestServer, name: &str, role: &str) -> (String, String) {
    let (status, user) = t.post("/admin/users", &t.key_a, json!({"name": name, "role": role})).await;
    assert_eq!(status, 200, "{user}");
    let (status, key) =
        t.post("/admin/keys", &t.key_a, json!({"name": format!("{name}'s"), "user_id": user["id"]})).await;
    assert_eq!(status, 200, "{key}");
    (user["id"].as_str().unwrap().to_owned(), key["key"].as_str().unwrap().to_owned())
}

async fn shared_run(t: &TestServer, key: &str, sharing: Value) -> Value {
    let (status, created) = t
        .post(
            "/agent/runs",
            key,
            json!({"prompt": "shared", "config": {"worker_host": "w1", "session_sharing": sharing}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let (status, item) = t.get(&format!("/agent/runs/{}", created["run_id"].as_str().unwrap()), key).await;
    assert_eq!(status, 200, "{item}");
    item
}

/// The request that opens the run's session WebSocket with `key`.
fn session_request(
    t: &TestServer,
    run_id: &str,
    key: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = t.url(&format!("/agent/runs/{run_id}/session")).replacen("http", "ws", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// The status of opening the run's session WebSocket with `key` (101 when it opens).
async fn session_status(t: &TestServer, run_id: &str, key: &str) -> u16 {
    match tokio_tungstenite::connect_async(session_request(t, run_id, key)).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

async fn events_status(t: &TestServer, run_id: &str, key: &str) -> u16 {
    let response = t.http.get(t.url(&format!("/agent/runs/{run_id}/events"))).bearer_auth(key).send().await.unwrap();
    response.status().as_u16()
}

/// Every read path's status for `key`: item, transcript, events, session.
async fn reads(t: &TestServer, run_id: &str, key: &str) -> [u16; 4] {
    [
        t.get(&format!("/agent/runs/{run_id}"), key).await.0,
        t.get(&format!("/agent/runs/{run_id}/transcript/content"), key).await.0,
        events_status(t, run_id, key).await,
        session_status(t, run_id, key).await,
    ]
}

async fn listed(t: &TestServer, key: &str) -> Vec<String> {
    let (status, list) = t.get("/agent/runs?limit=100", key).await;
    assert_eq!(status, 200, "{list}");
    list["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap().to_owned()).collect()
}

const CAN_READ: [u16; 4] = [200, 200, 200, 101];
const HIDDEN: [u16; 4] = [404, 404, 404, 404];

#[tokio::test]
async fn shares_decide_who_sees_and_who_steers_on_every_path() {
    let t = TestServer::start().await;
    let (_, ann) = user(&t, "ann", "member").await;
    let (_, bob) = user(&t, "bob", "member").await;
    let (_, cat) = user(&t, "cat@example.com", "member").await;
    let (_, vic) = user(&t, "vic", "viewer").await;

    // Ann's private run (`--share`), one the team may watch and cat may steer, and a plain one.
    let private = shared_run(&t, &ann, json!({"share": ["self"]})).await;
    let watched = shared_run(&t, &ann, json!({"share": ["team:view", "cat@example.com:edit"]})).await;
    let plain = t.create_run(&ann, "w1", "the team's").await;
    let [private, watched] = [&private, &watched].map(|r| r["run_id"].as_str().unwrap().to_owned());

    // Reads: the creator and the team's admin see everything; bob only what is shared with the team.
    assert_eq!(reads(&t, &private, &ann).await, CAN_READ);
    assert_eq!(reads(&t, &private, &t.key_a).await, CAN_READ, "an admin sees the team's runs");
    assert_eq!(reads(&t, &private, &bob).await, HIDDEN, "a private run is not found, on every path");
    assert_eq!(reads(&t, &private, &vic).await, HIDDEN);
    assert_eq!(reads(&t, &private, &t.key_b).await, HIDDEN);
    assert_eq!(reads(&t, &watched, &bob).await, CAN_READ);
    assert_eq!(reads(&t, &watched, &vic).await, CAN_READ);
    assert_eq!(reads(&t, &watched, &t.key_b).await, HIDDEN, "another team sees nothing that is not public");

    // The list holds what each may see, nothing more.
    let mut bobs = listed(&t, &bob).await;
    bobs.sort();
    let mut expected = vec![watched.clone(), plain.clone()];
    expected.sort();
    assert_eq!(bobs, expected);
    assert_eq!(listed(&t, &ann).await.len(), 3);
    assert_eq!(listed(&t, &t.key_a).await.len(), 3);
    assert!(listed(&t, &t.key_b).await.is_empty());

    // Steering: a watcher is forbidden (it knows the run), a stranger finds nothing, cat may.
    let followup = |run: &str| format!("/agent/runs/{run}/followups");
    let (status, body) = t.post(&followup(&watched), &bob, json!({"message": "from bob"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("to watch, not to steer"), "{body}");
    assert_eq!(t.post(&format!("/agent/runs/{watched}/cancel"), &bob, json!({})).await.0, 403);
    assert_eq!(t.post(&format!("/agent/runs/{watched}/interrupt"), &bob, json!({})).await.0, 403);
    assert_eq!(t.post(&followup(&private), &bob, json!({"message": "from bob"})).await.0, 404);
    assert_eq!(t.post(&format!("/agent/runs/{private}/cancel"), &bob, json!({})).await.0, 404);
    let (status, body) = t.post(&followup(&watched), &cat, json!({"message": "from cat"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = t.post(&followup(&watched), &vic, json!({"message": "from vic"})).await;
    assert_eq!(status, 403, "a viewer's role caps any share: {body}");
    assert_eq!(t.followups_of(&ann, &watched).await, ["from cat"], "only the editor's follow-up was recorded");
    assert_eq!(t.state_of(&ann, &private).await, "QUEUED", "nothing refused changed anything");
    assert_eq!(t.post(&format!("/agent/runs/{private}/cancel"), &ann, json!({})).await.0, 200);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_session(t: &TestServer, run_id: &str, key: &str) -> Ws {
    tokio_tungstenite::connect_async(session_request(t, run_id, key)).await.unwrap().0
}

/// Sends `frame` and gives the server's answer to it: the next text frame that is not the screen.
async fn answer_to(ws: &mut Ws, frame: String) -> Value {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(frame.into())).await.unwrap();
    let next = async {
        loop {
            match ws.next().await.expect("the session ended").unwrap() {
                Message::Text(text) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] != "screen" {
                        return message;
                    }
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), next).await.expect("no answer")
}

fn keys(data: &str) -> String {
    json!({"type": "input", "data": data}).to_string()
}

/// The keys typed into a run, as its stream holds them: (data, by).
async fn inputs_of(t: &TestServer, key: &str, run_id: &str) -> Vec<(String, String)> {
    let (status, events) = t.get(&format!("/agent/runs/{run_id}/transcript/content"), key).await;
    assert_eq!(status, 200, "{events}");
    let events = events.as_array().unwrap().iter().filter(|e| e["event"]["event"] == "input");
    events.map(|e| (e["event"]["data"].as_str().unwrap().to_owned(), e["event"]["by"].to_string())).collect()
}

/// Keys typed into a session reach the run (an `input` event its runner follows) from its editors
/// only: a watcher, a viewer's role, a malformed or oversized message are refused in the session
/// (which goes on), and nothing of theirs is recorded.
#[tokio::test]
async fn only_a_runs_editors_type_into_its_session() {
    let t = TestServer::start().await;
    let (ann_id, ann) = user(&t, "ann", "member").await;
    let (_, bob) = user(&t, "bob", "member").await;
    let (cat_id, cat) = user(&t, "cat", "member").await;
    let (_, vic) = user(&t, "vic", "viewer").await;
    let run = shared_run(&t, &ann, json!({"share": ["team:view", "cat:edit", "vic:edit"]})).await;
    let run = run["run_id"].as_str().unwrap().to_owned();

    for (who, key) in [("bob (a watcher)", &bob), ("vic (a viewer's role caps the share)", &vic)] {
        let mut ws = open_session(&t, &run, key).await;
        let answer = answer_to(&mut ws, keys("rm -rf /\r")).await;
        assert_eq!(answer["type"], "refused", "{who}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains("to watch, not to steer"), "{who}: {answer}");
        // The session goes on: a second refusal comes on the same socket.
        assert_eq!(answer_to(&mut ws, keys("x")).await["type"], "refused", "{who}");
    }
    let mut ann_ws = open_session(&t, &run, &ann).await;
    let answer = answer_to(&mut ann_ws, "{\"type\":\"resize\"}".into()).await;
    assert!(answer["message"].as_str().unwrap().contains("not a viewer message"), "{answer}");
    let answer = answer_to(&mut ann_ws, keys(&"y".repeat(5000))).await;
    assert!(answer["message"].as_str().unwrap().contains("at most 4096"), "{answer}");
    assert!(inputs_of(&t, &ann, &run).await.is_empty(), "nothing refused was recorded");

    // The creator and an editor type; their keys are recorded in order, with who typed them.
    let mut cat_ws = open_session(&t, &run, &cat).await;
    use futures::SinkExt;
    cat_ws.send(keys("ls -la\r").into()).await.unwrap();
    for _ in 0..200 {
        if !inputs_of(&t, &ann, &run).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    ann_ws.send(keys("\x03").into()).await.unwrap();
    let mut typed = Vec::new();
    for _ in 0..200 {
        typed = inputs_of(&t, &ann, &run).await;
        if typed.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(typed, [("ls -la\r".to_owned(), format!("{cat_id:?}")), ("\u{3}".to_owned(), format!("{ann_id:?}"))]);
}

#[tokio::test]
async fn a_session_link_leads_whoever_may_see_the_run_to_it_and_nobody_else() {
    let t = TestServer::start().await;
    let (_, ann) = user(&t, "ann", "member").await;
    let (_, bob) = user(&t, "bob", "member").await;
    let private = shared_run(&t, &ann, json!({"share": ["self"]})).await;
    let public = shared_run(&t, &ann, json!({"share": ["self"], "public_access": "VIEWER"})).await;
    let session = private["session_id"].as_str().unwrap();
    assert_eq!(session.len(), 32);
    assert_ne!(session, private["run_id"].as_str().unwrap(), "the session id is not the run id");
    let link = private["session_link"].as_str().unwrap();
    assert_eq!(link, format!("{}/sessions/{session}", t.server.url()));

    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let redirect = |session: &str, key: &str| {
        no_redirects.get(t.url(&format!("/agent/sessions/{session}/redirect"))).bearer_auth(key.to_owned()).send()
    };
    let r = redirect(session, &ann).await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], format!("/runs/{}", private["run_id"].as_str().unwrap()));
    assert_eq!(redirect(session, &bob).await.unwrap().status(), 404, "a link without the right role is not found");
    assert_eq!(redirect(session, &t.key_b).await.unwrap().status(), 404);
    assert_eq!(redirect("0123456789abcdef0123456789abcdef", &ann).await.unwrap().status(), 404);

    // Public: anyone signed in to the server, of any team, may watch it; none may steer it but its
    // creator and its team's admins; and it is in no other team's list.
    let public_id = public["run_id"].as_str().unwrap();
    let public_session = public["session_id"].as_str().unwrap();
    assert_eq!(redirect(public_session, &t.key_b).await.unwrap().status(), 302);
    assert_eq!(reads(&t, public_id, &t.key_b).await, CAN_READ);
    assert_eq!(reads(&t, public_id, &bob).await, CAN_READ);
    let (status, body) = t.post(&format!("/agent/runs/{public_id}/followups"), &t.key_b, json!({"message": "x"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(listed(&t, &t.key_b).await.is_empty());
}

#[tokio::test]
async fn bad_share_targets_are_refused_and_make_no_run() {
    let t = TestServer::start().await;
    for (sharing, says) in [
        (json!({"share": ["nobody-here"]}), "no such user"),
        (json!({"share": ["team:admin"]}), "is not self, team"),
        (json!({"public_access": "OWNER"}), "public_access"),
        (json!({"share": (0..51).map(|_| "team").collect::<Vec<_>>()}), "at most 50"),
    ] {
        let (status, body) = t
            .post(
                "/agent/runs",
                &t.key_a,
                json!({"prompt": "p", "config": {"worker_host": "w1", "session_sharing": sharing}}),
            )
            .await;
        assert_eq!(status, 400, "{sharing}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(says), "{sharing}: {body}");
        // A schedule or an integration with it is refused when written, not when it fires.
        let agent_config = json!({"worker_host": "w1", "session_sharing": sharing});
        let schedule = json!({"name": "s", "cron_schedule": "0 * * * *", "prompt": "p", "agent_config": agent_config});
        let integration = json!({"name": "i", "prompt": "p", "agent_config": agent_config});
        for (path, body) in [("/agent/schedules", schedule), ("/integrations", integration)] {
            let (status, answer) = t.post(path, &t.key_a, body).await;
            assert_eq!(status, 400, "{path} {sharing}: {answer}");
            let detail = answer["detail"].as_str().unwrap();
            assert!(detail.contains(says) && detail.contains("agent_config.session_sharing"), "{path}: {answer}");
        }
    }
    let (_, list) = t.get("/agent/runs", &t.key_a).await;
    assert!(list["runs"].as_array().unwrap().is_empty(), "{list}");
    let (_, schedules) = t.get("/agent/schedules", &t.key_a).await;
    assert!(schedules["schedules"].as_array().unwrap().is_empty(), "{schedules}");
    let (_, integrations) = t.get("/integrations", &t.key_a).await;
    assert!(integrations["integrations"].as_array().unwrap().is_empty(), "{integrations}");

    // Updating a schedule to a share naming nobody is refused and leaves it as it was.
    let (status, made) = t
        .post(
            "/agent/schedules",
            &t.key_a,
            json!({"name": "s", "cron_schedule": "0 * * * *", "prompt": "p", "agent_config": {"worker_host": "w1"}}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let path = format!("/agent/schedules/{}", made["id"].as_str().unwrap());
    let update = json!({"name": "s", "cron_schedule": "0 * * * *", "enabled": true,
        "agent_config": {"worker_host": "w1", "session_sharing": {"share": ["nobody-here"]}}});
    let (status, answer) = t.call(reqwest::Method::PUT, &path, &t.key_a, Some(update)).await;
    assert_eq!(status, 400, "{answer}");
    let (_, kept) = t.get(&path, &t.key_a).await;
    assert!(kept["agent_config"].get("session_sharing").is_none_or(Value::is_null), "{kept}");
}

/// Open streams check the run's sharing again, not only the credential: an admin watching a
/// member's private run who is made a member loses its events and its session within the recheck,
/// and a member made a viewer can no longer type into the socket it opened as a member.
#[tokio::test]
async fn a_lowered_role_ends_what_it_may_no_longer_follow_on_open_streams() {
    use futures::StreamExt;
    let config =
        oz_server::ServerConfig { credential_recheck: std::time::Duration::from_millis(200), ..support::config() };
    let store = std::sync::Arc::new(oz_server::store::sqlite::SqliteStore::temporary().await.unwrap());
    let t = TestServer::start_with(config, store).await;
    let (_, ann) = user(&t, "ann", "member").await;
    let (carl_id, carl) = user(&t, "carl", "admin").await;
    let (bob_id, bob) = user(&t, "bob", "member").await;
    let private = shared_run(&t, &ann, json!({"share": ["self"]})).await;
    let private = private["run_id"].as_str().unwrap().to_owned();
    let open = shared_run(&t, &ann, json!({"share": ["team:edit"]})).await;
    let open = open["run_id"].as_str().unwrap().to_owned();

    // Carl, an admin, follows ann's private run; bob, a member, types into the team's run.
    let mut session = open_session(&t, &private, &carl).await;
    let events = t.http.get(t.url(&format!("/agent/runs/{private}/events"))).bearer_auth(&carl).send().await;
    let mut events = events.unwrap();
    assert_eq!(events.status(), 200);
    let mut typing = open_session(&t, &open, &bob).await;
    {
        use futures::SinkExt;
        typing.send(keys("before\r").into()).await.unwrap();
    }
    for _ in 0..200 {
        if !inputs_of(&t, &ann, &open).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(inputs_of(&t, &ann, &open).await.len(), 1, "bob typed as a member");

    for (id, role) in [(&carl_id, "member"), (&bob_id, "viewer")] {
        let (status, body) =
            t.call(reqwest::Method::PUT, &format!("/admin/users/{id}"), &t.key_a, Some(json!({"role": role}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(message) = session.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) = message {
                return Some(u16::from(frame.code));
            }
        }
        None
    })
    .await
    .expect("carl's session closes");
    assert_eq!(closed, Some(1008));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = events.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "carl's event stream ends");
    let answer = answer_to(&mut typing, keys("after\r")).await;
    assert_eq!(answer["type"], "refused", "{answer}");
    assert_eq!(inputs_of(&t, &ann, &open).await.len(), 1, "bob's keys as a viewer were not recorded");
    assert_eq!(session_status(&t, &private, &carl).await, 404, "and carl cannot open it again");
}
