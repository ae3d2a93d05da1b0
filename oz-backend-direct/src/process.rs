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

/// The script of the shell that wraps a task: it runs the task (not `exec`: it stays to see the end),
/// writes the exit code to the file named by its first argument and exits with that code. Only shell
/// builtins are used, so the task's `PATH` does not matter. A task killed by a signal is recorded as
/// 128 + the signal, as shells report it. The shell exports `PWD`, which the task did not ask for:
/// it is unset unless the second argument is `keep` (the task's environment has its own `PWD`).
/// (A `/bin/sh` that is bash also adds `SHLVL` and `_`; dash, the usual `/bin/sh`, adds nothing else.)
const WRAPPER: &str =
    r#"f=$1; [ "$2" = keep ] || unset PWD; shift 2; "$@"; s=$?; printf '%s\n' "$s" > "$f"; exit "$s""#;

/// The wrapping shell's `$0`, which is what `ps` shows for it.
const WRAPPER_NAME: &str = "oz-direct-task";

/// Spawns `argv` like [`spawn`], but under a `/bin/sh` that records the task's exit code in
/// `status_file` when it ends (see [`WRAPPER`]). The returned child is that shell, the leader of the
/// task's process group. `argv[0]` is looked up first (relative to `cwd`, or on the `PATH` of
/// `env`), so a missing or non-executable command is still an error here rather than a shell's 127.
pub fn spawn_recorded(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    limits: Limits,
    status_file: &Path,
) -> std::io::Result<Child> {
    let program = argv.first().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    check_command(program, path, cwd)?;
    let mut wrapped = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        WRAPPER.to_owned(),
        WRAPPER_NAME.to_owned(),
        status_file.display().to_string(),
        if env.iter().any(|(k, _)| k == "PWD") { "keep" } else { "unset" }.to_owned(),
    ];
    wrapped.extend(argv.iter().cloned());
    spawn(&wrapped, env, cwd, limits)
}

/// Whether `program` names an executable file: itself if it holds a `/` (relative to `cwd`), else the
/// first match on `path`.
fn check_command(program: &str, path: Option<&str>, cwd: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = cwd.join(program);
        return if executable(&p) {
            Ok(())
        } else if p.exists() {
            Err(std::io::ErrorKind::PermissionDenied.into())
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        };
    }
    let found = path
        .unwrap_or_default()
        .split(':')
        .map(|dir| if dir.is_empty() { cwd.to_path_buf() } else { cwd.join(dir) })
        .any(|dir| executable(&dir.join(program)));
    if found { Ok(()) } else { Err(std::io::ErrorKind::NotFound.into()) }
}

/// The start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22), if it exists.
/// With the pid it names one process for the life of the system: pids are recycled, start times
/// of one pid are not repeated.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses): field 3 (state) onwards.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start_time` and has not exited (a zombie
/// has).
pub fn is_running(pid: u32, start_time: u64) -> bool {
    process_alive(pid) && self::start_time(pid) == Some(start_time)
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

/// The resident memory of the processes of the group `pgid`, in bytes (from `/proc`; a process
/// that ends meanwhile is skipped).
pub fn group_resident_bytes(pgid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command's `(...)`: state, ppid, pgrp.
        let group = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(2)?.parse::<u32>().ok());
        if group != Some(pgid) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        total += kib.unwrap_or(0) * 1024;
    }
    total
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
