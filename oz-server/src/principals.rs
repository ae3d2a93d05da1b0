//! Teams, users and credentials as operations: what the admin REST endpoints and `oz-server admin`
//! both do, checked the same way. A credential's secret exists only in the [`KeyCreated`] its creation
//! or rotation returns; the store keeps its SHA-256.

use jiff::{SignedDuration, Timestamp};
use oz_core::wire::admin::{
    KeyCreated, KeyItem, KeyKind, NewKey, NewTeam, NewUser, PrincipalKind, Role, TeamCreated, UserItem, UserUpdate,
};

use crate::dispatch::ws::validate_worker_id;
use crate::error::ApiError;
use crate::secrets;
use crate::store::{ApiKeyRecord, Store, StoreError, TeamRecord, UserRecord};

/// Why an operation on principals was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The team has no such user or key.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this to that credential.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
}

impl From<PrincipalError> for ApiError {
    fn from(e: PrincipalError) -> Self {
        match e {
            PrincipalError::Invalid(m) => ApiError::invalid(m),
            PrincipalError::NotFound(m) => ApiError::not_found(m),
            PrincipalError::Forbidden(m) => ApiError::forbidden(m),
            PrincipalError::Store(s) => s.into(),
        }
    }
}

type Result<T> = std::result::Result<T, PrincipalError>;

/// The longest name accepted for a team, user or key.
const MAX_NAME: usize = 200;

fn name(field: &str, text: &str, required: bool) -> Result<String> {
    oz_core::validate::text(field, text, MAX_NAME, !required).map_err(|e| PrincipalError::Invalid(e.to_string()))?;
    if required && text.trim().is_empty() {
        return Err(PrincipalError::Invalid(format!("{field} is required")));
    }
    Ok(text.trim().to_owned())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A user as the API shows it.
pub fn user_item(u: &UserRecord) -> UserItem {
    UserItem {
        id: u.id.clone(),
        team_id: u.team_id.clone(),
        name: u.name.clone(),
        kind: u.kind,
        role: u.role,
        disabled: u.disabled,
        created_at: u.created_at,
    }
}

/// A credential as the API shows it (never its secret).
pub fn key_item(k: &ApiKeyRecord) -> KeyItem {
    KeyItem {
        id: k.id.clone(),
        team_id: k.team_id.clone(),
        name: k.name.clone(),
        kind: k.kind,
        user_id: k.user_id.clone(),
        role: k.role,
        worker_ids: k.worker_ids.clone(),
        created_at: k.created_at,
        expires_at: k.expires_at,
        revoked_at: k.revoked_at,
    }
}

/// Makes a team with its first admin and that admin's API key. `server_admin`: the key may also
/// create teams (the first team of a server).
pub async fn create_team(store: &dyn Store, new: &NewTeam, server_admin: bool) -> Result<TeamCreated> {
    let team_name = name("name", &new.name, true)?;
    let team_id = new_id("team");
    store.create_team(&TeamRecord { id: team_id.clone(), name: team_name.clone() }).await?;
    let admin = UserRecord {
        id: new_id("user"),
        team_id: team_id.clone(),
        name: format!("{team_name} admin"),
        kind: PrincipalKind::User,
        role: Role::Admin,
        disabled: false,
        created_at: Timestamp::now(),
    };
    store.create_user(&admin).await?;
    let minted = secrets::mint(secrets::API_KEY_PREFIX);
    let mut key = ApiKeyRecord::new(minted.id, team_id.clone(), minted.hash);
    key.user_id = Some(admin.id.clone());
    key.name = "first admin key".into();
    key.server_admin = server_admin;
    store.create_api_key(&key).await?;
    Ok(TeamCreated {
        team_id,
        name: team_name,
        admin: user_item(&admin),
        key: KeyCreated { key: minted.text, item: key_item(&key) },
    })
}

/// Adds a user or service account to a team.
pub async fn create_user(store: &dyn Store, team_id: &str, new: &NewUser) -> Result<UserItem> {
    let user = UserRecord {
        id: new_id(if new.kind == PrincipalKind::ServiceAccount { "sa" } else { "user" }),
        team_id: team_id.to_owned(),
        name: name("name", &new.name, true)?,
        kind: new.kind,
        role: new.role,
        disabled: false,
        created_at: Timestamp::now(),
    };
    store.create_user(&user).await?;
    Ok(user_item(&user))
}

/// Changes a user's role or disables it (its keys are refused from the next request on).
pub async fn update_user(store: &dyn Store, team_id: &str, id: &str, update: &UserUpdate) -> Result<UserItem> {
    let mut user =
        store.user(team_id, id).await?.ok_or_else(|| PrincipalError::NotFound(format!("there is no user {id:?}")))?;
    user.role = update.role.unwrap_or(user.role);
    user.disabled = update.disabled.unwrap_or(user.disabled);
    store.update_user(team_id, id, user.role, user.disabled).await?;
    Ok(user_item(&user))
}

/// Issues a credential. An API key acts as `new.user_id` (default `acting_user`), at most
/// `new.role` and never above that user's role. A worker credential is bound to its worker ids, and
/// an id already bound to another live credential of the team is refused (rotate that one instead).
pub async fn create_key(
    store: &dyn Store,
    team_id: &str,
    acting_user: Option<&str>,
    new: &NewKey,
) -> Result<KeyCreated> {
    let key_name = name("name", &new.name, false)?;
    let expires_at = match new.expires_in_secs {
        Some(0) => return Err(PrincipalError::Invalid("expires_in_secs must be positive".into())),
        Some(secs) => {
            let secs =
                i64::try_from(secs).map_err(|_| PrincipalError::Invalid("expires_in_secs is too large".into()))?;
            Some(
                Timestamp::now()
                    .checked_add(SignedDuration::from_secs(secs))
                    .map_err(|_| PrincipalError::Invalid("expires_in_secs is too large".into()))?,
            )
        }
        None => None,
    };
    let minted = secrets::mint(secrets::API_KEY_PREFIX);
    let mut key = ApiKeyRecord::new(minted.id, team_id, minted.hash);
    key.name = key_name;
    key.kind = new.kind;
    key.expires_at = expires_at;
    match new.kind {
        KeyKind::Api => {
            if !new.worker_ids.is_empty() {
                return Err(PrincipalError::Invalid("worker_ids apply to worker credentials (kind: worker)".into()));
            }
            let user_id = new
                .user_id
                .as_deref()
                .or(acting_user)
                .ok_or_else(|| PrincipalError::Invalid("user_id is required: the user this key acts as".into()))?;
            let user = store
                .user(team_id, user_id)
                .await?
                .ok_or_else(|| PrincipalError::Invalid(format!("user_id: there is no user {user_id:?}")))?;
            if let Some(role) = new.role
                && role > user.role
            {
                return Err(PrincipalError::Invalid(format!(
                    "role: {role} is above the user's role ({}); a key never grants more than its user has",
                    user.role
                )));
            }
            key.user_id = Some(user.id);
            key.role = new.role;
        }
        KeyKind::Worker => {
            if new.worker_ids.is_empty() {
                return Err(PrincipalError::Invalid("worker_ids: a worker credential needs at least one".into()));
            }
            if new.user_id.is_some() || new.role.is_some() {
                return Err(PrincipalError::Invalid(
                    "user_id and role apply to API keys, not worker credentials".into(),
                ));
            }
            for id in &new.worker_ids {
                validate_worker_id(id).map_err(|e| PrincipalError::Invalid(e.detail))?;
            }
            let now = Timestamp::now();
            for other in store.api_keys(team_id).await? {
                let live = other.revoked_at.is_none() && other.expires_at.is_none_or(|at| at > now);
                if let Some(taken) = other.worker_ids.iter().find(|w| live && new.worker_ids.contains(w)) {
                    return Err(PrincipalError::Invalid(format!(
                        "worker_ids: {taken:?} already has a live credential ({}); rotate or revoke it first",
                        other.id
                    )));
                }
            }
            key.worker_ids = new.worker_ids.clone();
        }
    }
    store.create_api_key(&key).await?;
    Ok(KeyCreated { key: minted.text, item: key_item(&key) })
}

/// Replaces a live credential with a new one of the same kind, user, role, workers and remaining
/// lifetime; the old one is refused from the next request on.
/// The replacement keeps every right of the old key, so rotating a server admin's key takes a server
/// admin (`by_server_admin`): a team admin would otherwise mint themselves one.
pub async fn rotate_key(store: &dyn Store, team_id: &str, id: &str, by_server_admin: bool) -> Result<KeyCreated> {
    let now = Timestamp::now();
    let old = store
        .api_keys(team_id)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| PrincipalError::NotFound(format!("there is no key {id:?}")))?;
    if old.revoked_at.is_some() {
        return Err(PrincipalError::Invalid(format!("key {id:?} is revoked; create a new one instead")));
    }
    if old.server_admin && !by_server_admin {
        return Err(PrincipalError::Forbidden(format!(
            "key {id:?} is a server admin's: only a server admin rotates it"
        )));
    }
    let minted = secrets::mint(secrets::API_KEY_PREFIX);
    let new =
        ApiKeyRecord { id: minted.id, secret_hash: minted.hash, created_at: now, revoked_at: None, ..old.clone() };
    store.replace_api_key(&old.id, &new, now).await?;
    Ok(KeyCreated { key: minted.text, item: key_item(&new) })
}

/// Revokes a credential; it is refused from the next request on.
pub async fn revoke_key(store: &dyn Store, team_id: &str, id: &str) -> Result<KeyItem> {
    store.revoke_api_key(team_id, id, Timestamp::now()).await.map_err(|e| match e {
        StoreError::NotFound => PrincipalError::NotFound(format!("there is no key {id:?}")),
        other => other.into(),
    })?;
    let key = store
        .api_keys(team_id)
        .await?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| PrincipalError::NotFound(format!("there is no key {id:?}")))?;
    Ok(key_item(&key))
}
