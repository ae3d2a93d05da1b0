//! Runs: their ids, the Oz run states and the one transition function every state change goes through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The longest id we accept, for run, task and execution ids alike.
pub const MAX_ID_LEN: usize = 128;

/// Checks that `value` is a plausible opaque id: 1..=128 characters of ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `.`. Ids end up in paths, labels and URLs, so anything else is refused.
pub fn validate_id(kind: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(kind, "must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(Error::invalid(kind, format!("is {} bytes long; the limit is {MAX_ID_LEN}", value.len())));
    }
    if value.starts_with('.') {
        return Err(Error::invalid(kind, "must not start with '.'"));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(Error::invalid(
            kind,
            format!("contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"),
        ));
    }
    Ok(())
}

/// The id of a run. In the Oz API the same value is also the run's `task_id`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A fresh random id (a UUID v4 in its hyphenated form).
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Parses and validates an id received from outside.
    pub fn parse(value: &str) -> Result<Self, Error> {
        validate_id("run id", value)?;
        Ok(Self(value.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The state of a run, exactly as the Oz API names them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// Recorded, waiting for a worker.
    Queued,
    /// Offered to a worker, not yet claimed.
    Pending,
    /// A worker claimed it and is preparing the sandbox.
    Claimed,
    /// The agent is running.
    #[serde(rename = "INPROGRESS")]
    InProgress,
    /// The agent finished its work.
    Succeeded,
    /// The run failed for a reason on the user's side (their command, their image, their setup).
    Failed,
    /// The agent is waiting for a person (for example, an approval).
    Blocked,
    /// The run failed because of the platform (worker, backend, infrastructure).
    Error,
    /// Someone cancelled it.
    Cancelled,
}

impl RunState {
    /// Every state, in the order the Oz API documents them.
    pub const ALL: [RunState; 9] = [
        RunState::Queued,
        RunState::Pending,
        RunState::Claimed,
        RunState::InProgress,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Blocked,
        RunState::Error,
        RunState::Cancelled,
    ];

    /// The wire name (`"INPROGRESS"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "QUEUED",
            RunState::Pending => "PENDING",
            RunState::Claimed => "CLAIMED",
            RunState::InProgress => "INPROGRESS",
            RunState::Succeeded => "SUCCEEDED",
            RunState::Failed => "FAILED",
            RunState::Blocked => "BLOCKED",
            RunState::Error => "ERROR",
            RunState::Cancelled => "CANCELLED",
        }
    }

    /// True for states a run never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Error | RunState::Cancelled)
    }

    /// Whether a run may move from `self` to `to`. The table:
    ///
    /// | from | to |
    /// |---|---|
    /// | QUEUED | PENDING, CLAIMED, CANCELLED, ERROR |
    /// | PENDING | QUEUED (rejected or worker gone), CLAIMED, CANCELLED, ERROR |
    /// | CLAIMED | INPROGRESS, SUCCEEDED, FAILED, ERROR, CANCELLED, QUEUED (worker gone before start) |
    /// | INPROGRESS | BLOCKED, SUCCEEDED, FAILED, ERROR, CANCELLED |
    /// | BLOCKED | INPROGRESS, SUCCEEDED, FAILED, ERROR, CANCELLED |
    /// | terminal | nothing (but see [`RunState::reopen`]) |
    ///
    /// Staying in the same state is not a transition and is refused, so that a duplicate message is
    /// noticed rather than silently re-applied.
    pub fn can_transition_to(self, to: RunState) -> bool {
        use RunState::*;
        match self {
            Queued => matches!(to, Pending | Claimed | Cancelled | Error),
            Pending => matches!(to, Queued | Claimed | Cancelled | Error),
            Claimed => matches!(to, InProgress | Succeeded | Failed | Error | Cancelled | Queued),
            InProgress => matches!(to, Blocked | Succeeded | Failed | Error | Cancelled),
            Blocked => matches!(to, InProgress | Succeeded | Failed | Error | Cancelled),
            Succeeded | Failed | Error | Cancelled => false,
        }
    }

    /// The one transition function: returns the new state, or an error naming both states.
    pub fn transition(self, to: RunState) -> Result<RunState, Error> {
        if self.can_transition_to(to) { Ok(to) } else { Err(Error::IllegalTransition { from: self, to }) }
    }

    /// The one way out of an end: a follow-up to an ended run continues it in a new execution,
    /// which waits in the queue like a new run (QUEUED). Only a terminal state reopens; it is not
    /// in [`RunState::can_transition_to`]'s table, so no worker message, lease or report can
    /// bring an ended run back by accident: only the control plane's follow-up path calls this.
    pub fn reopen(self) -> Result<RunState, Error> {
        if self.is_terminal() {
            Ok(RunState::Queued)
        } else {
            Err(Error::IllegalTransition { from: self, to: RunState::Queued })
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| Error::invalid("run state", format!("{s:?} is not one of QUEUED, PENDING, CLAIMED, INPROGRESS, SUCCEEDED, FAILED, BLOCKED, ERROR, CANCELLED")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use RunState::*;

    /// The full table, written out independently of `can_transition_to`'s match, checked for all 81 pairs.
    #[test]
    fn every_pair_follows_the_table() {
        let allowed: &[(RunState, RunState)] = &[
            (Queued, Pending),
            (Queued, Claimed),
            (Queued, Cancelled),
            (Queued, Error),
            (Pending, Queued),
            (Pending, Claimed),
            (Pending, Cancelled),
            (Pending, Error),
            (Claimed, InProgress),
            (Claimed, Succeeded),
            (Claimed, Failed),
            (Claimed, Error),
            (Claimed, Cancelled),
            (Claimed, Queued),
            (InProgress, Blocked),
            (InProgress, Succeeded),
            (InProgress, Failed),
            (InProgress, Error),
            (InProgress, Cancelled),
            (Blocked, InProgress),
            (Blocked, Succeeded),
            (Blocked, Failed),
            (Blocked, Error),
            (Blocked, Cancelled),
        ];
        let mut checked = 0;
        for from in RunState::ALL {
            for to in RunState::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
                match from.transition(to) {
                    Ok(next) => {
                        assert!(expected, "{from} -> {to} accepted");
                        assert_eq!(next, to);
                    }
                    Err(Error::IllegalTransition { from: f, to: t }) => {
                        assert!(!expected, "{from} -> {to} refused");
                        assert_eq!((f, t), (from, to));
                    }
                    Err(other) => panic!("unexpected error {other}"),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 81);
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for state in RunState::ALL.into_iter().filter(|s| s.is_terminal()) {
            assert!(RunState::ALL.iter().all(|to| !state.can_transition_to(*to)));
        }
        assert_eq!(RunState::ALL.iter().filter(|s| s.is_terminal()).count(), 4);
    }

    #[test]
    fn only_an_ended_run_reopens_and_it_goes_back_to_the_queue() {
        for state in RunState::ALL {
            match state.reopen() {
                Ok(to) => {
                    assert!(state.is_terminal(), "{state} reopened");
                    assert_eq!(to, Queued);
                }
                Err(Error::IllegalTransition { from, to }) => {
                    assert!(!state.is_terminal(), "{state} did not reopen");
                    assert_eq!((from, to), (state, Queued));
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_wire_names() {
        for state in RunState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
            assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), state);
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), state);
        }
        assert_eq!(serde_json::to_string(&InProgress).unwrap(), "\"INPROGRESS\"");
        assert!("IN_PROGRESS".parse::<RunState>().is_err());
    }

    #[test]
    fn run_ids_refuse_what_could_escape() {
        assert!(RunId::parse("0b5c1b0e-2f7a-4f55-9d6c-6f0d3a2d1e11").is_ok());
        for bad in ["", "..", "../etc", "a/b", "a b", "a\0b", ".hidden", &"x".repeat(129), "é"] {
            assert!(RunId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<RunId>("\"../x\"").is_err());
    }
}
