//! [`PrincipalStore`] on SQLite: teams, users, credentials.

use async_trait::async_trait;
use jiff::Timestamp;
use oz_core::wire::admin::Role;

use super::rows::Stored;
use super::{SqliteStore, TeamTable, found, json, micros};
use crate::store::{ApiKeyRecord, KeyWithUser, PrincipalStore, SignInRecord, StoreError, TeamRecord, UserRecord};

/// The wire name of a serde unit enum (`"service_account"`), as its column stores it.
fn name_of<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

async fn insert_key<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    key: &ApiKeyRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, team_id, user_id, secret_hash, revoked, created_us, name, kind, role, worker_ids, \
         expires_us, revoked_us, server_admin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.id)
    .bind(&key.team_id)
    .bind(&key.user_id)
    .bind(&key.secret_hash)
    .bind(key.revoked_at.is_some())
    .bind(micros(key.created_at))
    .bind(&key.name)
    .bind(name_of(&key.kind))
    .bind(key.role.map(Role::as_str))
    .bind(json(&key.worker_ids))
    .bind(key.expires_at.map(micros))
    .bind(key.revoked_at.map(micros))
    .bind(key.server_admin)
    .execute(executor)
    .await?;
    Ok(())
}

#[async_trait]
impl PrincipalStore for SqliteStore {
    async fn create_team(&self, team: &TeamRecord) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO teams (id, name, created_us) VALUES (?, ?, ?)")
            .bind(&team.id)
            .bind(&team.name)
            .bind(micros(Timestamp::now()))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn teams(&self) -> Result<Vec<TeamRecord>, StoreError> {
        TeamRecord::all(sqlx::query_as("SELECT * FROM teams ORDER BY created_us, id").fetch_all(&self.pool).await?)
    }

    async fn team(&self, id: &str) -> Result<Option<TeamRecord>, StoreError> {
        TeamRecord::one(sqlx::query_as("SELECT * FROM teams WHERE id = ?").bind(id).fetch_optional(&self.pool).await?)
    }

    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, team_id, name, created_us, role, kind, disabled) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&user.id)
        .bind(&user.team_id)
        .bind(&user.name)
        .bind(micros(user.created_at))
        .bind(user.role.as_str())
        .bind(name_of(&user.kind))
        .bind(user.disabled)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn user(&self, team_id: &str, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.team_row(TeamTable::Users, team_id, id).await
    }

    async fn users(&self, team_id: &str) -> Result<Vec<UserRecord>, StoreError> {
        self.team_rows(TeamTable::Users, team_id).await
    }

    async fn update_user(&self, team_id: &str, id: &str, role: Role, disabled: bool) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET role = ?, disabled = ? WHERE team_id = ? AND id = ?")
            .bind(role.as_str())
            .bind(disabled)
            .bind(team_id)
            .bind(id)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        insert_key(&self.writer, key).await
    }

    async fn api_key(&self, id: &str) -> Result<Option<KeyWithUser>, StoreError> {
        let Some(key) = ApiKeyRecord::one(
            sqlx::query_as("SELECT * FROM api_keys WHERE id = ?").bind(id).fetch_optional(&self.pool).await?,
        )?
        else {
            return Ok(None);
        };
        let user = match &key.user_id {
            Some(user_id) => self.user(&key.team_id, user_id).await?,
            None => None,
        };
        Ok(Some(KeyWithUser { key, user }))
    }

    async fn api_keys(&self, team_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.team_rows(TeamTable::ApiKeys, team_id).await
    }

    async fn revoke_api_key(&self, team_id: &str, id: &str, at: Timestamp) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked = 1, revoked_us = COALESCE(revoked_us, ?) WHERE team_id = ? AND id = ?",
        )
        .bind(micros(at))
        .bind(team_id)
        .bind(id)
        .execute(&self.writer)
        .await?;
        found(done.rows_affected())
    }

    async fn replace_api_key(&self, old: &str, new: &ApiKeyRecord, at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked = 1, revoked_us = COALESCE(revoked_us, ?) WHERE team_id = ? AND id = ?",
        )
        .bind(micros(at))
        .bind(&new.team_id)
        .bind(old)
        .execute(&mut *tx)
        .await?;
        found(done.rows_affected())?;
        insert_key(&mut *tx, new).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_sign_in(&self, sign_in: &SignInRecord) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM sign_ins WHERE expires_us <= ?")
            .bind(micros(sign_in.created_at))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sign_ins (id, key_id, secret_hash, created_us, expires_us) VALUES (?, ?, ?, ?, ?)")
            .bind(&sign_in.id)
            .bind(&sign_in.key_id)
            .bind(&sign_in.secret_hash)
            .bind(micros(sign_in.created_at))
            .bind(micros(sign_in.expires_at))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sign_in(&self, id: &str) -> Result<Option<SignInRecord>, StoreError> {
        SignInRecord::one(
            sqlx::query_as("SELECT * FROM sign_ins WHERE id = ?").bind(id).fetch_optional(&self.pool).await?,
        )
    }

    async fn end_sign_in(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sign_ins WHERE id = ?").bind(id).execute(&self.writer).await?;
        Ok(())
    }
}
