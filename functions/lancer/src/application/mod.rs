//! The use cases: what a tenant can ask of lancer, whoever carries the request (the REST
//! API, the Lambda ingestion path, the CLI's server, reconcile). Each takes parsed domain values and
//! the ports; none knows about HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::ingest::IngestRules;
use crate::domain::limits::{ScheduleLimits, UploadLimits};
use crate::domain::tenant::ApiKeys;
use crate::domain::tenant::Tenant;
use crate::error::{Error, Result};
use crate::ports::{Dispatcher, Lake, ModelStore, PipelineStore, Scripts, TaskStore};

mod artifacts;
mod changes;
mod fleet;
mod metrics;
mod models;
mod pipelines;
mod reconcile;
mod rows;
mod serving;
mod tasks;
mod uploads;

pub use changes::{TaskChange, TaskChanges};
pub use fleet::Fleet;
pub use models::{AliasChangeView, AliasHistory, AliasView};
pub use pipelines::Advanced;
pub use reconcile::{RoundReport, reconcile};
pub use rows::{MAX_ROWS, Rows, RowsRequest};
pub use serving::{ReplicaState, ReplicaView, Routed, ServingReport, ServingView};
pub use tasks::{LogRequest, MAX_LOG_CHUNK, TaskFilter, TaskLog, TaskProgress, cancel_in_store};
pub use uploads::{Ingested, Uploaded};

/// The ports and the operator's settings every use case runs against.
pub struct Service {
    /// Task records and their state machine.
    pub store: Arc<dyn TaskStore>,
    /// Pipeline and schedule records, and the step cache.
    pub pipelines: Arc<dyn PipelineStore>,
    /// Model records: each model's aliases and their histories.
    pub models: Arc<dyn ModelStore>,
    /// Datasets, models, raw uploads, logs and progress histories.
    pub lake: Arc<dyn Lake>,
    /// Where runners run: local subprocesses or Ray jobs.
    pub dispatcher: Arc<dyn Dispatcher>,
    /// The scripts tasks may name (`lancer-scripts.json` and what it registers).
    pub scripts: Arc<dyn Scripts>,
    /// `None`: open single-tenant mode.
    pub api_keys: Option<ApiKeys>,
    /// What to run when raw data arrives (`LANCER_INGEST_RULES`).
    pub ingest_rules: IngestRules,
    /// The size of one upload and each tenant's quota under `raw/`.
    pub upload_limits: UploadLimits,
    /// How many schedules a tenant keeps, and how often they may start runs.
    pub schedule_limits: ScheduleLimits,
    /// How long a running task may go without a heartbeat before reconcile counts its
    /// runner as lost (`LANCER_LEASE_SECS`).
    pub lease: Duration,
    /// This process's routes to the replicas that serve models, and their load.
    pub fleet: Arc<Fleet>,
}

impl Service {
    /// Who a request acts for, from its `Authorization` header (`Bearer <key>`): with API
    /// keys configured the key must be known; without them one open tenant owns the lake.
    pub fn tenant_of(&self, authorization: Option<&str>) -> Result<Tenant> {
        let Some(keys) = &self.api_keys else {
            return Ok(Tenant::single());
        };
        let header = authorization
            .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer <api key>".into()))?;
        let key = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or_else(|| {
                Error::Unauthorized("Authorization must be 'Bearer <api key>'".into())
            })?;
        let name = keys
            .tenant_of(key)
            .ok_or_else(|| Error::Unauthorized("unknown API key".into()))?;
        Ok(Tenant::keyed(name.clone()))
    }
}

impl AsRef<Service> for Service {
    fn as_ref(&self) -> &Service {
        self
    }
}

#[cfg(test)]
impl Service {
    /// A service over the in-memory fakes (one store for tasks, pipelines and models),
    /// with `scripts` registered.
    pub(crate) fn in_memory(scripts: crate::scripts::MemoryScripts) -> Self {
        use crate::store::memory::MemoryTaskStore;
        let store = Arc::new(MemoryTaskStore::new());
        Service {
            dispatcher: Arc::new(crate::dispatch::memory::RecordingDispatcher::new(
                store.clone(),
            )),
            store: store.clone(),
            pipelines: store.clone(),
            models: store,
            lake: Arc::new(crate::lake::memory::MemoryLake::new()),
            scripts: Arc::new(scripts),
            api_keys: None,
            ingest_rules: Default::default(),
            upload_limits: Default::default(),
            schedule_limits: Default::default(),
            lease: Duration::from_secs(30),
            fleet: Default::default(),
        }
    }
}
