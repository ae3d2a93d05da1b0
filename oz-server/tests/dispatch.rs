//! Dispatch over a real WebSocket with the Oz worker protocol, and the runner's callbacks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use oz_core::failure::FailureReason;
use oz_core::run::RunState;
use oz_core::wire::worker::{
    ServerMessage, TaskAssignment, TaskClaimed, TaskCompleted, TaskFailed, TaskRejected, WorkerMessage,
};
use oz_server::store::sqlite::SqliteStore;
use serde_json::json;
use support::{TestServer, Worker};

fn assignment(message: ServerMessage) -> TaskAssignment {
    match message {
        ServerMessage::TaskAssignment(a) => *a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

fn claimed(task_id: &str, worker: &Worker) -> WorkerMessage {
    WorkerMessage::TaskClaimed(TaskClaimed {
        task_id: task_id.into(),
        worker_id: worker.worker_id.clone(),
        execution_id: None,
    })
}

async fn report(t: &TestServer, run_id: &str, token: &str, body: serde_json::Value) -> u16 {
    let resp = t
        .http
        .post(t.url(&format!("/agent/runs/{run_id}/report")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// The whole happy path: offered (PENDING) in the Oz shape, claimed, the runner reports with its
/// workload token (INPROGRESS, output, artifact, SUCCEEDED), and the token dies with the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_flows_from_queue_to_worker_to_success() {
    let t = TestServer::start().await;
    let (_, env) = t
        .post(
            "/agent/environments",
            &t.key_a,
            json!({"name": "e", "docker_image": "alpine:3", "env_vars": {"FOO": "bar"}}),
        )
        .await;
    let env_id = env["uid"].as_str().unwrap();
    let mut w = t.worker(&t.key_a, "w1").await;
    let (status, created) = t.post("/agent/runs", &t.key_a, json!({"prompt": "do it", "config": {"worker_host": "w1", "environment_id": env_id, "harness": {"type": "claude"}}})).await;
    assert_eq!(status, 200);
    let run_id = created["run_id"].as_str().unwrap().to_owned();

    let raw = w.next_raw(Duration::from_secs(10)).await.unwrap();
    assert_eq!(raw["type"], "task_assignment");
    assert_eq!(raw["data"]["task"]["owner"]["Type"], "TEAM", "PascalCase owner keys: {raw}");
    let a = assignment(ServerMessage::from_json(&raw.to_string()).unwrap().unwrap());
    assert_eq!(a.task_id, run_id);
    assert_eq!(a.task.task_definition.prompt, "do it");
    assert_eq!(a.docker_image.as_deref(), Some("alpine:3"));
    assert_eq!(a.env_vars["FOO"], "bar");
    assert_eq!(
        a.task.agent_config_snapshot.as_ref().unwrap().harness.as_ref().unwrap().kind,
        Some(oz_core::runner::HarnessKind::Claude)
    );
    assert!(a.env_vars["WARP_SERVER_ROOT_URL"].starts_with("http://127.0.0.1:"));
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    assert!(token.starts_with("ozw_"));
    assert_eq!(t.state_of(&t.key_a, &run_id).await, "PENDING");

    w.send(claimed(&run_id, &w)).await;
    t.wait_state(&t.key_a, &run_id, "CLAIMED").await;

    // The workload token works for this run's report, and only this run's.
    assert_eq!(
        report(
            &t,
            &run_id,
            &token,
            json!({"at": "2026-11-22T10:00:00Z", "event": "harness_started", "harness": "claude"})
        )
        .await,
        204
    );
    t.wait_state(&t.key_a, &run_id, "INPROGRESS").await;
    let other = t.create_run(&t.key_a, "nobody", "other").await;
    assert_eq!(
        report(&t, &other, &token, json!({"at": "2026-11-22T10:00:00Z", "event": "started", "version": "1"})).await,
        404
    );
    let resp = t.http.get(t.url("/agent/runs")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 401, "a workload token is not an API key");
    let resp = t.http.get(t.url(&format!("/agent/runs/{run_id}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the runner may read its own run");
    let resp = t.http.get(t.url("/agent/environments")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the runner may read its team's environments");

    assert_eq!(
        report(
            &t,
            &run_id,
            &token,
            json!({"at": "2026-11-22T10:00:01Z", "event": "output", "stream": "stdout", "text": "working\n"})
        )
        .await,
        204
    );
    assert_eq!(report(&t, &run_id, &token, json!({"at": "2026-11-22T10:00:02Z", "event": "artifact", "artifact_type": "PULL_REQUEST", "url": "https://x/pr/1", "branch": "fix"})).await, 204);
    assert_eq!(report(&t, &run_id, &token, json!({"at": "2026-11-22T10:00:03Z", "event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "done"})).await, 204);
    let run = t.wait_state(&t.key_a, &run_id, "SUCCEEDED").await;
    assert_eq!(run["artifacts"][0]["artifact_type"], "PULL_REQUEST");
    assert!(run["started_at"].is_string());
    assert_eq!(run["status_message"]["message"], "done");
    // The token died with the run.
    assert_eq!(
        report(
            &t,
            &run_id,
            &token,
            json!({"at": "2026-11-22T10:00:04Z", "event": "output", "stream": "stdout", "text": "late"})
        )
        .await,
        401
    );
    // A late task_completed from the worker changes nothing.
    w.send(WorkerMessage::TaskCompleted(TaskCompleted {
        task_id: run_id.clone(),
        message: "".into(),
        task_state: None,
        execution_id: None,
    }))
    .await;
    let (_, transcript) = t.get(&format!("/agent/runs/{run_id}/transcript/content"), &t.key_a).await;
    let kinds: Vec<&str> =
        transcript.as_array().unwrap().iter().map(|e| e["event"]["event"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["state", "state", "harness_started", "state", "output", "artifact", "finished", "state"],
        "{transcript}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_only_to_the_exact_worker_id_of_the_same_team() {
    let t = TestServer::start().await;
    let mut upper = t.worker(&t.key_a, "W1").await;
    let mut other_team = t.worker(&t.key_b, "w1").await;
    let mut other_id = t.worker(&t.key_a, "w2").await;
    let run = t.create_run(&t.key_a, "w1", "for w1 only").await;
    for w in [&mut upper, &mut other_team, &mut other_id] {
        assert!(
            w.next_raw(Duration::from_millis(700)).await.is_none(),
            "{} got a run that was not for it",
            w.worker_id
        );
    }
    let (_, body) = t.get(&format!("/agent/runs/{run}"), &t.key_a).await;
    assert_eq!(body["state"], "QUEUED");
    let mut right = t.worker(&t.key_a, "w1").await;
    assert_eq!(assignment(right.next().await).task_id, run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_sharing_an_id_share_the_load_and_rejections_requeue() {
    let t = TestServer::start().await;
    let mut a = t.worker(&t.key_a, "pool").await;
    let mut b = t.worker(&t.key_a, "pool").await;
    let r1 = t.create_run(&t.key_a, "pool", "one").await;
    // Both are idle: the first run goes to either (connections register when their upgrade completes).
    let a_got_it = tokio::select! {
        m = a.next() => { assert_eq!(assignment(m).task_id, r1); true }
        m = b.next() => { assert_eq!(assignment(m).task_id, r1); false }
    };
    if !a_got_it {
        std::mem::swap(&mut a, &mut b);
    }
    // Now `a` holds a run and `b` is idle: the second run goes to `b`.
    let r2 = t.create_run(&t.key_a, "pool", "two").await;
    let second = b.next().await;
    assert_eq!(assignment(second).task_id, r2, "the second run goes to the idle connection");
    // b rejects: the run is queued again and offered again (to a or, after a moment, to b).
    b.send(WorkerMessage::TaskRejected(TaskRejected {
        task_id: r2.clone(),
        reason: "at capacity".into(),
        execution_id: None,
    }))
    .await;
    let again = tokio::select! {
        m = a.next() => m,
        m = b.next() => m,
    };
    assert_eq!(assignment(again).task_id, r2);
    let (_, run) = t.get(&format!("/agent/runs/{r2}"), &t.key_a).await;
    assert_eq!(run["state"], "PENDING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_vanishes_returns_unclaimed_runs_and_errors_claimed_ones_after_the_lease() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "flaky").await;
    let claimed_run = t.create_run(&t.key_a, "flaky", "will be claimed").await;
    assert_eq!(assignment(w.next().await).task_id, claimed_run);
    w.send(claimed(&claimed_run, &w)).await;
    t.wait_state(&t.key_a, &claimed_run, "CLAIMED").await;
    let unclaimed = t.create_run(&t.key_a, "flaky", "never claimed").await;
    assert_eq!(assignment(w.next().await).task_id, unclaimed);
    drop(w);
    let queued = t.wait_state(&t.key_a, &unclaimed, "QUEUED").await;
    assert!(queued["status_message"]["message"].as_str().unwrap().contains("disconnected"), "{queued}");
    let errored = t.wait_state(&t.key_a, &claimed_run, "ERROR").await;
    assert!(errored["status_message"]["message"].as_str().unwrap().contains("stopped responding"), "{errored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_is_forwarded_and_confirmed() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    // Offered, not claimed yet: cancelled at once, the worker told to drop it, a late claim ignored.
    let offered = t.create_run(&t.key_a, "w1", "never mind").await;
    assert_eq!(assignment(w.next().await).task_id, offered);
    let (status, answer) = t.post(&format!("/agent/runs/{offered}/cancel"), &t.key_a, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(t.state_of(&t.key_a, &offered).await, "CANCELLED");
    match w.next().await {
        ServerMessage::TaskCancellation(c) => assert_eq!(c.task_id, offered),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    w.send(claimed(&offered, &w)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.state_of(&t.key_a, &offered).await, "CANCELLED");

    let run = t.create_run(&t.key_a, "w1", "long task").await;
    assert_eq!(assignment(w.next().await).task_id, run);
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    let (status, _) = t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await;
    assert_eq!(status, 200);
    match w.next().await {
        ServerMessage::TaskCancellation(c) => assert_eq!(c.task_id, run),
        other => panic!("expected a cancellation, got {other:?}"),
    }
    w.send(WorkerMessage::TaskCompleted(TaskCompleted {
        task_id: run.clone(),
        message: "stopped".into(),
        task_state: Some(RunState::Cancelled),
        execution_id: None,
    }))
    .await;
    t.wait_state(&t.key_a, &run, "CANCELLED").await;
}

/// A worker that hands back a run it claimed (it had not started it) gets it queued again; one that
/// hands back a run whose agent had started ends it ERROR with its reason, never leaves it hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_handed_back_runs_again_unless_it_had_started() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let fresh = t.create_run(&t.key_a, "w1", "again").await;
    assert_eq!(assignment(w.next().await).task_id, fresh);
    w.send(claimed(&fresh, &w)).await;
    t.wait_state(&t.key_a, &fresh, "CLAIMED").await;
    let back = |id: &str| {
        WorkerMessage::TaskRejected(TaskRejected {
            task_id: id.into(),
            reason: "the worker restarted".into(),
            execution_id: None,
        })
    };
    w.send(back(&fresh)).await;
    assert_eq!(assignment(w.next().await).task_id, fresh, "offered again");

    let started = t.create_run(&t.key_a, "w1", "too late").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&started, &w)).await;
    t.wait_state(&t.key_a, &started, "CLAIMED").await;
    let at = jiff::Timestamp::now().to_string();
    assert_eq!(
        report(&t, &started, &token, json!({"at": at, "event": "harness_started", "harness": "command"})).await,
        204
    );
    t.wait_state(&t.key_a, &started, "INPROGRESS").await;
    w.send(back(&started)).await;
    let ended = t.wait_state(&t.key_a, &started, "ERROR").await;
    assert!(ended["status_message"]["message"].as_str().unwrap().contains("after it had started"), "{ended}");
}

/// Whatever path ends a run (a report read before the cancel, the worker's outcome, a lease), once
/// its cancel was answered 200 it ends CANCELLED: the rule is applied where every state change goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_end_overtakes_an_answered_cancel() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "racing").await;
    let _ = assignment(w.next().await);
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    assert_eq!(t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await.0, 200);
    // As a handler that read the run before the cancel would: straight to SUCCEEDED.
    let ended =
        t.server.state().lifecycle.advance(&run, RunState::Succeeded, Some("done".into())).await.unwrap().unwrap();
    assert_eq!(ended.state, RunState::Cancelled);
    assert!(ended.status_message.unwrap().message.contains("cancelled as asked (it ended SUCCEEDED first: done)"));
}

/// A report resent with its sequence number (its answer was lost) is stored once and applied once;
/// another attempt of the run numbers its reports afresh without colliding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_report_is_stored_once() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "twice").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    let reports = [
        json!({"at": "2026-11-22T10:00:00Z", "seq": 1, "event": "started", "version": "t"}),
        json!({"at": "2026-11-22T10:00:01Z", "seq": 2, "event": "artifact", "artifact_type": "PULL_REQUEST", "url": "https://x/pr/1", "branch": "b"}),
        json!({"at": "2026-11-22T10:00:02Z", "seq": 3, "event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "done"}),
    ];
    for i in [0, 1, 0, 1, 2] {
        assert_eq!(report(&t, &run, &token, reports[i].clone()).await, 204);
    }
    // The run ended with its `finished`, and its token with it: a resend of that is refused (the
    // runner stops there; the report is stored).
    assert_eq!(report(&t, &run, &token, reports[2].clone()).await, 401);
    let item = t.wait_state(&t.key_a, &run, "SUCCEEDED").await;
    assert_eq!(item["artifacts"].as_array().unwrap().len(), 1, "{item}");
    let (_, transcript) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    let reported: Vec<u64> = transcript.as_array().unwrap().iter().filter_map(|e| e["event"]["seq"].as_u64()).collect();
    assert_eq!(reported, [1, 2, 3], "{transcript}");
}

/// A cancel answered 200 while the worker was away is carried out: the history says it was asked,
/// the worker hears of it when it reconnects, and the run ends CANCELLED even though the agent's
/// `finished` (SUCCEEDED) came first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_asked_while_the_worker_was_away_is_carried_out() {
    let config = oz_server::ServerConfig { lease_timeout: Duration::from_secs(30), ..support::config() };
    let t = TestServer::start_with(config, Arc::new(SqliteStore::temporary().await.unwrap())).await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "long task").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    let at = jiff::Timestamp::now().to_string();
    assert_eq!(
        report(&t, &run, &token, json!({"at": at, "event": "harness_started", "harness": "command"})).await,
        204
    );
    drop(w);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, answer) = t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    let mut w = Worker::connect(&t.server.url(), &t.worker_credential(&t.key_a, "w1").await, "w1").await;
    match w.next().await {
        ServerMessage::TaskCancellation(c) => assert_eq!(c.task_id, run),
        other => panic!("expected the cancellation on reconnect, got {other:?}"),
    }
    let at = jiff::Timestamp::now().to_string();
    let finished = json!({"at": at, "event": "finished", "state": "SUCCEEDED", "exit_code": 0, "message": "done"});
    assert_eq!(report(&t, &run, &token, finished).await, 204);
    let ended = t.wait_state(&t.key_a, &run, "CANCELLED").await;
    let message = ended["status_message"]["message"].as_str().unwrap();
    assert!(message.contains("cancelled as asked") && message.contains("SUCCEEDED"), "{ended}");
    let (_, transcript) = t.get(&format!("/agent/runs/{run}/transcript/content"), &t.key_a).await;
    let kinds: Vec<&str> =
        transcript.as_array().unwrap().iter().map(|e| e["event"]["event"].as_str().unwrap()).collect();
    let asked = kinds.iter().position(|k| *k == "cancel_requested").expect("the cancel is in the history");
    assert!(asked < kinds.iter().rposition(|k| *k == "state").unwrap(), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_failed_or_error_by_reason_and_strangers_cannot_report() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let mut intruder = t.worker(&t.key_a, "w9").await;
    let user_fault = t.create_run(&t.key_a, "w1", "exit 1").await;
    assert_eq!(assignment(w.next().await).task_id, user_fault);
    // Another worker cannot speak for a run it does not hold.
    intruder
        .send(WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: user_fault.clone(),
            message: "".into(),
            task_state: None,
            execution_id: None,
        }))
        .await;
    w.send(claimed(&user_fault, &w)).await;
    t.wait_state(&t.key_a, &user_fault, "CLAIMED").await;
    w.send(WorkerMessage::TaskFailed(TaskFailed {
        task_id: user_fault.clone(),
        message: "the task exited with code 1".into(),
        failure_reason: FailureReason::ContainerExit,
        exit_code: 1,
        execution_id: None,
    }))
    .await;
    let failed = t.wait_state(&t.key_a, &user_fault, "FAILED").await;
    assert!(failed["status_message"]["message"].as_str().unwrap().contains("container_exit"));
    let platform_fault = t.create_run(&t.key_a, "w1", "pull fails").await;
    assert_eq!(assignment(w.next().await).task_id, platform_fault);
    w.send(claimed(&platform_fault, &w)).await;
    t.wait_state(&t.key_a, &platform_fault, "CLAIMED").await;
    w.send_raw(r#"{"type":"task_failed","data":{"task_id":"PLACEHOLDER","message":"no registry","failure_reason":"image_pull","exit_code":0}}"#.replace("PLACEHOLDER", &platform_fault).as_str()).await;
    t.wait_state(&t.key_a, &platform_fault, "ERROR").await;
    // Garbage and unknown message types do not hurt the connection.
    w.send_raw("not json at all").await;
    w.send_raw(r#"{"type":"telemetry_v9","data":{}}"#).await;
    let after = t.create_run(&t.key_a, "w1", "still works").await;
    assert_eq!(assignment(w.next().await).task_id, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_worker_connections_are_refused() {
    let t = TestServer::start().await;
    let base = t.server.url().replace("http://", "ws://");
    for (query, key) in [
        ("worker_id=warp-1", t.key_a.as_str()),
        ("worker_id=", t.key_a.as_str()),
        ("", t.key_a.as_str()),
        ("worker_id=w1", "bad-key"),
    ] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{base}/api/v1/selfhosted/worker/ws?{query}").into_client_request().unwrap();
        req.headers_mut().insert("Authorization", format!("Bearer {key}").parse().unwrap());
        assert!(tokio_tungstenite::connect_async(req).await.is_err(), "{query} with {key} was accepted");
    }
}

/// A worker id is bound to the credential issued for it: a team API key, another id's credential,
/// another team's credential, a revoked one, are all refused; two connections with the right one
/// (Oz's load spreading) are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_credential_issued_for_a_worker_id_opens_its_socket() {
    let t = TestServer::start().await;
    let url = t.server.url();
    assert_eq!(Worker::try_connect(&url, &t.key_a, "w1").await.err(), Some(403), "a team API key");
    let w2 = t.worker_credential(&t.key_a, "w2").await;
    assert_eq!(Worker::try_connect(&url, &w2, "w1").await.err(), Some(403), "another id's credential");
    let b_w1 = t.worker_credential(&t.key_b, "w1").await;
    let mut b = Worker::connect(&url, &b_w1, "w1").await;
    let w1 = t.worker_credential(&t.key_a, "w1").await;
    let mut first = Worker::connect(&url, &w1, "w1").await;
    let _second = Worker::connect(&url, &w1, "w1").await;
    // Team B's worker w1 never sees team A's runs.
    let run = t.create_run(&t.key_a, "w1", "for team a").await;
    assert_eq!(assignment(first.next().await).task_id, run);
    assert!(b.next_raw(Duration::from_millis(300)).await.is_none(), "team b's w1 got team a's run");
    // A second live credential for an id that has one is refused at issue.
    let (status, body) = t.post("/admin/keys", &t.key_a, json!({"kind": "worker", "worker_ids": ["w1"]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("already has a live credential"), "{body}");
    // Revoked: the open connection is closed, and a new one is refused.
    let (status, keys) = t.get("/admin/keys", &t.key_a).await;
    assert_eq!(status, 200);
    let id = keys["keys"].as_array().unwrap().iter().find(|k| k["worker_ids"] == json!(["w1"])).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = t.call(reqwest::Method::DELETE, &format!("/admin/keys/{id}"), &t.key_a, None).await;
    assert_eq!(status, 200);
    assert!(first.closed_within(Duration::from_secs(5)).await, "the revoked worker's connection stays open");
    assert_eq!(Worker::try_connect(&url, &w1, "w1").await.err(), Some(401));
}

/// A worker credential revoked behind the server's back (`oz-server admin key revoke` writes the
/// database from another process) still closes the worker's open connection, within upkeep's tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_revoked_in_the_database_closes_its_open_connection() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let keys = t.store.api_keys(&t.team_a).await.unwrap();
    let id = keys.iter().find(|k| k.worker_ids == ["w1"]).unwrap().id.clone();
    t.store.revoke_api_key(&t.team_a, &id, jiff::Timestamp::now()).await.unwrap();
    assert!(w.closed_within(Duration::from_secs(5)).await, "the revoked credential's connection stays open");
}

/// Runs survive a restart of the server: a queued run is still queued, and is dispatched after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_run_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oz.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let t = TestServer::start_with(support::config(), store).await;
    let run = t.create_run(&t.key_a, "w1", "durable").await;
    let key = t.key_a.clone();
    let worker_key = t.worker_credential(&t.key_a, "w1").await;
    t.server.shutdown().await;
    drop(t.store);
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let server = oz_server::start(support::config(), store).await.unwrap();
    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .get(format!("{}/api/v1/agent/runs/{run}", server.url()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["state"], "QUEUED");
    let mut w = Worker::connect(&server.url(), &worker_key, "w1").await;
    assert_eq!(assignment(w.next().await).task_id, run);
}

/// The events stream live over SSE and resume after a given event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_live_and_resume_with_last_event_id() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "watch me").await;
    let a = assignment(w.next().await);
    let token = a.env_vars["OZ_WORKLOAD_TOKEN"].clone();
    let url = t.url(&format!("/agent/runs/{run}/events"));
    let key = t.key_a.clone();
    let http = t.http.clone();
    let reader =
        tokio::spawn(async move { http.get(url).bearer_auth(key).send().await.unwrap().text().await.unwrap() });
    w.send(claimed(&run, &w)).await;
    report(
        &t,
        &run,
        &token,
        json!({"at": "2026-11-22T10:00:00Z", "event": "output", "stream": "stdout", "text": "hello"}),
    )
    .await;
    report(&t, &run, &token, json!({"at": "2026-11-22T10:00:01Z", "event": "finished", "state": "FAILED", "exit_code": 2, "message": "nope"})).await;
    let text = tokio::time::timeout(Duration::from_secs(20), reader).await.unwrap().unwrap();
    let ids: Vec<i64> = text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert!(ids.len() >= 5, "{text}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids in order without gaps: {ids:?}");
    assert!(text.contains("event: output") && text.contains("\"hello\""), "{text}");
    assert!(text.contains("\"FAILED\""));
    // Resume after the third event: only later ones come.
    let resumed = t
        .http
        .get(t.url(&format!("/agent/runs/{run}/events")))
        .bearer_auth(&t.key_a)
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed_ids: Vec<i64> =
        resumed.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert_eq!(resumed_ids.first(), Some(&4));
    assert_eq!(resumed_ids.last(), ids.last());
    let bad = t
        .http
        .get(t.url(&format!("/agent/runs/{run}/events")))
        .bearer_auth(&t.key_a)
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_listed_only_to_their_team() {
    let t = TestServer::start().await;
    let _a = t.worker(&t.key_a, "team-a-box").await;
    let _a2 = t.worker(&t.key_a, "team-a-box").await;
    for _ in 0..100 {
        let (_, body) = t.get("/workers", &t.key_a).await;
        // Both connections, not just the first: the second may still be registering.
        if body["workers"][0]["connections"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, mine) = t.get("/workers", &t.key_a).await;
    assert_eq!(mine["workers"], json!([{"worker_id": "team-a-box", "connections": 2, "runs_in_flight": 0}]));
    let (_, theirs) = t.get("/workers", &t.key_b).await;
    assert_eq!(theirs["workers"], json!([]));
}

/// A run someone asked to cancel ends CANCELLED even if its agent died of the stop signal and the
/// runner (or the worker) reported a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_that_reports_failure_ends_cancelled() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "long").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    let (status, _) = t.post(&format!("/agent/runs/{run}/cancel"), &t.key_a, json!({})).await;
    assert_eq!(status, 200);
    assert!(matches!(w.next().await, ServerMessage::TaskCancellation(_)));
    let body = json!({"at": "2026-11-22T10:00:00Z", "event": "finished", "state": "FAILED", "exit_code": 143, "message": "the command harness exited with code 143"});
    assert_eq!(report(&t, &run, &token, body).await, 204);
    t.wait_state(&t.key_a, &run, "CANCELLED").await;
    // Without a cancel request the same report is a failure.
    let other = t.create_run(&t.key_a, "w1", "other").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&other, &w)).await;
    t.wait_state(&t.key_a, &other, "CLAIMED").await;
    let body = json!({"at": "2026-11-22T10:00:00Z", "event": "finished", "state": "FAILED", "exit_code": 1, "message": "exit 1"});
    assert_eq!(report(&t, &other, &token, body).await, 204);
    t.wait_state(&t.key_a, &other, "FAILED").await;
}

/// A runner that reports CANCELLED when nobody asked to cancel (its worker is shutting down) does not
/// decide the outcome: the worker's report does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrequested_cancellation_from_the_runner_waits_for_the_worker() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "w1").await;
    let run = t.create_run(&t.key_a, "w1", "p").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    let body = json!({"at": "2026-11-22T10:00:00Z", "event": "finished", "state": "CANCELLED", "exit_code": 130, "message": "cancelled"});
    assert_eq!(report(&t, &run, &token, body).await, 204);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.state_of(&t.key_a, &run).await, "CLAIMED");
    w.send(WorkerMessage::TaskFailed(TaskFailed {
        task_id: run.clone(),
        message: "the task was stopped because the worker is shutting down".into(),
        failure_reason: FailureReason::GracefulShutdown,
        exit_code: 143,
        execution_id: None,
    }))
    .await;
    let item = t.wait_state(&t.key_a, &run, "ERROR").await;
    assert!(item["status_message"]["message"].as_str().unwrap().contains("graceful_shutdown"));
}

/// A runner's report is news about its run: the run keeps its lease while its runner reports, even
/// with its worker gone, and is given up only once the reports stop for a whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_runner_reports_keeps_its_lease_without_its_worker() {
    let t = TestServer::start().await;
    let mut w = t.worker(&t.key_a, "gone").await;
    let run = t.create_run(&t.key_a, "gone", "long task").await;
    let token = assignment(w.next().await).env_vars["OZ_WORKLOAD_TOKEN"].clone();
    w.send(claimed(&run, &w)).await;
    t.wait_state(&t.key_a, &run, "CLAIMED").await;
    drop(w);
    // Reports for three leases' time (the lease is 2 s).
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut seq = 1;
    while tokio::time::Instant::now() < until {
        let at = jiff::Timestamp::now().to_string();
        let event = if seq == 1 {
            json!({"seq": seq, "at": at, "event": "harness_started", "harness": "command"})
        } else {
            json!({"seq": seq, "at": at, "event": "output", "stream": "stdout", "text": "working\n"})
        };
        assert_eq!(report(&t, &run, &token, event).await, 204);
        seq += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(t.state_of(&t.key_a, &run).await, "INPROGRESS", "a reporting run is not given up");
    }
    // Silence, and no worker: given up after a lease.
    let ended = t.wait_state(&t.key_a, &run, "ERROR").await;
    assert!(ended["status_message"]["message"].as_str().unwrap().contains("stopped responding"), "{ended}");
}

/// A worker with two connections, one of which reports a ready warm sandbox for the run's
/// environment: the run is offered there, whatever the load; `GET /workers` shows the pools and the
/// environment shows `setup_failed` once a pool reports a failed preparation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_goes_to_the_connection_with_a_warm_sandbox_for_its_environment() {
    use oz_core::wire::worker::{WarmPoolState, WarmPoolsReport};
    let t = TestServer::start().await;
    let (status, env) = t.post("/agent/environments", &t.key_a, json!({"name": "warm"})).await;
    assert_eq!(status, 200, "{env}");
    let env_id = env["uid"].as_str().unwrap().to_owned();
    let mut cold = t.worker(&t.key_a, "pooled").await;
    let mut warm = t.worker(&t.key_a, "pooled").await;
    let report = |ready: usize, error: Option<&str>| {
        WorkerMessage::WarmPools(WarmPoolsReport {
            pools: vec![WarmPoolState {
                environment: env_id.clone(),
                ready,
                last_error: error.map(str::to_owned),
                ..Default::default()
            }],
        })
    };
    warm.send(report(1, None)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, workers) = t.get("/workers", &t.key_a).await;
    assert_eq!(workers["workers"][0]["warm_pools"][0]["ready"], 1, "{workers}");
    for _ in 0..3 {
        let (status, run) = t
            .post(
                "/agent/runs",
                &t.key_a,
                json!({"prompt": "p", "config": {"worker_host": "pooled", "environment_id": env_id}}),
            )
            .await;
        assert_eq!(status, 200, "{run}");
        let offered = assignment(warm.next().await);
        assert_eq!(offered.task_id, run["run_id"].as_str().unwrap());
        warm.send(claimed(&offered.task_id, &warm)).await;
    }
    // Without a ready sandbox the least loaded connection gets it, as before.
    warm.send(report(0, Some("setup_commands[0] exited with code 1"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = t.create_run(&t.key_a, "pooled", "cold").await;
    assert_eq!(assignment(cold.next().await).task_id, id);
    let (_, env) = t.get(&format!("/agent/environments/{env_id}"), &t.key_a).await;
    assert_eq!(env["setup_failed"], true, "{env}");
}
