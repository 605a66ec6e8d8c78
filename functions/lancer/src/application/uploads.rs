//! Raw data arriving: an upload streamed into the lake within its limits, and the ingestion
//! rules that turn a complete upload into a task, whether the object came through
//! `PUT /uploads` or an S3 event.

use serde::Serialize;
use tracing::info;
use utoipa::ToSchema;

use super::Service;
use crate::domain::ingest::RulePipeline;
use crate::domain::path::LakePath;
use crate::domain::pipeline::Pipeline;
use crate::domain::task::Task;
use crate::domain::tenant::Tenant;
use crate::error::{Error, Result};
use crate::ports::{ByteStream, Created, Stored};

/// What an upload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    /// Where the object landed, lake-relative.
    #[schema(value_type = String)]
    pub path: LakePath,
    /// The bytes written.
    pub size: u64,
    /// The ingestion task the upload completed, if a rule matched and every file it
    /// requires is present.
    pub task: Option<Task>,
    /// Or the pipeline it started, for a rule that names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
}

/// What a complete upload started.
#[derive(Debug)]
pub enum Ingested {
    /// A rule that names a script submitted this task.
    Task(Box<Created>),
    /// A rule that names a pipeline file started this pipeline.
    Pipeline(Box<Created<Pipeline>>),
}

impl Service {
    /// Stores a raw file under the tenant's `raw/<key>` and runs the ingestion rules on it.
    pub async fn upload(
        &self,
        tenant: &Tenant,
        key: &str,
        announced: Option<u64>,
        body: ByteStream,
    ) -> Result<Uploaded> {
        let (relative, size) = self.receive_upload(tenant, key, announced, body).await?;
        let registry = crate::telemetry::global();
        registry.add(crate::telemetry::UPLOADS, &[], 1.0);
        registry.add(crate::telemetry::UPLOAD_BYTES, &[], size as f64);
        let (task, pipeline) = match self.ingest(tenant, &relative).await? {
            Some(Ingested::Task(created)) => (Some(created.into_inner()), None),
            Some(Ingested::Pipeline(created)) => (None, Some(created.into_inner())),
            None => (None, None),
        };
        Ok(Uploaded {
            path: tenant.path(&relative),
            size,
            task,
            pipeline,
        })
    }

    /// Streams an upload to `raw/<key>` in the tenant's folder, within the size of one
    /// upload and the tenant's quota; `announced` is its declared length, if any, so an
    /// upload that cannot fit is refused before a byte of it is read. Answers where it
    /// landed (lake-relative) and its size.
    async fn receive_upload(
        &self,
        tenant: &Tenant,
        key: &str,
        announced: Option<u64>,
        body: ByteStream,
    ) -> Result<(LakePath, u64)> {
        let raw = LakePath::parse("raw", "raw")?;
        let relative = raw.join(&LakePath::parse("upload key", key)?);
        let limits = self.upload_limits;
        let path = tenant.path(&relative);
        let replaced = self.lake.stat(&path).await?.map_or(0, |stat| stat.size);
        let used = self
            .lake
            .usage(&tenant.path(&raw))
            .await?
            .saturating_sub(replaced);
        let room = limits.quota_bytes.saturating_sub(used);
        let over = |by_quota: bool| {
            Error::PayloadTooLarge(if by_quota {
                format!(
                    "the upload would take this tenant past its upload quota of {} bytes ({used} in use)",
                    limits.quota_bytes
                )
            } else {
                format!("an upload may be at most {} bytes", limits.max_bytes)
            })
        };
        let limit = limits.max_bytes.min(room);
        if announced.is_some_and(|size| size > limit) {
            return Err(over(room < limits.max_bytes));
        }
        match self.lake.put_stream(&path, body, limit).await? {
            Stored::Whole(size) => Ok((relative, size)),
            Stored::OverLimit => Err(over(room < limits.max_bytes)),
        }
    }

    /// Runs the ingestion rules on an object that arrived at lake-relative `key`
    /// (tenant folder excluded): creates the rule's task, or starts its pipeline, once its
    /// upload is complete.
    pub async fn ingest(&self, tenant: &Tenant, key: &LakePath) -> Result<Option<Ingested>> {
        let Some(rule) = self.ingest_rules.rule_for(key) else {
            return Ok(None);
        };
        let mut present = Vec::new();
        for required in rule.required_keys(key) {
            match self.lake.stat(&tenant.path(&required)).await? {
                Some(stat) => present.push((required, stat.version)),
                None => {
                    info!(rule = %rule.name, %key, missing = %required, "upload not complete yet");
                    return Ok(None);
                }
            }
        }
        if let Some(pipeline) = &rule.pipeline {
            let spec = match pipeline {
                RulePipeline::File(file) => self.scripts.pipeline(file).await?,
                RulePipeline::Inline(spec) => (**spec).clone(),
            };
            let key_of_upload = rule.idempotency_key(&present);
            let created = self
                .submit_pipeline(tenant, spec, Some(&key_of_upload))
                .await?;
            if let Created::New(pipeline) = &created {
                info!(rule = %rule.name, %key, pipeline = %pipeline.id, "ingestion pipeline started");
                ingested("pipeline");
            }
            return Ok(Some(Ingested::Pipeline(Box::new(created))));
        }
        let created = self
            .submit_task(tenant, rule.task_for(key, &present), None)
            .await?;
        if let Created::New(task) = &created {
            info!(rule = %rule.name, %key, task = %task.id, "ingestion task created");
            ingested("task");
        }
        Ok(Some(Ingested::Task(Box::new(created))))
    }
}

/// Counts an ingestion a rule started (a task or a pipeline).
fn ingested(what: &str) {
    crate::telemetry::global().add(crate::telemetry::INGESTIONS, &[("started", what)], 1.0);
}
