//! Pipelines in the task table: items `pipeline#<id>` with the record as JSON in `body`,
//! `pipeline_tenant` for `pipelines_by_tenant`, and `pipeline_active` only while the
//! pipeline runs or is a schedule, so the sparse `pipelines_active` index holds just what
//! reconcile looks after. The revision guards every write; keys are reserved by
//! `pipeline-key#<tenant>#<key>` items written in the same transaction.

use std::collections::HashMap;

use super::{
    DynamoTaskStore, Item, MAX_QUERY_PAGE, Reserved, aws_error, is_condition_failure, n, s,
};
use crate::domain::cache::Digest;
use crate::domain::pipeline::{Pipeline, PipelineId};
use crate::domain::task::TaskId;
use crate::domain::tenant::TenantName;
use crate::error::{Error, Result};
use crate::ports::{Created, PageToken, PipelinePage, PipelineStore};
use crate::store::{
    existing_pipeline_for_key, next_pipeline, page_limit, page_start, pipeline_not_found,
    pipeline_page_of, stored_task_id,
};
use async_trait::async_trait;

/// The index of a tenant's pipelines, keyed (`pipeline_tenant`, id).
pub const PIPELINES_BY_TENANT: &str = "pipelines_by_tenant";
/// The sparse index of running pipelines and schedules, keyed (`pipeline_active`, id): what
/// reconcile advances or fires.
pub const PIPELINES_ACTIVE: &str = "pipelines_active";
pub(super) const TENANT: &str = "pipeline_tenant";
pub(super) const ACTIVE: &str = "pipeline_active";
/// The one value of `pipeline_active`: the index is keyed by it.
const ACTIVE_VALUE: &str = "active";

fn item_id(id: &str) -> String {
    format!("pipeline#{id}")
}

fn item_of(pipeline: &Pipeline) -> Result<Item> {
    let mut item = HashMap::from([
        ("id".to_owned(), s(&item_id(pipeline.id.as_str()))),
        (TENANT.to_owned(), s(pipeline.tenant.as_str())),
        ("revision".to_owned(), n(pipeline.revision)),
        ("body".to_owned(), s(&serde_json::to_string(pipeline)?)),
    ]);
    if pipeline.status.is_active() {
        item.insert(ACTIVE.to_owned(), s(ACTIVE_VALUE));
    }
    Ok(item)
}

fn pipeline_of(item: &Item) -> Result<Pipeline> {
    let body = item
        .get("body")
        .and_then(|value| value.as_s().ok())
        .ok_or_else(|| Error::internal("pipeline item without a body"))?;
    serde_json::from_str(body).map_err(Error::internal)
}

impl DynamoTaskStore {
    async fn read_pipeline(&self, item_id: &str) -> Result<Option<Pipeline>> {
        self.item(item_id)
            .await?
            .as_ref()
            .map(pipeline_of)
            .transpose()
    }

    /// Newest first from one index, below `before`, until `want` are found.
    async fn query_pipelines(
        &self,
        index: &str,
        hash: (&str, &str),
        before: Option<&str>,
        want: usize,
    ) -> Result<Vec<Pipeline>> {
        let mut pipelines = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .scan_index_forward(false)
                .limit(want.min(MAX_QUERY_PAGE) as i32)
                .expression_attribute_names("#hash", hash.0)
                .expression_attribute_values(":hash", s(hash.1))
                .set_exclusive_start_key(start.take());
            query = match before {
                Some(before) => query
                    .key_condition_expression("#hash = :hash AND id < :before")
                    .expression_attribute_values(":before", s(&item_id(before))),
                None => query.key_condition_expression("#hash = :hash"),
            };
            let page = query.send().await.map_err(|err| aws_error("Query", err))?;
            for item in page.items() {
                pipelines.push(pipeline_of(item)?);
            }
            match page.last_evaluated_key() {
                Some(key) if pipelines.len() < want => start = Some(key.clone()),
                _ => break,
            }
        }
        pipelines.truncate(want);
        Ok(pipelines)
    }

    async fn create_keyed_pipeline(
        &self,
        pipeline: Pipeline,
        key: &str,
    ) -> Result<Created<Pipeline>> {
        let reservation = format!("pipeline-key#{}#{key}", pipeline.tenant);
        let item = item_of(&pipeline)?;
        let holder = match self
            .put_reserved(&reservation, "pipeline_id", pipeline.id.as_str(), item)
            .await?
        {
            Reserved::Written => return Ok(Created::New(pipeline)),
            Reserved::Taken(holder) => holder,
        };
        match holder {
            Some(id) => match self.read_pipeline(&item_id(&id)).await? {
                Some(existing) => existing_pipeline_for_key(existing, &pipeline),
                None => Err(Error::Conflict(
                    "idempotency key is being taken; try again".into(),
                )),
            },
            None => Err(Error::Conflict(format!(
                "pipeline {} already exists",
                pipeline.id
            ))),
        }
    }
}

#[async_trait]
impl PipelineStore for DynamoTaskStore {
    async fn create_pipeline(&self, pipeline: Pipeline) -> Result<Created<Pipeline>> {
        if let Some(key) = pipeline.spec.idempotency_key.clone() {
            return self.create_keyed_pipeline(pipeline, &key).await;
        }
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&pipeline)?))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match written {
            Ok(_) => Ok(Created::New(pipeline)),
            Err(err) if is_condition_failure(&err) => Err(Error::Conflict(format!(
                "pipeline {} already exists",
                pipeline.id
            ))),
            Err(err) => Err(aws_error("PutItem", err)),
        }
    }

    async fn pipeline(&self, id: &PipelineId) -> Result<Option<Pipeline>> {
        self.read_pipeline(&item_id(id.as_str())).await
    }

    async fn list_pipelines(
        &self,
        tenant: &TenantName,
        limit: usize,
        page_token: Option<&PageToken>,
    ) -> Result<PipelinePage> {
        let tenant = tenant.as_str();
        let before = page_start(page_token);
        let limit = page_limit(limit);
        let pipelines = self
            .query_pipelines(
                PIPELINES_BY_TENANT,
                (TENANT, tenant),
                before.as_deref(),
                limit + 1,
            )
            .await?;
        Ok(pipeline_page_of(pipelines, limit))
    }

    async fn active_pipelines(&self) -> Result<Vec<Pipeline>> {
        let mut running = self
            .query_pipelines(PIPELINES_ACTIVE, (ACTIVE, ACTIVE_VALUE), None, usize::MAX)
            .await?;
        running.reverse();
        Ok(running)
    }

    async fn update_pipeline(&self, next: Pipeline) -> Result<Pipeline> {
        let id = item_id(next.id.as_str());
        let current = self
            .read_pipeline(&id)
            .await?
            .ok_or_else(|| pipeline_not_found(next.id.as_str()))?;
        let next = next_pipeline(&current, next)?;
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(&next)?))
            .condition_expression("revision = :revision")
            .expression_attribute_values(":revision", n(current.revision))
            .send()
            .await;
        match written {
            Ok(_) => Ok(next),
            Err(err) if is_condition_failure(&err) => Err(Error::Stale(format!(
                "pipeline {} changed during the update",
                next.id
            ))),
            Err(err) => Err(aws_error("PutItem", err)),
        }
    }

    async fn cached_task(&self, tenant: &TenantName, digest: &Digest) -> Result<Option<TaskId>> {
        let (tenant, digest) = (tenant.as_str(), digest.as_str());
        let item = self.item(&cache_item_id(tenant, digest)).await?;
        item.as_ref()
            .and_then(|item| item.get("task_id")?.as_s().ok())
            .map(|id| stored_task_id(id))
            .transpose()
    }

    async fn remember_task(
        &self,
        tenant: &TenantName,
        digest: &Digest,
        task: &TaskId,
    ) -> Result<()> {
        let (tenant, digest, task) = (tenant.as_str(), digest.as_str(), task.as_str());
        let item = HashMap::from([
            ("id".to_owned(), s(&cache_item_id(tenant, digest))),
            ("task_id".to_owned(), s(task)),
        ]);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|err| aws_error("PutItem", err))?;
        Ok(())
    }
}

/// A cache entry's item: no tenant or status attribute, so no index sees it.
fn cache_item_id(tenant: &str, digest: &str) -> String {
    format!("cache#{tenant}#{digest}")
}
