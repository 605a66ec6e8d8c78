//! Model records in the same SQLite file as the tasks: one row per (tenant, model), the
//! record as JSON, its revision guarding each write.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteTaskStore;
use crate::domain::model::{ModelName, ModelRecord};
use crate::domain::tenant::TenantName;
use crate::error::{Error, Result};
use crate::ports::ModelStore;
use crate::store::next_model;

fn select(conn: &Connection, tenant: &str, model: &str) -> Result<Option<ModelRecord>> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM models WHERE tenant = ?1 AND model = ?2",
            [tenant, model],
            |row| row.get(0),
        )
        .optional()?;
    body.map(|body| serde_json::from_str(&body).map_err(Error::internal))
        .transpose()
}

fn update(conn: &mut Connection, next: ModelRecord) -> Result<ModelRecord> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (tenant, model) = (next.tenant.to_string(), next.model.to_string());
    let current = select(&tx, &tenant, &model)?;
    let read_at = next.revision as i64;
    let next = next_model(current.as_ref(), next)?;
    let body = serde_json::to_string(&next)?;
    // The transaction already holds the write lock; the guard keeps the rule in the SQL.
    let written = tx.execute(
        "INSERT INTO models (tenant, model, revision, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, model) DO UPDATE SET revision = ?3, body = ?4
             WHERE models.revision = ?5",
        params![tenant, model, next.revision as i64, body, read_at],
    )?;
    if written != 1 {
        return Err(Error::Stale(format!(
            "model {} changed during the update",
            next.model
        )));
    }
    tx.commit()?;
    Ok(next)
}

#[async_trait]
impl ModelStore for SqliteTaskStore {
    async fn model_record(
        &self,
        tenant: &TenantName,
        model: &ModelName,
    ) -> Result<Option<ModelRecord>> {
        let (tenant, model) = (tenant.to_string(), model.to_string());
        self.with_conn(move |conn| select(conn, &tenant, &model))
            .await
    }

    async fn update_model(&self, next: ModelRecord) -> Result<ModelRecord> {
        self.with_conn(move |conn| update(conn, next)).await
    }

    async fn delete_model_record(&self, tenant: &TenantName, model: &ModelName) -> Result<()> {
        let (tenant, model) = (tenant.to_string(), model.to_string());
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM models WHERE tenant = ?1 AND model = ?2",
                [tenant, model],
            )?;
            Ok(())
        })
        .await
    }

    async fn serving_models(&self) -> Result<Vec<ModelRecord>> {
        self.with_conn(|conn| {
            // The condition is the partial index's own, so SQLite reads the index alone.
            let mut statement = conn.prepare(
                "SELECT body FROM models INDEXED BY models_served
                 WHERE json_extract(body, '$.serving') IS NOT NULL OR json_extract(body, '$.replicas') IS NOT NULL",
            )?;
            let bodies = statement.query_map([], |row| row.get::<_, String>(0))?;
            bodies
                .map(|body| serde_json::from_str(&body?).map_err(Error::internal))
                .collect()
        })
        .await
    }
}
