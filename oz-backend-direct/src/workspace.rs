//! The per-task folder: its layout, the marker that names its owner, and its removal.
//!
//! ```text
//! <workspace_root>/<task_id>/     mode 0700
//!   oz-task.json                  marker: worker id, task id, execution id, cleanup flag, and once
//!                                 the task runs: its pid, that pid's start time, its deadline
//!   oz-exit-status                the task's exit code, written by the shell that wraps it
//!   workspace/                    the task's working directory (unless target_dir is set)
//!   home/                         HOME
//!   tmp/                          TMPDIR
//!   gitconfig                     GIT_CONFIG_GLOBAL (empty: the host's ~/.gitconfig is not used)
//!   environment.env               OZ_ENVIRONMENT_FILE, written by setup_command
//! ```

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DirectError;

/// The marker file's name.
pub const MARKER: &str = "oz-task.json";
/// The exit status file's name.
pub const EXIT_STATUS: &str = "oz-exit-status";

/// What the marker records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The worker that made the folder.
    pub worker_id: String,
    /// The task, or `None` for a prepared (warm) folder not yet given a task.
    pub task_id: Option<String>,
    /// The execution id.
    pub execution_id: Option<String>,
    /// Whether the folder is to be removed after the task.
    pub cleanup: bool,
    /// Once the task runs: the pid of its wrapping shell, which is also its process group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// That process's start time, in clock ticks since boot (`/proc/<pid>/stat` field 22). A
    /// restarted worker adopts `pid` only if its start time still matches, so a recycled pid is never
    /// taken for the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// When the task's timeout runs out, in seconds since the Unix epoch; a reattached task is
    /// still stopped then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
}

impl Marker {
    /// A marker for a folder of `worker_id`, before its task runs.
    pub fn new(
        worker_id: impl Into<String>,
        task_id: Option<String>,
        execution_id: Option<String>,
        cleanup: bool,
    ) -> Self {
        Self {
            worker_id: worker_id.into(),
            task_id,
            execution_id,
            cleanup,
            pid: None,
            start_time: None,
            deadline: None,
        }
    }
}

/// Paths of one task's folder.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// `<root>/<name>`.
    pub root: PathBuf,
}

fn io_err(path: &Path, source: std::io::Error) -> DirectError {
    DirectError::Workspace { path: path.display().to_string(), source }
}

impl Workspace {
    /// The folder for `name` under `root` (not created).
    pub fn at(root: &Path, name: &str) -> Self {
        Self { root: root.join(name) }
    }
    /// The working directory.
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("workspace")
    }
    /// HOME.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    /// TMPDIR.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// GIT_CONFIG_GLOBAL.
    pub fn gitconfig(&self) -> PathBuf {
        self.root.join("gitconfig")
    }
    /// OZ_ENVIRONMENT_FILE.
    pub fn environment_file(&self) -> PathBuf {
        self.root.join("environment.env")
    }
    /// The marker.
    pub fn marker_path(&self) -> PathBuf {
        self.root.join(MARKER)
    }
    /// Where the shell wrapping the task writes the task's exit code (decimal, then a newline) when
    /// the task ends. It is how a restarted worker, which is not the task's parent and so cannot wait
    /// for it, learns how it ended. Absent if the wrapping shell was killed.
    pub fn exit_status_file(&self) -> PathBuf {
        self.root.join(EXIT_STATUS)
    }

    /// The exit code recorded in [`Workspace::exit_status_file`], if one was.
    pub fn read_exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(self.exit_status_file()).ok()?.trim().parse().ok()
    }

    /// Creates the folder (0700, failing if it exists), its subfolders and the marker.
    pub fn create(&self, workspace_root: &Path, marker: &Marker) -> Result<(), DirectError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(workspace_root)
            .map_err(|e| io_err(workspace_root, e))?;
        std::fs::DirBuilder::new().mode(0o700).create(&self.root).map_err(|e| io_err(&self.root, e))?;
        // The mode given to mkdir is masked by the umask; make sure it is 0700.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&self.root, e))?;
        self.write_marker(marker)?;
        for dir in [self.work_dir(), self.home(), self.tmp()] {
            std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| io_err(&dir, e))?;
        }
        std::fs::write(self.gitconfig(), b"").map_err(|e| io_err(&self.gitconfig(), e))?;
        Ok(())
    }

    /// Rewrites the marker (atomically: write then rename).
    pub fn write_marker(&self, marker: &Marker) -> Result<(), DirectError> {
        let tmp = self.root.join(format!(".{MARKER}.tmp"));
        let json = serde_json::to_vec_pretty(marker).map_err(|e| io_err(&tmp, std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, self.marker_path()).map_err(|e| io_err(&self.marker_path(), e))
    }

    /// Reads the marker, if the folder has a readable one.
    pub fn read_marker(&self) -> Option<Marker> {
        let bytes = std::fs::read(self.marker_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Moves a folder kept (cleanup off) by an ended execution of the same task out of the way of
    /// a new one (a run continued after its end): to `<name>.before-<unix seconds>`, without its
    /// marker, so it stays for whoever kept it and the worker no longer takes it for a task. A
    /// folder of a task whose process still runs, or of another task, is left as it is.
    pub fn set_aside_if_ended(&self, task_id: &str) -> Result<Option<PathBuf>, DirectError> {
        if !self.root.exists() {
            return Ok(None);
        }
        // A kept folder loses its marker when its task ends; one that still has it is a task's.
        if let Some(marker) = self.read_marker() {
            let running = matches!((marker.pid, marker.start_time), (Some(pid), Some(start)) if crate::process::is_running(pid, start));
            if marker.task_id.as_deref() != Some(task_id) || running || marker.pid.is_none() {
                return Ok(None);
            }
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let name = self.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let aside = self.root.with_file_name(format!("{name}.before-{secs}"));
        std::fs::rename(&self.root, &aside).map_err(|e| io_err(&self.root, e))?;
        match std::fs::remove_file(aside.join(MARKER)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&aside, e)),
            _ => {}
        }
        Ok(Some(aside))
    }

    /// Removes the folder and everything in it, even read-only subfolders.
    ///
    /// It is renamed to [`REMOVING_PREFIX`]`<name>` first (atomic): a removal cut short by a crash
    /// (its marker may be gone with half its files) leaves a folder `recover` knows to finish.
    pub fn remove(&self) -> Result<(), DirectError> {
        let doomed = match (self.root.parent(), self.root.file_name()) {
            (Some(parent), Some(name)) => parent.join(format!("{REMOVING_PREFIX}{}", name.to_string_lossy())),
            _ => self.root.clone(),
        };
        let target = match std::fs::rename(&self.root, &doomed) {
            Ok(()) => doomed,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // A leftover of the same name is in the way: removed in place instead.
            Err(_) => self.root.clone(),
        };
        remove_tree(&target).map_err(|source| DirectError::Cleanup { path: target.display().to_string(), source })
    }
}

/// The name prefix of a workspace being removed ([`Workspace::remove`]).
pub const REMOVING_PREFIX: &str = ".removing-";

/// `rm -rf` that also copes with folders the task made read-only.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                make_writable(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_the_layout_privately_and_removes_read_only_trees() {
        let root = tempfile::tempdir().unwrap();
        let ws = Workspace::at(root.path(), "t1");
        let mut marker = Marker::new("w", Some("t1".into()), None, true);
        marker.pid = Some(42);
        marker.start_time = Some(7);
        ws.create(root.path(), &marker).unwrap();
        let mode = std::fs::metadata(&ws.root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(ws.work_dir().is_dir() && ws.home().is_dir() && ws.tmp().is_dir() && ws.gitconfig().is_file());
        assert_eq!(ws.read_marker(), Some(marker.clone()));
        assert!(ws.create(root.path(), &marker).is_err(), "an existing folder must not be reused");
        let locked = ws.work_dir().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::write(locked.join("f"), b"x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        ws.remove().unwrap();
        assert!(!ws.root.exists());
        ws.remove().unwrap();
    }
}
