//! `/agent/runs` over real HTTP: shapes, validation, pagination, cancel, auth and tenancy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::TestServer;

fn assert_problem(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["status"], expected_status, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

#[tokio::test]
async fn create_returns_the_oz_shape_and_the_run_waits_for_its_worker() {
    let t = TestServer::start().await;
    let (status, body) =
        t.post("/agent/runs", &t.key_a, json!({"prompt": "fix the flaky test", "config": {"worker_host": "w1"}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "QUEUED");
    assert_eq!(body["run_id"], body["task_id"]);
    assert_eq!(body.as_object().unwrap().len(), 3, "no unexpected fields: {body}");
    let run_id = body["run_id"].as_str().unwrap();
    let (status, run) = t.get(&format!("/agent/runs/{run_id}"), &t.key_a).await;
    assert_eq!(status, 200);
    assert_eq!(run["prompt"], "fix the flaky test");
    assert_eq!(run["title"], "fix the flaky test");
    assert_eq!(run["agent_config"]["worker_host"], "w1");
    assert!(
        run["status_message"]["message"].as_str().unwrap().contains("no worker with this id is connected"),
        "{run}"
    );
    for key in ["run_id", "task_id", "title", "state", "prompt", "created_at", "updated_at"] {
        assert!(run.get(key).is_some(), "{key} missing: {run}");
    }
    let (status, alias) =
        t.post("/agent/run", &t.key_a, json!({"prompt": "via the alias", "config": {"worker_host": "w1"}})).await;
    assert_eq!(status, 200, "{alias}");
}

#[tokio::test]
async fn bad_requests_get_problem_documents() {
    let t = TestServer::start().await;
    let cases = [
        (json!({"config": {"worker_host": "w1"}}), "prompt is required"),
        (json!({"prompt": "x"}), "worker_host is required"),
        (json!({"prompt": "x", "config": {"worker_host": "warp-1"}}), "reserved"),
        (json!({"prompt": "x", "config": {"worker_host": "../w"}}), "worker_host"),
        (json!({"prompt": "x", "config": {"worker_host": "w", "environment_id": "nope"}}), "no environment"),
        (json!({"prompt": "x", "config": {"worker_host": "w", "idle_timeout_minutes": 0}}), "idle_timeout_minutes"),
        (json!({"prompt": "x", "config": {"worker_host": "w", "harness": {"type": "vim"}}}), "harness.type"),
        (
            json!({"prompt": "x", "config": {"worker_host": "w"}, "attachments": vec![json!({"file_name": "a", "mime_type": "t", "data": ""}); 6]}),
            "attachments",
        ),
        (
            json!({"prompt": "x", "config": {"worker_host": "w"}, "attachments": [{"file_name": "a", "mime_type": "t", "data": "!!!"}]}),
            "base64",
        ),
        (json!({"prompt": 5}), "expected shape"),
        (json!({"prompt": "a\u{0}b", "config": {"worker_host": "w"}}), "control character"),
    ];
    for (body, expected) in cases {
        let (status, problem) = t.post("/agent/runs", &t.key_a, body.clone()).await;
        assert_problem(status, &problem, 400, "invalid_request");
        assert!(problem["detail"].as_str().unwrap().contains(expected), "{body} -> {problem}");
        assert_eq!(problem["retryable"], false);
    }
    // Not JSON, wrong content type, too big.
    let url = t.url("/agent/runs");
    let resp = t
        .http
        .post(&url)
        .bearer_auth(&t.key_a)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = t.http.post(&url).bearer_auth(&t.key_a).body("prompt=x").send().await.unwrap();
    assert_eq!(resp.status(), 415);
    let huge = json!({"prompt": "x".repeat(3 * 1024 * 1024), "config": {"worker_host": "w"}});
    let (status, problem) = t.post("/agent/runs", &t.key_a, huge).await;
    assert_eq!(status, 413, "{problem}");
    // Nothing was created by any of it.
    let (_, list) = t.get("/agent/runs", &t.key_a).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn pages_follow_cursors_without_gaps_or_repeats_and_filters_apply() {
    let t = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(t.create_run(&t.key_a, "w1", &format!("task number {i}")).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/agent/runs?limit=10&cursor={c}"),
            None => "/agent/runs?limit=10".into(),
        };
        let (status, page) = t.get(&path, &t.key_a).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(page["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap().to_owned()));
        if page["page_info"]["has_next_page"] == true {
            cursor = Some(page["page_info"]["next_cursor"].as_str().unwrap().to_owned());
        } else {
            assert!(page["page_info"].get("next_cursor").is_none());
            break;
        }
    }
    assert_eq!(pages, 3);
    ids.reverse(); // newest first by default
    assert_eq!(seen, ids);
    let (_, asc) = t.get("/agent/runs?limit=500&sort_order=asc", &t.key_a).await;
    assert_eq!(asc["runs"][0]["prompt"], "task number 0");
    let (_, q) = t.get("/agent/runs?q=number%2017", &t.key_a).await;
    assert_eq!(q["runs"].as_array().unwrap().len(), 1);
    t.post(&format!("/agent/runs/{}/cancel", ids[0]), &t.key_a, json!({})).await;
    let (_, cancelled) = t.get("/agent/runs?state=CANCELLED", &t.key_a).await;
    assert_eq!(cancelled["runs"].as_array().unwrap().len(), 1);
    let (_, both) = t.get("/agent/runs?state=CANCELLED&state=QUEUED&limit=500", &t.key_a).await;
    assert_eq!(both["runs"].as_array().unwrap().len(), 23);
    for bad in [
        "state=RUNNING",
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=garbage",
        "sort_by=size",
        "sort_order=up",
        "created_after=yesterday",
    ] {
        let (status, problem) = t.get(&format!("/agent/runs?{bad}"), &t.key_a).await;
        assert_problem(status, &problem, 400, "invalid_request");
    }
}

#[tokio::test]
async fn cancel_follows_the_oz_status_codes() {
    let t = TestServer::start().await;
    let id = t.create_run(&t.key_a, "w1", "p").await;
    let (status, body) = t.post(&format!("/agent/runs/{id}/cancel"), &t.key_a, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!(id));
    assert_eq!(t.state_of(&t.key_a, &id).await, "CANCELLED");
    let (status, problem) = t.post(&format!("/agent/runs/{id}/cancel"), &t.key_a, json!({})).await;
    assert_problem(status, &problem, 400, "invalid_request");
    let (status, problem) = t.post("/agent/runs/no-such-run/cancel", &t.key_a, json!({})).await;
    assert_problem(status, &problem, 404, "resource_not_found");
}

#[tokio::test]
async fn authentication_is_required_and_bad_keys_are_refused() {
    let t = TestServer::start().await;
    let resp = t.http.get(t.url("/agent/runs")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "authentication_required");
    let last = if t.key_a.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &t.key_a[..t.key_a.len() - 1]);
    assert_ne!(forged, t.key_a);
    for key in [
        "nonsense",
        "oz_0000000000000000.0000000000000000000000000000000000000000000000000000000000000000",
        forged.as_str(),
    ] {
        let (status, problem) = t.get("/agent/runs", key).await;
        assert_problem(status, &problem, 401, "authentication_required");
        assert!(!problem.to_string().contains(key), "the key must not be echoed");
    }
    let (status, problem) = t.get("/nope", &t.key_a).await;
    assert_problem(status, &problem, 404, "resource_not_found");
    let (status, _) = t.call(Method::DELETE, "/agent/runs", &t.key_a, None).await;
    assert_eq!(status, 405);
}

/// Team B's key sees nothing of team A: every run endpoint answers 404, lists are empty.
#[tokio::test]
async fn another_teams_key_gets_404_everywhere() {
    let t = TestServer::start().await;
    let id = t.create_run(&t.key_a, "w1", "secret plans").await;
    let (_, env) = t.post("/agent/environments", &t.key_a, json!({"name": "a-env"})).await;
    let env_id = env["uid"].as_str().unwrap().to_owned();
    for (method, path) in [
        (Method::GET, format!("/agent/runs/{id}")),
        (Method::POST, format!("/agent/runs/{id}/cancel")),
        (Method::GET, format!("/agent/runs/{id}/transcript")),
        (Method::GET, format!("/agent/runs/{id}/transcript/content")),
        (Method::GET, format!("/agent/runs/{id}/events")),
        (Method::GET, format!("/agent/environments/{env_id}")),
        (Method::PUT, format!("/agent/environments/{env_id}")),
        (Method::DELETE, format!("/agent/environments/{env_id}")),
    ] {
        let body = (method == Method::PUT).then(|| json!({"name": "stolen"}));
        let (status, problem) = t.call(method.clone(), &path, &t.key_b, body).await;
        assert_problem(status, &problem, 404, "resource_not_found");
        assert!(!problem.to_string().contains("secret plans"));
    }
    let (_, list) = t.get("/agent/runs", &t.key_b).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0);
    let (_, envs) = t.get("/agent/environments", &t.key_b).await;
    assert_eq!(envs["environments"].as_array().unwrap().len(), 0);
    // Team B cannot start a run in team A's environment either.
    let (status, _) = t
        .post("/agent/runs", &t.key_b, json!({"prompt": "x", "config": {"worker_host": "w", "environment_id": env_id}}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(t.state_of(&t.key_a, &id).await, "QUEUED");
}

#[tokio::test]
async fn environments_crud_validates_and_matches_the_oz_list_shape() {
    let t = TestServer::start().await;
    let config = json!({"name": "api", "docker_image": "ubuntu:22.04", "github_repos": [{"owner": "acme", "repo": "api"}], "setup_commands": ["make"]});
    let (status, created) = t.post("/agent/environments", &t.key_a, config.clone()).await;
    assert_eq!(status, 200, "{created}");
    let uid = created["uid"].as_str().unwrap().to_owned();
    assert_eq!(created["config"], config);
    let (_, list) = t.get("/agent/environments", &t.key_a).await;
    assert_eq!(list["environments"][0]["uid"], uid.as_str());
    assert_eq!(list["environments"][0]["setup_failed"], false);
    let (status, updated) =
        t.call(Method::PUT, &format!("/agent/environments/{uid}"), &t.key_a, Some(json!({"name": "api2"}))).await;
    assert_eq!(status, 200);
    assert_eq!(updated["config"]["name"], "api2");
    for bad in [
        json!({"name": ""}),
        json!({"name": "x", "docker_image": "../etc"}),
        json!({"name": "x", "github_repos": [{"owner": "a", "repo": ".."}]}),
    ] {
        let (status, problem) = t.post("/agent/environments", &t.key_a, bad.clone()).await;
        assert_problem(status, &problem, 400, "invalid_request");
    }
    let (status, body) = t.call(Method::DELETE, &format!("/agent/environments/{uid}"), &t.key_a, None).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let (status, _) = t.get(&format!("/agent/environments/{uid}"), &t.key_a).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_transcript_redirects_to_the_stored_events() {
    let t = TestServer::start().await;
    let id = t.create_run(&t.key_a, "w1", "p").await;
    t.post(&format!("/agent/runs/{id}/cancel"), &t.key_a, json!({})).await;
    let no_redirect = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp =
        no_redirect.get(t.url(&format!("/agent/runs/{id}/transcript"))).bearer_auth(&t.key_a).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let content: Value = t
        .http
        .get(format!("{}{location}", t.server.url()))
        .bearer_auth(&t.key_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(content[0]["event"]["state"], "CANCELLED");
}

#[tokio::test]
async fn a_followup_reaches_a_run_that_has_not_ended_and_refuses_bad_input() {
    let t = TestServer::start().await;
    let parent = t.create_run(&t.key_a, "w1", "first attempt").await;
    // Not ended: the follow-up is for the run's agent, in the run's stream; the same run answers.
    let (status, same) = t
        .post(
            &format!("/agent/runs/{parent}/followups"),
            &t.key_a,
            json!({"message": "while you are at it", "mode": "plan"}),
        )
        .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["run_id"], parent.as_str());
    let (_, content) = t.get(&format!("/agent/runs/{parent}/transcript/content"), &t.key_a).await;
    let followups: Vec<_> = content.as_array().unwrap().iter().filter(|e| e["event"]["event"] == "followup").collect();
    assert_eq!(followups.len(), 1, "{content}");
    assert_eq!(followups[0]["event"]["message"], "while you are at it");
    assert_eq!(followups[0]["event"]["mode"], "plan");
    let (_, none) = t.get(&format!("/agent/runs?ancestor_run_id={parent}"), &t.key_a).await;
    assert!(none["runs"].as_array().unwrap().is_empty(), "no child run for a run that goes on");
    for bad in [json!({}), json!({"message": " "}), json!({"message": "x", "mode": "yolo"})] {
        let (status, _) = t.post(&format!("/agent/runs/{parent}/followups"), &t.key_a, bad).await;
        assert_eq!(status, 400);
    }
    let (status, _) = t.post(&format!("/agent/runs/{parent}/followups"), &t.key_b, json!({"message": "m"})).await;
    assert_eq!(status, 404);
}

/// The next assignment on `worker`, with the run's workload token.
async fn assignment_of(worker: &mut support::Worker) -> oz_core::wire::worker::TaskAssignment {
    match worker.next().await {
        oz_core::wire::worker::ServerMessage::TaskAssignment(a) => *a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

#[tokio::test]
async fn a_followup_to_an_ended_run_continues_it_in_a_new_execution_that_stale_messages_cannot_move() {
    use oz_core::wire::worker::{TaskClaimed, TaskCompleted, TaskFailed, WorkerMessage};
    let t = TestServer::start().await;
    let mut worker = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "write the parser").await;
    let first = assignment_of(&mut worker).await;
    let first_execution = first.execution_id.clone().unwrap();
    let first_token = first.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    assert_eq!(first.task.agent_conversation_id, None);
    let claim = |execution: &str| {
        WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: run.clone(),
            worker_id: "w1".into(),
            execution_id: Some(execution.to_owned()),
        })
    };
    worker.send(claim(&first_execution)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    support::report(&t, &run, &first_token, json!({"event": "harness_started", "harness": "command"})).await;

    // The runner keeps its agent's conversation before the end: sealed at rest, for its run only.
    const KEPT: &[u8] = b"the agent's memory: parser half done, tokens are in lexer.rs";
    let put = |token: &str, body: &'static [u8]| {
        t.http.put(t.url(&format!("/agent/runs/{run}/conversation"))).bearer_auth(token.to_owned()).body(body).send()
    };
    assert_eq!(put(&first_token, KEPT).await.unwrap().status(), 204);
    assert_eq!(put(&t.key_a, KEPT).await.unwrap().status().as_u16(), 401, "an API key is not the run's runner");
    let sealed = t.store.conversation(&run).await.unwrap().unwrap();
    assert!(!sealed.contains("parser half done"), "kept sealed, not in the clear");
    let too_big = vec![b'x'; oz_core::wire::callbacks::MAX_CONVERSATION_BYTES + 1];
    let refused = t
        .http
        .put(t.url(&format!("/agent/runs/{run}/conversation")))
        .bearer_auth(&first_token)
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 413);
    support::report(&t, &run, &first_token, json!({"event": "finished", "state": "SUCCEEDED", "message": "done"}))
        .await;
    t.wait_state(&t.key_a, &run, "SUCCEEDED").await;

    // The follow-up continues the same run: queued again, execution 2.
    let (status, answer) =
        t.post(&format!("/agent/runs/{run}/followups"), &t.key_a, json!({"message": "now the tests"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["run_id"].as_str(), answer["state"].as_str()), (Some(run.as_str()), Some("QUEUED")));
    let (_, item) = t.get(&format!("/agent/runs/{run}"), &t.key_a).await;
    assert_eq!(item["prompt"], "write the parser", "the run's prompt stays its first");
    assert!(item["status_message"]["message"].as_str().unwrap().contains("execution 2"), "{item}");
    assert!(item["started_at"].is_null(), "{item}");
    let (_, children) = t.get(&format!("/agent/runs?ancestor_run_id={run}"), &t.key_a).await;
    assert!(children["runs"].as_array().unwrap().is_empty(), "no new run: {children}");
    // A follower from the first event, opened now, does not stop at the first end.
    let mut stream =
        t.http.get(t.url(&format!("/agent/runs/{run}/events"))).bearer_auth(&t.key_a).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(t.post(&format!("/agent/runs/{run}/resolved"), &first_token, json!({})).await.0, 405);
    assert_eq!(t.get(&format!("/agent/runs/{run}/resolved"), &first_token).await.0, 401, "the first token died");

    // The worker has not said the first execution is over: nothing is offered yet. Then its end,
    // named by execution, frees it, and the second execution comes.
    assert!(worker.next_raw(std::time::Duration::from_millis(1200)).await.is_none(), "offered while still held");
    worker
        .send(WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: run.clone(),
            message: "the agent finished".into(),
            task_state: None,
            execution_id: Some(first_execution.clone()),
        }))
        .await;
    let second = assignment_of(&mut worker).await;
    let second_execution = second.execution_id.clone().unwrap();
    assert_ne!(second_execution, first_execution);
    assert_eq!(second.task.task_definition.prompt, "now the tests");
    assert_eq!(second.task.agent_conversation_id.as_deref(), Some(run.as_str()));
    worker.send(claim(&second_execution)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    // A late message of the first execution moves nothing.
    worker
        .send(WorkerMessage::TaskFailed(TaskFailed {
            task_id: run.clone(),
            message: "stale".into(),
            failure_reason: oz_core::failure::FailureReason::ContainerExit,
            exit_code: 1,
            execution_id: Some(first_execution.clone()),
        }))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(t.state_of(&t.key_a, &run).await, "CLAIMED");

    // Its runner is asked the follow-up, told where its steering starts, and given the conversation.
    let second_token = second.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let (status, resolved) = t.get(&format!("/agent/runs/{run}/resolved"), &second_token).await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["prompt"], "now the tests");
    assert_eq!(resolved["continuation"]["execution"], 2);
    assert_eq!(resolved["continuation"]["conversation"], true);
    let after_seq = resolved["continuation"]["after_seq"].as_i64().unwrap();
    let (_, events) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    let continued_by = events.as_array().unwrap().iter().find(|e| e["seq"] == after_seq).unwrap();
    assert_eq!(continued_by["event"]["event"], "followup");
    assert_eq!(continued_by["event"]["message"], "now the tests");
    let kept =
        t.http.get(t.url(&format!("/agent/runs/{run}/conversation"))).bearer_auth(&second_token).send().await.unwrap();
    assert_eq!(kept.status(), 200);
    assert_eq!(&kept.bytes().await.unwrap()[..], KEPT);
    let other = t.create_run(&t.key_a, "w9", "another run").await;
    assert_eq!(t.get(&format!("/agent/runs/{other}/conversation"), &second_token).await.0, 404);

    // The second execution ends; the follower from the start saw both ends and the way between.
    support::report(&t, &run, &second_token, json!({"event": "harness_started", "harness": "command"})).await;
    support::report(&t, &run, &second_token, json!({"event": "finished", "state": "FAILED", "message": "no"})).await;
    t.wait_state(&t.key_a, &run, "FAILED").await;
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read).await.expect("the stream ends with the run");
    let states: Vec<&str> = ["\"SUCCEEDED\"", "\"QUEUED\"", "\"FAILED\""]
        .into_iter()
        .filter(|s| seen.contains(&format!("\"state\":{s}")))
        .collect();
    assert_eq!(states.len(), 3, "{seen}");
    assert!(seen.find("SUCCEEDED").unwrap() < seen.rfind("FAILED").unwrap());
}

/// A member's key, for a user of their own.
async fn member(t: &TestServer, name: &str) -> String {
    let (status, user) = t.post("/admin/users", &t.key_a, json!({"name": name, "role": "member"})).await;
    assert_eq!(status, 200, "{user}");
    let (status, key) = t.post("/admin/keys", &t.key_a, json!({"name": name, "user_id": user["id"]})).await;
    assert_eq!(status, 200, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn only_its_creator_or_an_admin_continues_an_ended_run_whose_credentials_act_as_its_creator() {
    let t = TestServer::start().await;
    let (ann, bob) = (member(&t, "ann").await, member(&t, "bob").await);
    let end = |run: String| async {
        let (status, _) = t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await;
        assert_eq!(status, 200);
        t.wait_state(&t.key_a, &run, "CANCELLED").await;
        run
    };
    let anns = end(t.create_run(&ann, "w1", "ann's work").await).await;
    let (status, body) = t.post(&format!("/agent/runs/{anns}/followups"), &bob, json!({"message": "mine now"})).await;
    assert_problem(status, &body, 403, "not_authorized");
    assert!(body["detail"].as_str().unwrap().contains("act as its creator"), "{body}");
    assert_eq!(t.state_of(&t.key_a, &anns).await, "CANCELLED", "nothing moved");
    assert!(t.followups_of(&t.key_a, &anns).await.is_empty(), "nothing was recorded");
    let (status, body) = t.post(&format!("/agent/runs/{anns}/followups"), &ann, json!({"message": "go on"})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("QUEUED")), "{body}");
    // Credentials that act as whoever runs it: a teammate who may steer it continues it, for them.
    let (status, created) = t
        .post(
            "/agent/runs",
            &ann,
            json!({"prompt": "shared", "config": {"worker_host": "w1", "credential_strategy": "EXECUTOR"}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let shared = end(created["run_id"].as_str().unwrap().to_owned()).await;
    let (status, body) =
        t.post(&format!("/agent/runs/{shared}/followups"), &bob, json!({"message": "bob's turn"})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("QUEUED")), "{body}");
    let stored = t.store.run_by_id(&shared).await.unwrap().unwrap();
    let continuation = stored.continuation.unwrap();
    assert_eq!(continuation.followup.message, "bob's turn");
    assert!(continuation.followup.by.is_some());
    assert_ne!(continuation.followup.by, stored.creator_id, "the new execution runs for bob, not its creator");
}

#[tokio::test]
async fn a_local_run_that_ended_cannot_be_continued_by_a_followup() {
    let t = TestServer::start().await;
    let (status, created) = t.post("/agent/runs/local", &t.key_a, json!({"prompt": "on my laptop"})).await;
    assert_eq!(status, 200, "{created}");
    let run = created["run_id"].as_str().unwrap().to_owned();
    let token = created["workload_token"].as_str().unwrap().to_owned();
    support::report(&t, &run, &token, json!({"event": "harness_started", "harness": "command"})).await;
    support::report(&t, &run, &token, json!({"event": "finished", "state": "SUCCEEDED", "message": "ok"})).await;
    t.wait_state(&t.key_a, &run, "SUCCEEDED").await;
    let (status, body) = t.post(&format!("/agent/runs/{run}/followups"), &t.key_a, json!({"message": "more"})).await;
    assert_problem(status, &body, 409, "conflict");
    assert!(body["detail"].as_str().unwrap().contains("LOCAL"), "{body}");
    assert_eq!(t.state_of(&t.key_a, &run).await, "SUCCEEDED");
    assert!(t.followups_of(&t.key_a, &run).await.is_empty(), "nothing was recorded");
}

#[tokio::test]
async fn an_interrupt_reaches_a_started_agent_through_its_runners_stream_and_nothing_else_is_interrupted() {
    let t = TestServer::start().await;
    // Not started: nothing to interrupt, and nothing kept for later (it would stop the agent at once).
    let queued = t.create_run(&t.key_a, "w9", "not yet").await;
    let (status, body) = t.post(&format!("/agent/runs/{queued}/interrupt"), &t.key_a, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("has not started"), "{body}");

    let (run, token, _worker) = support::running(&t).await;
    let path = format!("/agent/runs/{run}/interrupt");
    // Another team's key: no such run. A viewer: may not.
    assert_eq!(t.post(&path, &t.key_b, json!({})).await.0, 404);
    let (_, user) = t.post("/admin/users", &t.key_a, json!({"name": "vic", "role": "viewer"})).await;
    let (_, key) = t.post("/admin/keys", &t.key_a, json!({"name": "vic's", "user_id": user["id"]})).await;
    let (status, body) = t.post(&path, key["key"].as_str().unwrap(), json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("member"), "the refusal names the role it needs: {body}");

    let (status, body) = t.post(&path, &t.key_a, json!({})).await;
    assert_eq!((status, body.as_str()), (200, Some(run.as_str())));
    // The runner's view: its steering stream carries the interrupt (and nothing else of the run's).
    let mut stream = t
        .http
        .get(t.url(&format!("/agent/runs/{run}/events?event={}", oz_core::wire::api::Steering::KINDS)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("event: interrupt") {
        let chunk =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("event: state") && !seen.contains("harness_started"), "{seen}");
    let (_, content) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    let interrupts: Vec<_> =
        content.as_array().unwrap().iter().filter(|e| e["event"]["event"] == "interrupt").collect();
    assert_eq!(interrupts.len(), 1, "{content}");
    assert_eq!(t.state_of(&t.key_a, &run).await, "INPROGRESS", "an interrupt is not a cancel");

    let (status, _) = t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await;
    assert_eq!(status, 200);
    support::report(
        &t,
        &run,
        &token,
        json!({"event": "finished", "state": "CANCELLED", "exit_code": 143, "message": "cancelled"}),
    )
    .await;
    t.wait_state(&t.key_a, &run, "CANCELLED").await;
    let (status, body) = t.post(&path, &t.key_a, json!({})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_local_run_is_claimed_by_its_own_runner_kept_alive_by_heartbeats_and_ended_when_they_stop() {
    let t = TestServer::start().await; // a 2 s lease
    let (status, body) =
        t.post("/agent/runs/local", &t.key_a, json!({"prompt": "p", "config": {"worker_host": "w1"}})).await;
    assert_eq!(status, 400, "a local run names no worker: {body}");
    let (status, body) = t.post("/agent/runs/local", &t.key_a, json!({"prompt": "p", "source": "API"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, created) =
        t.post("/agent/runs/local", &t.key_a, json!({"prompt": "on my laptop", "source": "GITHUB_ACTION"})).await;
    assert_eq!(status, 200, "{created}");
    let run = created["run_id"].as_str().unwrap().to_owned();
    let token = created["workload_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ozw_"));
    let (_, item) = t.get(&format!("/agent/runs/{run}"), &t.key_a).await;
    assert_eq!((item["state"].as_str(), item["execution_location"].as_str()), (Some("CLAIMED"), Some("LOCAL")));
    assert_eq!(item["source"], "GITHUB_ACTION");
    assert!(!item.to_string().contains(&token), "the token is shown once, in the registration's answer");

    // Its token reports as a sandbox's does; heartbeats keep it past its lease, and are not stored.
    support::report(&t, &run, &token, json!({"event": "harness_started", "harness": "command"})).await;
    t.wait_state(&t.key_a, &run, "INPROGRESS").await;
    for _ in 0..8 {
        support::report(&t, &run, &token, json!({"event": "heartbeat"})).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(t.state_of(&t.key_a, &run).await, "INPROGRESS", "alive for 4 s on a 2 s lease");
    let (_, content) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    assert!(!content.to_string().contains("heartbeat"), "{content}");

    // A runner that died (kill -9) says nothing more: the run ends ERROR, saying so.
    let ended = t.wait_state(&t.key_a, &run, "ERROR").await;
    let message = ended["status_message"]["message"].as_str().unwrap();
    assert!(message.contains("its runner") && message.contains("stopped responding"), "{message}");
    // Nothing was ever offered to a worker.
    let (_, list) = t.get("/agent/runs?state=PENDING", &t.key_a).await;
    assert!(list["runs"].as_array().unwrap().is_empty());
}
