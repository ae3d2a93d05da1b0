//! [`SecretStore`] on SQLite: sealed values only.

use async_trait::async_trait;

use super::rows::Stored;
use jiff::Timestamp;
use oz_core::wire::admin::GitProvider;

use super::{SqliteStore, found, json, micros};
use crate::store::{SecretRecord, SecretStore, StoreError};

#[async_trait]
impl SecretStore for SqliteStore {
    async fn put_secret(&self, s: &SecretRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secrets (team_id, name, sealed, updated_by, created_us, updated_us) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (team_id, name) DO UPDATE SET sealed = excluded.sealed, updated_by = excluded.updated_by, \
             updated_us = excluded.updated_us",
        )
        .bind(&s.team_id)
        .bind(&s.name)
        .bind(&s.sealed)
        .bind(&s.updated_by)
        .bind(micros(s.created_at))
        .bind(micros(s.updated_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn secret(&self, team_id: &str, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query_as("SELECT * FROM secrets WHERE team_id = ? AND name = ?")
            .bind(team_id)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        SecretRecord::one(row)
    }

    async fn secrets(&self, team_id: &str) -> Result<Vec<SecretRecord>, StoreError> {
        let rows = sqlx::query_as("SELECT * FROM secrets WHERE team_id = ? ORDER BY name")
            .bind(team_id)
            .fetch_all(&self.pool)
            .await?;
        SecretRecord::all(rows)
    }

    async fn all_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        SecretRecord::all(sqlx::query_as("SELECT * FROM secrets ORDER BY team_id, name").fetch_all(&self.pool).await?)
    }

    async fn reseal_secret(&self, team_id: &str, name: &str, sealed: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE secrets SET sealed = ? WHERE team_id = ? AND name = ?")
            .bind(sealed)
            .bind(team_id)
            .bind(name)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }

    async fn put_git_provider(&self, team_id: &str, host: &str, provider: &GitProvider) -> Result<(), StoreError> {
        let now = micros(Timestamp::now());
        sqlx::query(
            "INSERT INTO git_providers (team_id, host, provider, created_us, updated_us) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (team_id, host) DO UPDATE SET provider = excluded.provider, updated_us = excluded.updated_us",
        )
        .bind(team_id)
        .bind(host)
        .bind(json(provider))
        .bind(now)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn git_providers(&self, team_id: &str) -> Result<Vec<(String, GitProvider)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT host, provider FROM git_providers WHERE team_id = ? ORDER BY host")
                .bind(team_id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(host, provider)| {
                let provider = serde_json::from_str(&provider)
                    .map_err(|e| StoreError::Corrupt { what: "git_providers.provider", message: e.to_string() })?;
                Ok((host, provider))
            })
            .collect()
    }

    async fn delete_git_provider(&self, team_id: &str, host: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM git_providers WHERE team_id = ? AND host = ?")
            .bind(team_id)
            .bind(host)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }

    async fn delete_secret(&self, team_id: &str, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE team_id = ? AND name = ?")
            .bind(team_id)
            .bind(name)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }
}
