//! The worker's messages to the control plane, waiting to be written to its socket. They outlive
//! connections (a task that ends while the worker is disconnected is reported when it is back) and,
//! with a file, the worker's own process: each change is written to the file (a new file renamed
//! over the old, so a crash leaves the old or the new, never half of one) and a restarted worker
//! starts from it. A message may so be sent twice (written, then the worker died before the file
//! said so); the control plane treats a repeated claim or outcome as the no-op it is.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use oz_core::wire::worker::WorkerMessage;
use tracing::warn;

/// The queue, and where it is kept.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<WorkerMessage>,
    file: Option<PathBuf>,
}

impl Outbox {
    /// An outbox kept in `file` (none: in memory only), with what the file holds from an earlier
    /// process of this worker. An unreadable file is said and set aside (renamed `.bad`).
    pub fn open(file: Option<PathBuf>) -> Self {
        let mut queue = VecDeque::new();
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    for line in text.lines().filter(|l| !l.trim().is_empty()) {
                        match WorkerMessage::from_json(line) {
                            Ok(Some(message)) => queue.push_back(message),
                            _ => {
                                warn!(path = %path.display(), "an unreadable message in the worker's outbox file; set aside");
                                let _ = std::fs::rename(path, path.with_extension("bad"));
                                queue.clear();
                                break;
                            }
                        }
                    }
                    if !queue.is_empty() {
                        tracing::info!(
                            messages = queue.len(),
                            "resending what an earlier run of this worker had not sent"
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %path.display(), "could not read the worker's outbox file: {e}"),
            }
        }
        Self { queue, file }
    }

    /// Adds a message at the end.
    pub fn push(&mut self, message: WorkerMessage) {
        self.queue.push_back(message);
        self.save();
    }

    /// The first message, if any.
    pub fn front(&self) -> Option<&WorkerMessage> {
        self.queue.front()
    }

    /// Drops the first message (it was written to the socket).
    pub fn pop(&mut self) {
        if self.queue.pop_front().is_some() {
            self.save();
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        let temp = path.with_extension("new");
        let written = std::fs::File::create(&temp).and_then(|mut f| {
            for message in &self.queue {
                if let Ok(line) = message.to_json() {
                    writeln!(f, "{line}")?;
                }
            }
            f.sync_data()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
            warn!(path = %path.display(), "could not save the worker's outbox (it is kept in memory): {e}");
        }
    }
}

/// The tasks this worker has claimed and not yet seen end, kept beside the outbox, so that a
/// restarted worker can hand back those it claimed and never started (no sandbox of theirs was
/// found): their runs are queued again instead of waiting out their lease.
#[derive(Debug, Default)]
pub struct Claims {
    ids: std::collections::BTreeSet<String>,
    file: Option<PathBuf>,
}

impl Claims {
    /// The claims kept in `file`, and those an earlier process of this worker left there.
    pub fn open(file: Option<PathBuf>) -> (Self, Vec<String>) {
        let earlier = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|text| text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        (Self { ids: Default::default(), file }, earlier)
    }

    /// Notes a claim.
    pub fn add(&mut self, task_id: &str) {
        if self.ids.insert(task_id.to_owned()) {
            self.save();
        }
    }

    /// Forgets a claim (its task ended).
    pub fn remove(&mut self, task_id: &str) {
        if self.ids.remove(task_id) {
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.file else { return };
        let temp = path.with_extension("claims-new");
        let text: String = self.ids.iter().map(|id| format!("{id}\n")).collect();
        if let Err(e) = std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, path)) {
            warn!(path = %path.display(), "could not save the worker's claims: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use oz_core::wire::worker::{TaskClaimed, TaskCompleted};

    use super::*;

    fn completed(id: &str) -> WorkerMessage {
        WorkerMessage::TaskCompleted(TaskCompleted {
            task_id: id.into(),
            message: "done".into(),
            task_state: None,
            execution_id: None,
        })
    }

    #[test]
    fn what_was_not_sent_is_there_for_the_next_process() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.outbox");
        let mut outbox = Outbox::open(Some(file.clone()));
        outbox.push(WorkerMessage::TaskClaimed(TaskClaimed {
            task_id: "a".into(),
            worker_id: "w".into(),
            execution_id: None,
        }));
        outbox.push(completed("a"));
        outbox.push(completed("b"));
        outbox.pop();
        drop(outbox);
        // A new process of the worker.
        let mut again = Outbox::open(Some(file.clone()));
        assert_eq!(again.len(), 2);
        assert_eq!(again.front(), Some(&completed("a")));
        again.pop();
        again.pop();
        assert!(Outbox::open(Some(file)).is_empty());
    }

    #[test]
    fn claims_left_by_an_earlier_process_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.claims");
        let (mut claims, earlier) = Claims::open(Some(file.clone()));
        assert!(earlier.is_empty());
        claims.add("a");
        claims.add("b");
        claims.remove("a");
        drop(claims);
        let (_, earlier) = Claims::open(Some(file));
        assert_eq!(earlier, ["b"]);
    }

    #[test]
    fn an_unreadable_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.outbox");
        std::fs::write(&file, "{not json\n").unwrap();
        assert!(Outbox::open(Some(file.clone())).is_empty());
        assert!(file.with_extension("bad").exists());
    }
}
