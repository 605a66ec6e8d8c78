//! Pipelines in the same SQLite file as the tasks: one row each, the record as JSON, and
//! the columns its indexes and its compare-and-set need.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{SqliteTaskStore, is_unique_violation};
use crate::domain::cache::Digest;
use crate::domain::pipeline::{Pipeline, PipelineId, PipelineStatus};
use crate::domain::task::TaskId;
use crate::domain::tenant::TenantName;
use crate::error::{Error, Result};
use crate::ports::{Created, PageToken, PipelinePage, PipelineStore};
use crate::store::{
    existing_pipeline_for_key, next_pipeline, page_limit, page_start, pipeline_not_found,
    pipeline_page_of, stored_task_id,
};

fn to_json(pipeline: &Pipeline) -> Result<String> {
    serde_json::to_string(pipeline).map_err(Error::internal)
}

fn from_json(body: &str) -> Result<Pipeline> {
    serde_json::from_str(body).map_err(Error::internal)
}

fn select(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Pipeline>> {
    let mut statement = conn.prepare_cached(sql)?;
    let bodies = statement
        .query_map(params, |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    bodies.iter().map(|body| from_json(body)).collect()
}

fn select_one(conn: &Connection, id: &str) -> Result<Option<Pipeline>> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM pipelines WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()?;
    body.as_deref().map(from_json).transpose()
}

fn insert(conn: &mut Connection, pipeline: Pipeline) -> Result<Created<Pipeline>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let key = pipeline.spec.idempotency_key.clone();
    let inserted = tx.execute(
        "INSERT INTO pipelines (id, tenant, status, revision, idempotency_key, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            pipeline.id.as_str(),
            pipeline.tenant.as_str(),
            pipeline.status.as_str(),
            pipeline.revision as i64,
            key,
            to_json(&pipeline)?,
        ],
    );
    match inserted {
        Ok(_) => {
            tx.commit()?;
            Ok(Created::New(pipeline))
        }
        Err(err) if is_unique_violation(&err) && key.is_some() => {
            let holder: Option<String> = tx
                .query_row(
                    "SELECT body FROM pipelines WHERE tenant = ?1 AND idempotency_key = ?2",
                    params![pipeline.tenant.as_str(), key],
                    |row| row.get(0),
                )
                .optional()?;
            match holder {
                Some(body) => existing_pipeline_for_key(from_json(&body)?, &pipeline),
                None => Err(Error::Conflict(format!(
                    "pipeline {} already exists",
                    pipeline.id
                ))),
            }
        }
        Err(err) => Err(Error::internal(err)),
    }
}

fn update(conn: &mut Connection, next: Pipeline) -> Result<Pipeline> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current =
        select_one(&tx, next.id.as_str())?.ok_or_else(|| pipeline_not_found(next.id.as_str()))?;
    let next = next_pipeline(&current, next)?;
    let written = tx.execute(
        "UPDATE pipelines SET status = ?1, revision = ?2, body = ?3
             WHERE id = ?4 AND revision = ?5",
        params![
            next.status.as_str(),
            next.revision as i64,
            to_json(&next)?,
            next.id.as_str(),
            current.revision as i64,
        ],
    )?;
    if written != 1 {
        return Err(Error::Stale(format!(
            "pipeline {} changed during the update",
            next.id
        )));
    }
    tx.commit()?;
    Ok(next)
}

#[async_trait]
impl PipelineStore for SqliteTaskStore {
    async fn create_pipeline(&self, pipeline: Pipeline) -> Result<Created<Pipeline>> {
        self.with_conn(move |conn| insert(conn, pipeline)).await
    }

    async fn pipeline(&self, id: &PipelineId) -> Result<Option<Pipeline>> {
        let id = id.to_string();
        self.with_conn(move |conn| select_one(conn, &id)).await
    }

    async fn list_pipelines(
        &self,
        tenant: &TenantName,
        limit: usize,
        page_token: Option<&PageToken>,
    ) -> Result<PipelinePage> {
        let before = page_start(page_token);
        let tenant = tenant.to_string();
        let limit = page_limit(limit);
        self.with_conn(move |conn| {
            let pipelines = select(
                conn,
                "SELECT body FROM pipelines WHERE tenant = ?1 AND (?2 IS NULL OR id < ?2)
                     ORDER BY id DESC LIMIT ?3",
                params![tenant, before, limit as i64 + 1],
            )?;
            Ok(pipeline_page_of(pipelines, limit))
        })
        .await
    }

    async fn active_pipelines(&self) -> Result<Vec<Pipeline>> {
        self.with_conn(|conn| {
            select(
                conn,
                "SELECT body FROM pipelines WHERE status IN (?1, ?2) ORDER BY id",
                [
                    PipelineStatus::Running.as_str(),
                    PipelineStatus::Scheduled.as_str(),
                ],
            )
        })
        .await
    }

    async fn update_pipeline(&self, next: Pipeline) -> Result<Pipeline> {
        self.with_conn(move |conn| update(conn, next)).await
    }

    async fn cached_task(&self, tenant: &TenantName, digest: &Digest) -> Result<Option<TaskId>> {
        let (tenant, digest) = (tenant.to_string(), digest.to_string());
        let id: Option<String> = self
            .with_conn(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT task_id FROM cache WHERE tenant = ?1 AND digest = ?2",
                        params![tenant, digest],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await?;
        id.as_deref().map(stored_task_id).transpose()
    }

    async fn remember_task(
        &self,
        tenant: &TenantName,
        digest: &Digest,
        task: &TaskId,
    ) -> Result<()> {
        let (tenant, digest, task) = (tenant.to_string(), digest.to_string(), task.to_string());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO cache (tenant, digest, task_id) VALUES (?1, ?2, ?3)",
                params![tenant, digest, task],
            )?;
            Ok(())
        })
        .await
    }
}
