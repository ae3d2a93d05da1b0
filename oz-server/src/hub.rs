//! Live run events: every stored event is also published here, for Server-Sent Events subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, broadcast};

use crate::store::RunEventRecord;

/// Per-run broadcast channels, created on first use and dropped when nobody listens.
#[derive(Clone, Default)]
pub struct EventHub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<RunEventRecord>>>>,
    /// Poked by every state event, for whoever acts on any run's changes (post-backs to providers).
    state_changes: Arc<Notify>,
}

impl EventHub {
    /// Publishes an event to the run's live subscribers, if any.
    pub fn publish(&self, event: RunEventRecord) {
        if event.kind() == "state" {
            self.state_changes.notify_one();
        }
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(&event.run_id)
            && tx.send(event.clone()).is_err()
        {
            channels.remove(&event.run_id);
        }
    }

    /// Notified (one stored permit, so no change is missed between waits) whenever a run's state
    /// changes.
    pub fn state_changes(&self) -> Arc<Notify> {
        self.state_changes.clone()
    }

    /// Subscribes to a run's future events.
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<RunEventRecord> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.entry(run_id.to_owned()).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }
}
