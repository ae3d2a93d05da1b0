//! Behaviour specific to the Direct backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use oz_backend_direct::{DirectBackend, DirectConfig, process};
use oz_core::backend::{Backend, RecoveryAction, TaskPhase};
use oz_core::conformance::{run_to_end, task_id};
use oz_core::failure::FailureReason;
use oz_core::task::TaskSpec;

fn sh(id: &str, script: &str) -> TaskSpec {
    TaskSpec::new(id, vec!["/bin/sh".into(), "-c".into(), script.into()])
}

fn backend(root: &tempfile::TempDir, tweak: impl FnOnce(&mut DirectConfig)) -> DirectBackend {
    let mut config = DirectConfig::new("w1", root.path().join("ws"));
    config.stop_grace = Duration::from_millis(500);
    tweak(&mut config);
    DirectBackend::new(config).unwrap()
}

/// The worker's own secrets never reach a task, even though the process that launches tasks has them:
/// here the test process holds an API key, and every variable it has (but `PATH`, passed on purpose)
/// must be absent from the task.
#[tokio::test]
#[allow(unsafe_code)]
async fn worker_variables_do_not_leak() {
    const KEY: &str = "oz_live_worker_api_key_do_not_leak_123";
    // SAFETY: std serialises environment writes with process spawning (its env lock); no C code in
    // this test reads the environment concurrently.
    unsafe { std::env::set_var("WARP_API_KEY", KEY) };
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |_| {});
    let c = run_to_end(&b, TaskSpec::new(task_id("leak"), vec!["env".into()])).await;
    assert!(c.outcome.succeeded());
    let task_env = String::from_utf8_lossy(&c.stdout).to_string();
    assert!(task_env.contains("OZ_RUN_ID="), "the env listing is real: {task_env}");
    let mine: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k != "PATH").collect();
    assert!(mine.iter().any(|(k, _)| k == "WARP_API_KEY"));
    for (k, v) in mine {
        assert!(!task_env.lines().any(|l| l == format!("{k}={v}")), "{k} leaked into the task");
    }
    assert!(!task_env.contains(KEY));
}

#[tokio::test]
async fn the_workspace_is_private_with_its_own_home_tmp_and_git_config() {
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |_| {});
    let id = task_id("layout");
    let script = "stat -c '%a' \"$OZ_WORKSPACE_ROOT/..\"; echo \"$PWD\"; echo \"$HOME\"; echo \"$TMPDIR\"; echo \"$GIT_CONFIG_GLOBAL\"; test -f \"$GIT_CONFIG_GLOBAL\" && echo gitconfig-exists";
    let spec = sh(&id, script).cleanup(false);
    let c = run_to_end(&b, spec).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    let out = String::from_utf8_lossy(&c.stdout).to_string();
    let lines: Vec<&str> = out.lines().collect();
    let ws = b.workspace_path(&id);
    assert_eq!(lines[0], "700");
    assert_eq!(lines[1], ws.join("workspace").display().to_string());
    assert_eq!(lines[2], ws.join("home").display().to_string());
    assert_eq!(lines[3], ws.join("tmp").display().to_string());
    assert_eq!(lines[4], ws.join("gitconfig").display().to_string());
    assert_eq!(lines[5], "gitconfig-exists");
    oz_backend_direct::workspace::remove_tree(&ws).unwrap();
}

/// A run continued after its end runs again under the same task id; a workspace its execution
/// before kept (cleanup off) is set aside and kept.
#[tokio::test]
async fn a_new_execution_sets_aside_the_workspace_its_execution_before_kept() {
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |_| {});
    let id = task_id("again");
    let first = run_to_end(&b, sh(&id, "echo one > \"$PWD/mark\"").cleanup(false)).await;
    assert!(first.outcome.succeeded(), "{:?}", first.outcome);
    let mut second = sh(&id, "test ! -e \"$PWD/mark\" && echo fresh").cleanup(false);
    second.execution_id = Some("e2".into());
    let c = run_to_end(&b, second).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    assert_eq!(String::from_utf8_lossy(&c.stdout).trim(), "fresh");
    let aside: Vec<_> = std::fs::read_dir(root.path().join("ws"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{id}.before-")))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read_to_string(aside[0].join("workspace/mark")).unwrap().trim(), "one");
    let recovered = b.recover().await.unwrap();
    assert!(recovered.is_empty(), "kept folders are no tasks: {recovered:?}");
}

#[tokio::test]
async fn setup_command_output_and_dotenv_reach_the_task() {
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |c| {
        c.setup_command = Some(
            "echo setting-up; printf 'FROM_SETUP=\"hello world\"\\nexport SECOND=2\\n' > \"$OZ_ENVIRONMENT_FILE\""
                .into(),
        );
        c.environment = vec![oz_core::task::EnvEntry::new("FROM_CONFIG", "cfg")];
    });
    let c = run_to_end(&b, sh(&task_id("setup"), "echo \"$FROM_SETUP|$SECOND|$FROM_CONFIG\"")).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    assert_eq!(String::from_utf8_lossy(&c.stdout), "setting-up\nhello world|2|cfg\n");
    let setup_at = c.phases.iter().position(|p| *p == TaskPhase::SetupCommand).unwrap();
    let running_at = c.phases.iter().position(|p| *p == TaskPhase::Running).unwrap();
    assert!(setup_at < running_at);
}

#[tokio::test]
async fn a_failing_setup_command_fails_the_task_before_it_starts() {
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |c| c.setup_command = Some("exit 4".into()));
    let id = task_id("badsetup");
    let c = run_to_end(&b, sh(&id, "echo must-not-run")).await;
    assert_eq!(c.outcome.reason(), Some(FailureReason::SetupCommand));
    assert!(c.outcome.failure.unwrap().message.contains("code 4"));
    assert!(c.stdout.is_empty());
    assert!(!c.phases.contains(&TaskPhase::Running));
    assert!(!b.workspace_path(&id).exists());
}

#[tokio::test]
async fn a_malformed_environment_file_is_a_setup_failure_naming_the_line() {
    let root = tempfile::tempdir().unwrap();
    let b =
        backend(&root, |c| c.setup_command = Some("printf 'OK=1\\nnot-a-pair\\n' > \"$OZ_ENVIRONMENT_FILE\"".into()));
    let c = run_to_end(&b, sh(&task_id("dotenv"), "true")).await;
    assert_eq!(c.outcome.reason(), Some(FailureReason::SetupCommand));
    assert!(c.outcome.failure.unwrap().message.contains("line 2"));
}

#[tokio::test]
async fn teardown_runs_after_every_task_and_its_failure_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let marker = root.path().join("teardown-ran");
    let b =
        backend(&root, |c| c.teardown_command = Some(format!("echo \"$OZ_RUN_ID\" >> {}; exit 2", marker.display())));
    let id = task_id("teardown");
    let c = run_to_end(&b, sh(&id, "echo working")).await;
    assert_eq!(c.outcome.reason(), Some(FailureReason::TeardownCommand));
    let failed = run_to_end(&b, sh(&task_id("teardown2"), "exit 7")).await;
    assert_eq!(failed.outcome.reason(), Some(FailureReason::ContainerExit), "the task's own failure is kept");
    let ran = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(ran.lines().count(), 2);
    assert_eq!(ran.lines().next(), Some(id.as_str()));
}

#[tokio::test]
async fn target_dir_mode_runs_in_the_given_folder_and_never_removes_it() {
    let root = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("existing"), b"keep me").unwrap();
    let dir = target.path().to_path_buf();
    let b = backend(&root, |c| c.target_dir = Some(dir));
    let id = task_id("target");
    let c = run_to_end(&b, sh(&id, "cat existing; echo new > made-by-task; pwd")).await;
    assert!(c.outcome.succeeded(), "{:?}", c.outcome);
    let out = String::from_utf8_lossy(&c.stdout).to_string();
    assert!(out.starts_with("keep me"));
    assert!(out.trim_end().ends_with(&target.path().display().to_string()));
    assert!(target.path().join("made-by-task").exists());
    assert!(!b.workspace_path(&id).exists(), "the per-task folder is still removed");
}

#[tokio::test]
async fn a_memory_limit_is_enforced() {
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |_| {});
    let mut spec = sh(&task_id("mem"), "head -c 200000000 /dev/zero | sort > /dev/null");
    spec.sandbox.resources.memory_bytes = Some(64 * 1024 * 1024);
    let c = run_to_end(&b, spec).await;
    assert_eq!(c.outcome.reason(), Some(FailureReason::ContainerExit), "{:?}", c.outcome);
}

#[tokio::test]
async fn a_second_task_with_the_same_id_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let b = backend(&root, |_| {});
    let id = task_id("dup");
    let first = b.launch(sh(&id, "sleep 5")).await.unwrap();
    let err = b.launch(sh(&id, "true")).await.unwrap_err();
    assert_eq!(err.reason, FailureReason::WorkspaceSetup);
    first.canceller().cancel(oz_core::backend::CancelReason::Requested);
    assert_eq!(first.wait().await.reason(), Some(FailureReason::TaskCancelled));
}

/// A worker that died before its task's process started (here: while a setup command ran) leaves a
/// marker without a process and the setup's processes; a new backend with the same worker id stops
/// them, removes the workspace and reports the task as not started (to run again), saying why. Another worker's
/// workspaces are left alone. (Reattaching to tasks that did start: tests/reattach.rs.)
#[tokio::test]
async fn a_restarted_backend_removes_a_task_that_had_not_started() {
    let root = tempfile::tempdir().unwrap();
    let id = task_id("orphan");
    let other_id = task_id("other");
    let ws_root = root.path().join("ws");
    let ws = oz_backend_direct::workspace::Workspace::at(&ws_root, &id);
    std::fs::create_dir_all(&ws_root).unwrap();
    ws.create(&ws_root, &oz_backend_direct::workspace::Marker::new("w1", Some(id.clone()), None, true)).unwrap();
    // What a setup command would leave: a process labelled with the task's OZ_RUN_ID.
    let mut setup = std::process::Command::new("sleep")
        .arg("300")
        .env(oz_core::runner::env::RUN_ID, &id)
        .process_group(0)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if !process::processes_of_task(&id).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let other = backend(&root, |c| c.worker_id = "w2".into());
    let keep = other.launch(sh(&other_id, "true").cleanup(false)).await.unwrap();
    assert!(keep.wait().await.succeeded());
    assert!(!process::processes_of_task(&id).is_empty(), "the setup process should be running");

    let restarted = backend(&root, |_| {});
    let recovered = restarted.recover().await.unwrap();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].task_id, id);
    match &recovered[0].action {
        RecoveryAction::NotStarted(why) => {
            assert!(why.contains("before the task's process started"), "{why}");
            assert!(why.contains("stopped 1 leftover process"), "{why}");
        }
        other => panic!("a task that never started is handed back to run again, not {other:?}"),
    }
    setup.wait().unwrap();
    assert!(process::processes_of_task(&id).is_empty(), "orphaned processes survived recovery");
    assert!(!restarted.workspace_path(&id).exists());
    assert!(restarted.workspace_path(&other_id).exists(), "another worker's workspace was touched");
}

#[tokio::test]
async fn bad_configuration_is_refused_clearly() {
    let err = DirectBackend::new(DirectConfig::new("w", "relative/path")).unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
    let err = DirectBackend::new(DirectConfig::new("../w", "/tmp/x")).unwrap_err();
    assert!(err.to_string().contains("worker_id"), "{err}");
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("file");
    std::fs::write(&file, b"").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = DirectConfig::new("w", root.path().join("ws"));
    config.target_dir = Some(file);
    assert!(DirectBackend::new(config).unwrap_err().to_string().contains("target_dir"));
}

/// A package cache: tasks of one key share a folder at `OZ_CACHE_DIR` that outlives them; another
/// key has its own; a task without a key, or a backend without a cache root, has none; a key that
/// is a path is refused.
#[tokio::test]
async fn tasks_of_one_cache_key_share_a_folder_that_outlives_them() {
    let root = tempfile::tempdir().unwrap();
    let caches = root.path().join("caches");
    let b = backend(&root, |c| c.cache_root = Some(caches.clone()));
    let cached = |id: &str, key: &str, script: &str| {
        let mut spec = sh(&task_id(id), script);
        spec.sandbox.cache = Some(key.into());
        spec
    };
    let append = "echo \"$OZ_RUN_ID\" >> \"$OZ_CACHE_DIR/runs\"; cat \"$OZ_CACHE_DIR/runs\" | wc -l";
    let first = run_to_end(&b, cached("cache-a1", "env-a", append)).await;
    assert!(first.outcome.succeeded(), "{first:?}");
    let second = run_to_end(&b, cached("cache-a2", "env-a", append)).await;
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "2", "the second task sees the first's file");
    let other = run_to_end(&b, cached("cache-b1", "env-b", append)).await;
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "1", "another key has its own folder");
    assert_eq!(std::fs::read_to_string(caches.join("env-a/runs")).unwrap().lines().count(), 2, "it outlives the tasks");
    let mode = std::fs::metadata(caches.join("env-a")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let none = run_to_end(&b, sh(&task_id("cache-none"), "echo \"[${OZ_CACHE_DIR-unset}]\"")).await;
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "[unset]");
    let uncached = backend(&root, |_| {});
    let without_root = run_to_end(&uncached, cached("cache-noroot", "env-a", "echo \"[${OZ_CACHE_DIR-unset}]\"")).await;
    assert_eq!(String::from_utf8_lossy(&without_root.stdout).trim(), "[unset]");
    let escape = b.launch(cached("cache-escape", "../escape", "true")).await.unwrap_err();
    assert!(escape.message.contains("cache"), "{}", escape.message);
    assert!(!root.path().join("escape").exists());
}

/// A removal cut short by a crash (the marker gone, files left) leaves a `.removing-` folder,
/// which a restarted backend finishes removing.
#[tokio::test]
async fn a_removal_cut_short_is_finished_on_recovery() {
    let root = tempfile::tempdir().unwrap();
    let half_removed = root.path().join("ws").join(".removing-run-1");
    std::fs::create_dir_all(half_removed.join("workspace/deep")).unwrap();
    std::fs::write(half_removed.join("oz-exit-status"), "0\n").unwrap();
    let b = backend(&root, |_| {});
    assert!(b.recover().await.unwrap().is_empty());
    assert!(!half_removed.exists(), "the half-removed workspace is gone");
    // And a workspace removed whole never shows under its own name on the way.
    let c = run_to_end(&b, sh(&task_id("removed"), "true")).await;
    assert!(c.outcome.succeeded());
    let left: Vec<_> = std::fs::read_dir(root.path().join("ws")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}
