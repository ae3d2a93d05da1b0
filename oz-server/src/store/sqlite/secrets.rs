//! [`SecretStore`] on SQLite: sealed values only.

use async_trait::async_trait;

use super::rows::Stored;
use super::{SqliteStore, found, micros};
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

    async fn delete_secret(&self, team_id: &str, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE team_id = ? AND name = ?")
            .bind(team_id)
            .bind(name)
            .execute(&self.writer)
            .await?;
        found(done.rows_affected())
    }
}
