//! The agent command line and environment, built from an assignment exactly as the Oz worker does.
//!
//! Command: `<entrypoint> agent run --task-id <id> --sandboxed --server-root-url <url>
//! [--environment <id>] [--model <m>] [--skill <s>] [--mcp <json>] [--harness <type>] [--share <v>]
//! --idle-on-complete [<dur>] <additional_oz_args...>`.
//!
//! Environment, in order (later wins): `TASK_ID`, `GIT_TERMINAL_PROMPT=0`, `GH_PROMPT_DISABLED=1`,
//! `WARP_SERVER_ROOT_URL`, the assignment's `env_vars`, then ours (`OZ_HARNESS_COMMAND` for the command
//! harness), then the worker's configured variables. The backend adds its own after these.

use oz_core::wire::worker::TaskAssignment;

/// What the worker adds to every task.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    /// The program: `/agent/entrypoint.sh` in a container, the `oz` binary on a host.
    pub entrypoint: String,
    /// The control plane's root URL.
    pub server_root_url: String,
    /// `--idle-on-complete` with this duration (`None` = the bare flag, as Oz sends it).
    pub idle_on_complete: Option<String>,
    /// Variables from the worker's configuration (`-e KEY=VALUE`), added last.
    pub extra_env: Vec<(String, String)>,
}

/// The argv of the agent for `assignment`.
pub fn agent_argv(assignment: &TaskAssignment, options: &CommandOptions) -> Vec<String> {
    let mut argv = vec![
        options.entrypoint.clone(),
        "agent".into(),
        "run".into(),
        "--task-id".into(),
        assignment.task_id.clone(),
        "--sandboxed".into(),
        "--server-root-url".into(),
        options.server_root_url.clone(),
    ];
    let snapshot = assignment.task.agent_config_snapshot.as_ref();
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            argv.push(name.into());
            argv.push(v);
        }
    };
    flag("--environment", snapshot.and_then(|s| s.environment_id.clone()));
    flag("--model", snapshot.and_then(|s| s.model_id.clone()));
    flag("--skill", snapshot.and_then(|s| s.skill_spec.clone()));
    flag("--mcp", snapshot.and_then(|s| s.mcp_servers.as_ref()).map(|m| m.to_string()));
    flag("--harness", snapshot.and_then(|s| s.harness.as_ref()).and_then(|h| h.kind.clone()));
    flag("--share", snapshot.and_then(|s| s.session_sharing.as_ref()).map(|s| s.to_string()));
    argv.push("--idle-on-complete".into());
    if let Some(d) = &options.idle_on_complete {
        argv.push(d.clone());
    }
    argv.extend(assignment.additional_oz_args.iter().cloned());
    argv
}

/// The environment of the agent for `assignment`, in Oz's order (later entries win).
pub fn agent_env(assignment: &TaskAssignment, options: &CommandOptions) -> Vec<(String, String)> {
    let mut env = vec![
        ("TASK_ID".to_owned(), assignment.task_id.clone()),
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
        ("GH_PROMPT_DISABLED".to_owned(), "1".to_owned()),
        ("WARP_SERVER_ROOT_URL".to_owned(), options.server_root_url.clone()),
    ];
    env.extend(assignment.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let command = assignment
        .task
        .agent_config_snapshot
        .as_ref()
        .and_then(|s| s.harness.as_ref())
        .and_then(|h| h.command.as_ref());
    if let Some(argv) = command {
        env.push(("OZ_HARNESS_COMMAND".to_owned(), serde_json::to_string(argv).unwrap_or_default()));
    }
    env.extend(options.extra_env.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use oz_core::wire::worker::ServerMessage;

    fn assignment(snapshot: serde_json::Value) -> TaskAssignment {
        let json = serde_json::json!({"type": "task_assignment", "data": {
            "task_id": "run-1",
            "task": {"id": "run-1", "title": "t", "task_definition": {"prompt": "p"}, "created_at": "2026-01-01T00:00:00Z",
                     "updated_at": "2026-01-01T00:00:00Z", "owner": {"Type": "TEAM", "Id": "t"}, "agent_config_snapshot": snapshot},
            "env_vars": {"OZ_WORKLOAD_TOKEN": "ozw_x", "TASK_ID": "overridden?"},
            "additional_oz_args": ["--debug"]
        }});
        match ServerMessage::from_json(&json.to_string()).unwrap().unwrap() {
            ServerMessage::TaskAssignment(a) => *a,
            _ => unreachable!(),
        }
    }

    fn options() -> CommandOptions {
        CommandOptions {
            entrypoint: "/agent/entrypoint.sh".into(),
            server_root_url: "http://cp:8080".into(),
            idle_on_complete: None,
            extra_env: vec![("EXTRA".into(), "1".into())],
        }
    }

    /// The order of the flags is Oz's, pinned.
    #[test]
    fn argv_follows_the_oz_order() {
        let a = assignment(
            serde_json::json!({"environment_id": "env-1", "model_id": "m", "skill_spec": "s", "mcp_servers": {"x": {"url": "u"}},
            "harness": {"type": "claude"}, "session_sharing": {"public_access": "VIEWER"}}),
        );
        assert_eq!(
            agent_argv(&a, &options()),
            [
                "/agent/entrypoint.sh",
                "agent",
                "run",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                "http://cp:8080",
                "--environment",
                "env-1",
                "--model",
                "m",
                "--skill",
                "s",
                "--mcp",
                r#"{"x":{"url":"u"}}"#,
                "--harness",
                "claude",
                "--share",
                r#"{"public_access":"VIEWER"}"#,
                "--idle-on-complete",
                "--debug"
            ]
        );
        let bare = assignment(serde_json::json!({}));
        let mut o = options();
        o.idle_on_complete = Some("5m".into());
        assert_eq!(
            agent_argv(&bare, &o),
            [
                "/agent/entrypoint.sh",
                "agent",
                "run",
                "--task-id",
                "run-1",
                "--sandboxed",
                "--server-root-url",
                "http://cp:8080",
                "--idle-on-complete",
                "5m",
                "--debug"
            ]
        );
    }

    #[test]
    fn env_follows_the_oz_order_and_later_wins() {
        let a = assignment(serde_json::json!({"harness": {"type": "command", "command": ["./agent.sh", "--fast"]}}));
        let env = agent_env(&a, &options());
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "TASK_ID",
                "GIT_TERMINAL_PROMPT",
                "GH_PROMPT_DISABLED",
                "WARP_SERVER_ROOT_URL",
                "OZ_WORKLOAD_TOKEN",
                "TASK_ID",
                "OZ_HARNESS_COMMAND",
                "EXTRA"
            ]
        );
        assert_eq!(env[6].1, r#"["./agent.sh","--fast"]"#);
    }
}
