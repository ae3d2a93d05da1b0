//! Live run events: every stored event is also published here, for Server-Sent Events subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::store::RunEventRecord;

/// Per-run broadcast channels, created on first use and dropped when nobody listens.
#[derive(Clone, Default)]
pub struct EventHub {
    channels: Arc<Mutex<HashMap<String, broadcast::Sender<RunEventRecord>>>>,
}

impl EventHub {
    /// Publishes an event to the run's live subscribers, if any.
    pub fn publish(&self, event: RunEventRecord) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = channels.get(&event.run_id)
            && tx.send(event.clone()).is_err()
        {
            channels.remove(&event.run_id);
        }
    }

    /// Subscribes to a run's future events.
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<RunEventRecord> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.entry(run_id.to_owned()).or_insert_with(|| broadcast::channel(1024).0).subscribe()
    }
}
