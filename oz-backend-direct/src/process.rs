//! Processes on the host: spawning a task in its own process group with limits and a minimal
//! environment, stopping the group (SIGTERM, grace, SIGKILL), and finding a task's processes by the
//! `OZ_RUN_ID` they carry, even those that left the group.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Limits applied to a task's processes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// `RLIMIT_AS`, when a memory limit is set.
    pub max_address_space: Option<u64>,
}

/// Spawns `argv` in `cwd` with exactly `env`, in a new process group, with piped stdio.
pub fn spawn(argv: &[String], env: &[(String, String)], cwd: &Path, limits: Limits) -> std::io::Result<Child> {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    apply_limits(&mut command, limits);
    command.spawn()
}

#[allow(unsafe_code)]
fn apply_limits(command: &mut Command, limits: Limits) {
    // SAFETY: the closure runs in the child between fork and exec; it only calls setrlimit(2), which
    // is async-signal-safe, allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            rlimit::setrlimit(rlimit::Resource::CORE, 0, 0)?;
            let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
            let nofile = limits.max_open_files.min(hard);
            rlimit::setrlimit(rlimit::Resource::NOFILE, nofile, nofile)?;
            if let Some(bytes) = limits.max_address_space {
                rlimit::setrlimit(rlimit::Resource::AS, bytes, bytes)?;
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group `pgid`; false if the group no longer exists.
pub fn signal_group(pgid: u32, signal: Signal) -> bool {
    i32::try_from(pgid).is_ok_and(|p| killpg(Pid::from_raw(p), signal).is_ok())
}

/// Whether any process of the group `pgid` exists (zombies included).
pub fn group_exists(pgid: u32) -> bool {
    i32::try_from(pgid).is_ok_and(|p| killpg(Pid::from_raw(p), None).is_ok())
}

/// Whether the process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(p), None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); it is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids of live processes whose environment holds `OZ_RUN_ID=<task_id>` (readable for the same
/// user or root). This finds a task's processes even if they left its process group.
pub fn processes_of_task(task_id: &str) -> Vec<u32> {
    let needle = format!("{}={task_id}", oz_core::runner::env::RUN_ID);
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .filter(|&pid| process_alive(pid))
        .collect()
}

/// Kills every process of the task: its group and any stragglers found by [`processes_of_task`].
/// SIGTERM first, then SIGKILL after `grace` for whatever is still there.
pub async fn stop_task(pgid: Option<u32>, task_id: &str, grace: Duration) {
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::SIGTERM);
    }
    for pid in processes_of_task(task_id) {
        let _ = i32::try_from(pid).map(|p| kill(Pid::from_raw(p), Signal::SIGTERM));
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        let group_left = pgid.is_some_and(group_has_live_members);
        if !group_left && processes_of_task(task_id).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_task(pgid, task_id);
}

/// SIGKILLs the group and the task's stragglers at once.
pub fn kill_task(pgid: Option<u32>, task_id: &str) {
    if let Some(pgid) = pgid {
        signal_group(pgid, Signal::SIGKILL);
    }
    for pid in processes_of_task(task_id) {
        let _ = i32::try_from(pid).map(|p| kill(Pid::from_raw(p), Signal::SIGKILL));
    }
}

/// Whether the group has members that are not zombies.
fn group_has_live_members(pgid: u32) -> bool {
    if !group_exists(pgid) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())).any(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // Fields after the command: state ppid pgrp ...
            stat.rsplit_once(") ").is_some_and(|(_, rest)| {
                let mut fields = rest.split_whitespace();
                let state = fields.next();
                let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
                state != Some("Z") && pgrp == Some(pgid)
            })
        })
    })
}
