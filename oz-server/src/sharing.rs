//! Session sharing on the server ([`oz_core::sharing`]): a run's sharing is resolved when it is made
//! (its `share` targets found among its team's users) and stored with it; every access to a run
//! (its item, list, events, transcript, session, follow-ups, interrupt, cancel, the dashboard's
//! pages) is decided by [`run_access`] from the stored sharing and the caller's role. A run the
//! caller may not see is not found; one it may only watch is forbidden to steer.

use oz_core::sharing::{Access, Asker, RunSharing};
use oz_core::wire::api::AgentConfig;

use crate::auth::{Caller, Principal};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{RunRecord, StoreError};

/// The sharing of a run `team_id` makes with `config` (`session_sharing`); a 400 names what is
/// wrong with it, as the field `config` came in (`config`, or `agent_config` on a template).
pub(crate) async fn resolve(
    state: &AppState,
    team_id: &str,
    config: &AgentConfig,
    field: &str,
) -> Result<RunSharing, ResolveError> {
    let Some(sharing) = &config.session_sharing else { return Ok(RunSharing::default()) };
    let shares = sharing.shares().map_err(|e| ResolveError::Invalid(format!("{field}.session_sharing: {e}")))?;
    let users = if shares.iter().any(|s| matches!(s.target, oz_core::sharing::ShareTarget::User(_))) {
        state.store.users(team_id).await?
    } else {
        Vec::new()
    };
    RunSharing::resolve(&shares, sharing.public_access, |who| {
        users.iter().find(|u| u.id == who || u.name == who).map(|u| u.id.clone())
    })
    .map_err(|e| ResolveError::Invalid(format!("{field}.session_sharing: {e}")))
}

/// A template's (a schedule's, an integration's) `agent_config.session_sharing`, checked when it is
/// written as each run it makes will check it: a share that names nobody in the team is a 400 now,
/// not a run that cannot be made at the next tick or delivery.
pub(crate) async fn check_template(
    state: &AppState,
    team_id: &str,
    config: Option<&AgentConfig>,
) -> Result<(), ApiError> {
    let Some(config) = config else { return Ok(()) };
    match resolve(state, team_id, config, "agent_config").await {
        Ok(_) => Ok(()),
        Err(ResolveError::Invalid(detail)) => Err(ApiError::invalid(detail)),
        Err(ResolveError::Store(e)) => Err(e.into()),
    }
}

/// Why a run's sharing could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The caller's mistake.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("the store failed while reading the team's users")]
    Store(#[from] StoreError),
}

/// The link to a run's session: the dashboard's `/sessions/{id}`, which takes whoever may see the
/// run to its page.
pub fn session_link(public_url: &str, session_id: &str) -> String {
    format!("{}/sessions/{session_id}", public_url.trim_end_matches('/'))
}

/// The run whose session is `session_id`, if `caller` may see it (else not found).
pub(crate) async fn session_run(state: &AppState, caller: &Caller, session_id: &str) -> Result<RunRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("there is no session {session_id:?}"));
    let run = state.store.run_by_session(session_id).await?.ok_or_else(not_found)?;
    access_of(&run, caller).ok_or_else(not_found)?;
    Ok(run)
}

/// The asker a caller is.
fn asker(caller: &Caller) -> Asker<'_> {
    Asker { team_id: &caller.team_id, user_id: caller.user_id.as_deref(), role: caller.role }
}

/// What `caller` may do with `run`; `None`: the run is not theirs to see.
pub(crate) fn access_of(run: &RunRecord, caller: &Caller) -> Option<Access> {
    run.sharing.access_of(&run.team_id, run.creator_id.as_deref(), &asker(caller))
}

/// Run `run_id` and what the caller may do with it, or not found (also for a run of another team
/// that is not public, and for a workload token's any other run).
pub(crate) async fn run_access(
    state: &AppState,
    principal: &Principal,
    run_id: &str,
) -> Result<(RunRecord, Access), ApiError> {
    let not_found = || ApiError::not_found(format!("there is no run {run_id:?}"));
    match principal {
        // A runner's token is good for its own run (what it reports and follows), nothing else.
        Principal::Run(token) => {
            if token.run_id != run_id {
                return Err(not_found());
            }
            let run = state.store.run(&token.team_id, run_id).await?.ok_or_else(not_found)?;
            Ok((run, Access::Edit))
        }
        Principal::Key(caller) => {
            let run = state.store.run_by_id(run_id).await?.ok_or_else(not_found)?;
            let access = access_of(&run, caller).ok_or_else(not_found)?;
            Ok((run, access))
        }
    }
}

/// Whether `principal` may still follow run `run_id`, as on a new request: its credential still
/// authenticates and, for a key, the run is still shared with it (a share taken away, a role
/// lowered, a user disabled end what it follows). Open streams and sockets check it every
/// `credential_recheck`.
pub(crate) async fn may_still_follow(state: &AppState, principal: &Principal, run_id: &str) -> Result<(), ApiError> {
    let fresh = crate::auth::still_valid(state, principal).await?;
    run_access(state, &fresh, run_id).await.map(drop)
}

/// Run `run_id`, if `caller` may steer it (follow-ups, interrupt, cancel): not found if it may not
/// see it, forbidden if it may only watch.
pub(crate) async fn steerable_run(state: &AppState, caller: &Caller, run_id: &str) -> Result<RunRecord, ApiError> {
    let (run, access) = run_access(state, &Principal::Key(caller.clone()), run_id).await?;
    if access < Access::Edit {
        return Err(ApiError::forbidden(format!(
            "run {run_id} is shared with you to watch, not to steer (session_sharing: view)"
        )));
    }
    Ok(run)
}
