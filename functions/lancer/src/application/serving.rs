//! Serving a model through its aliases: the declaration (`PUT /models/{id}/serving`), the
//! serving round that keeps each served version's replicas at what its load wants, and the
//! routing of one request to a ready replica. The decisions are the domain's
//! (`domain::serving`); this module reads and writes the record by compare-and-set, starts
//! and stops the replicas' tasks, and keeps the process's routing table (`Fleet`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::Service;
use super::fleet::{InFlight, ModelKey, ROUTES_FRESH_FOR, ReadyReplica, Routes};

/// How often a request that waits for a replica to start reads the routes again.
const WAITING_REFRESH: Duration = Duration::from_millis(50);
use crate::domain::model::{AliasName, ModelName, ModelRecord};
use crate::domain::serving::{Replica, ReplicaPlan, Serving, ServingRequest, ServingSpec};
use crate::domain::task::{Lineage, Task, TaskId, TaskSpec, TaskStatus};
use crate::domain::tenant::Tenant;
use crate::domain::validate::{ArtifactKind, check_spec};
use crate::error::{Error, Resource, Result};
use crate::telemetry;

/// A model's serving as the API shows it: the declaration, and each replica that runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServingView {
    /// The model.
    pub model: String,
    /// How each version an alias names is served.
    pub declaration: ServingSpec,
    /// When it was declared.
    pub updated_at: DateTime<Utc>,
    /// The tenant whose key declared it.
    pub updated_by: String,
    /// The replicas that run now, one serving task each.
    pub replicas: Vec<ReplicaView>,
    /// Replicas wanted now, by version (a version missing or at 0 is scaled to zero).
    #[schema(value_type = BTreeMap<String, u32>)]
    pub wanted: BTreeMap<u64, u32>,
}

/// One replica: a serving task for one version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplicaView {
    /// The version it serves.
    pub version: u64,
    /// Its serving task (its log, record and place in the console).
    pub task_id: String,
    /// `starting` until its endpoint is reported, then `ready`.
    pub state: ReplicaState,
    /// When it was started.
    pub started_at: DateTime<Utc>,
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Its task waits for a slot or its script has not reported an endpoint yet.
    Starting,
    /// Its script reported an endpoint.
    Ready,
    /// Its task ended; the next serving round replaces it.
    Ended,
}

/// What a serving round did, over every served model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServingReport {
    /// Models looked after.
    pub models: usize,
    /// Replicas started.
    pub started: usize,
    /// Replicas stopped (scaled down, or no longer named).
    pub stopped: usize,
    /// Replicas found ended on their own.
    pub ended: usize,
    /// Models whose round failed (retried next round).
    pub errors: usize,
}

/// A request's replica: where to send it, which version answers, and its hold (counted in
/// flight until dropped).
#[derive(Debug)]
pub struct Routed {
    /// Where the replica listens.
    pub addr: SocketAddr,
    /// The model version that answers.
    pub version: u64,
    /// The replica's task.
    pub task: TaskId,
    /// Counts the request in flight on the replica.
    pub hold: InFlight,
}

/// The idempotency key of a replica's task: one task per slot, whoever starts it.
fn replica_key(model: &ModelName, slot: u64) -> String {
    format!("lancer-serving/{model}/{slot}")
}

/// The task a replica runs: the declared script over the model at its version.
fn replica_spec(model: &ModelName, spec: &ServingSpec, version: u64, slot: u64) -> TaskSpec {
    let name = format!("{model}-v{version}");
    TaskSpec {
        name: if name.len() <= crate::domain::path::MAX_NAME_BYTES {
            name
        } else {
            model.to_string()
        },
        script: spec.script.clone(),
        input: format!("{}@{version}", ArtifactKind::Model.path_of(model.as_name())),
        output: String::new(),
        params: spec.params.clone(),
        resources: spec.resources.clone(),
        // A replica that ends is replaced by the serving round, in a new slot.
        max_attempts: 1,
        idempotency_key: Some(replica_key(model, slot)),
    }
}

impl Service {
    /// Declares how a model's aliased versions are served; replicas of an older
    /// declaration are replaced by the next round.
    pub async fn declare_serving(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        request: ServingRequest,
    ) -> Result<ServingView> {
        let spec = request.parse()?;
        let versions = self.model_versions(tenant, model).await?;
        // The declaration is checked as the task each replica will be.
        let sample = replica_spec(model, &spec, versions.last().copied().unwrap_or(1), 0);
        check_spec(&sample)?;
        self.scripts.content(&spec.script).await?;
        let record = self
            .change_record(tenant, model, |record, now| {
                record.serving = Some(Serving {
                    spec: spec.clone(),
                    tenant_root: tenant.root.clone(),
                    updated_at: now,
                    updated_by: tenant.name.clone(),
                });
                Ok(true)
            })
            .await?;
        info!(tenant = %tenant.name, %model, script = %spec.script, "serving declared");
        self.fleet
            .publish((tenant.name.clone(), model.clone()), None);
        self.serving_view(&record).await
    }

    /// A model's serving declaration and replicas.
    pub async fn model_serving(&self, tenant: &Tenant, model: &ModelName) -> Result<ServingView> {
        let record = self.models.model_record(&tenant.name, model).await?;
        match record {
            Some(record) if record.serving.is_some() => self.serving_view(&record).await,
            _ => Err(Error::not_found(Resource::Serving, model.as_str())),
        }
    }

    /// Stops serving a model: the next round stops its replicas; its aliases stay.
    pub async fn stop_serving(&self, tenant: &Tenant, model: &ModelName) -> Result<()> {
        let mut found = false;
        self.change_record(tenant, model, |record, _| {
            found = record.serving.take().is_some();
            Ok(found)
        })
        .await?;
        if !found {
            return Err(Error::not_found(Resource::Serving, model.as_str()));
        }
        info!(tenant = %tenant.name, %model, "serving stopped");
        Ok(())
    }

    async fn serving_view(&self, record: &ModelRecord) -> Result<ServingView> {
        let serving = record
            .serving
            .as_ref()
            .ok_or_else(|| Error::not_found(Resource::Serving, record.model.as_str()))?;
        let mut replicas = Vec::with_capacity(record.replicas.len());
        for replica in &record.replicas {
            let task = self.store.get(&replica.task).await?;
            replicas.push(ReplicaView {
                version: replica.version,
                task_id: replica.task.to_string(),
                state: replica_state(task.as_ref()),
                started_at: replica.started_at,
            });
        }
        Ok(ServingView {
            model: record.model.to_string(),
            declaration: serving.spec.clone(),
            updated_at: serving.updated_at,
            updated_by: serving.updated_by.to_string(),
            replicas,
            wanted: record.wanted(),
        })
    }

    /// One serving round over every served model: each version's replicas brought to what
    /// its load wants, ended ones replaced, and this process's routes refreshed.
    pub async fn reconcile_serving(&self) -> ServingReport {
        let _round = self.fleet.round.lock().await;
        let mut report = ServingReport::default();
        let records = match self.models.serving_models().await {
            Ok(records) => records,
            Err(err) => {
                warn!(%err, "reading the served models failed");
                report.errors += 1;
                return report;
            }
        };
        let mut served = HashSet::new();
        let mut alive = HashSet::new();
        let mut gauges = Vec::new();
        for record in records {
            let key = (record.tenant.clone(), record.model.clone());
            report.models += 1;
            match self.serve_model(record, &mut report).await {
                Ok(routes) => {
                    alive.extend(routes.ready.iter().map(|r| r.task.clone()));
                    gauges.extend(replica_gauges(&key, &routes));
                    self.fleet.publish(key.clone(), Some(routes));
                }
                Err(err) => {
                    warn!(tenant = %key.0, model = %key.1, %err, "serving round failed");
                    report.errors += 1;
                }
            }
            served.insert(key);
        }
        self.fleet.retain(&served);
        self.fleet.forget_replicas(&alive);
        telemetry::global().set_all(telemetry::REPLICAS, gauges);
        report
    }

    /// One model's round: plan, write the record, then start and stop tasks to match it.
    /// The record is written before any task starts, so a process that dies between the
    /// two leaves a replica whose task the next round creates, never a task no record
    /// names.
    async fn serve_model(&self, record: ModelRecord, report: &mut ServingReport) -> Result<Routes> {
        let key = (record.tenant.clone(), record.model.clone());
        let tasks = self.replica_tasks(&record).await?;
        let ended: BTreeSet<u64> = record
            .replicas
            .iter()
            .filter(|r| {
                tasks
                    .get(&r.slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|t| t.status.is_terminal())
            })
            .map(|r| r.slot)
            .collect();
        let mut ready = BTreeMap::new();
        for replica in &record.replicas {
            if let Some(Some(task)) = tasks.get(&replica.slot)
                && let Some(addr) = self.confirmed_endpoint(task).await
            {
                ready.insert(replica.slot, addr);
            }
        }
        let loads = self.fleet.take_loads(&key);
        let now = Utc::now();
        let mut next = record.clone();
        let plan = next.plan_replicas(&loads, &ended, &ready.keys().copied().collect(), now);
        for (slot, version) in &plan.start {
            next.started(
                *slot,
                *version,
                TaskId::from_uuid(uuid::Uuid::now_v7()),
                now,
            );
        }
        let written = if next == record {
            record
        } else {
            self.models.update_model(next).await?
        };
        self.settle_plan(&written, &plan, &tasks, report).await;
        Ok(self.routes_of(&written, &ready))
    }

    /// Each replica's task by slot (`None`: not created yet).
    async fn replica_tasks(&self, record: &ModelRecord) -> Result<BTreeMap<u64, Option<Task>>> {
        let mut tasks = BTreeMap::new();
        for replica in &record.replicas {
            tasks.insert(replica.slot, self.store.get(&replica.task).await?);
        }
        Ok(tasks)
    }

    /// Stops what the plan stopped, and creates every replica's task that does not exist
    /// yet (those the plan started, and any a process that died before creating left).
    async fn settle_plan(
        &self,
        record: &ModelRecord,
        plan: &ReplicaPlan,
        tasks: &BTreeMap<u64, Option<Task>>,
        report: &mut ServingReport,
    ) {
        report.ended += plan.ended.len();
        for replica in &plan.stop {
            if let Some(Some(task)) = tasks.get(&replica.slot)
                && !task.status.is_terminal()
            {
                match self.cancel_current(task.clone()).await {
                    Ok(_) | Err(Error::Conflict(_)) => report.stopped += 1,
                    Err(err) => warn!(task = %task.id, %err, "stopping a replica failed"),
                }
            }
        }
        let Some(serving) = &record.serving else {
            return;
        };
        for replica in &record.replicas {
            if matches!(tasks.get(&replica.slot), Some(Some(_))) {
                continue;
            }
            match self.start_replica(record, serving, replica).await {
                Ok(()) => report.started += 1,
                Err(err) => {
                    warn!(model = %record.model, slot = replica.slot, %err, "starting a replica failed")
                }
            }
        }
    }

    async fn start_replica(
        &self,
        record: &ModelRecord,
        serving: &Serving,
        replica: &Replica,
    ) -> Result<()> {
        let tenant = Tenant {
            name: record.tenant.clone(),
            root: serving.tenant_root.clone(),
        };
        let spec = replica_spec(&record.model, &serving.spec, replica.version, replica.slot);
        let task = self
            .prepare_task_as(&replica.task, &tenant, spec, Lineage::default())
            .await?;
        self.store_task(task).await?;
        info!(tenant = %record.tenant, model = %record.model, version = replica.version, task = %replica.task, "replica started");
        Ok(())
    }

    /// Where a running replica's task answers, if its report is one the platform confirms
    /// (as for a task's endpoint: the dispatcher's word, never a reserved or link-local
    /// address).
    async fn confirmed_endpoint(&self, task: &Task) -> Option<SocketAddr> {
        if task.status != TaskStatus::Running {
            return None;
        }
        let reported = task.endpoint.as_deref()?;
        let confirmed = self.confirm_endpoint(task, reported, &self.fleet.reserved);
        confirmed.await.ok()?.ok()
    }

    fn routes_of(&self, record: &ModelRecord, ready: &BTreeMap<u64, SocketAddr>) -> Routes {
        let ready = record
            .replicas
            .iter()
            .filter_map(|r| {
                let addr = ready.get(&r.slot)?;
                Some(self.fleet.ready(r.version, r.slot, r.task.clone(), *addr))
            })
            .collect();
        Routes {
            read_at: Instant::now(),
            declared: record.serving.is_some(),
            aliases: record
                .live_aliases()
                .map(|(name, _, target)| (name.clone(), target.clone()))
                .collect(),
            ready,
            wanted: record.wanted(),
            running: record
                .replicas
                .iter()
                .fold(BTreeMap::new(), |mut counts, r| {
                    *counts.entry(r.version).or_default() += 1;
                    counts
                }),
            start_timeout: Duration::from_secs(
                record
                    .serving
                    .as_ref()
                    .map_or(30, |s| u64::from(s.spec.start_timeout_s)),
            ),
        }
    }

    /// A ready replica for a request to `model@alias`, chosen by the alias's weights and
    /// then by the fewest requests in flight. A version with none ready is woken, and the
    /// request goes to another of the alias's versions that answers; with none, it waits
    /// for one to start, up to the declaration's `start_timeout_s` (then a 503).
    pub async fn route(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
        except: Option<&TaskId>,
    ) -> Result<Routed> {
        let key = (tenant.name.clone(), model.clone());
        let mut deadline = None;
        // While the request waits, it is load on the version it waits for.
        let mut waiting = None;
        loop {
            let max_age = if deadline.is_some() {
                WAITING_REFRESH
            } else {
                ROUTES_FRESH_FOR
            };
            let routes = self.current_routes(&key, tenant, max_age).await?;
            let target = routes
                .aliases
                .get(alias)
                .ok_or_else(|| Error::not_found(Resource::Alias, format!("{model}@{alias}")))?;
            if !routes.declared {
                return Err(Error::Conflict(format!(
                    "model {model} declares no serving: PUT /api/v1/models/{model}/serving first"
                )));
            }
            let version = target.pick(self.fleet.next_pick(&key, alias));
            let chosen = routes.least_busy(version, except);
            if chosen.is_none() {
                self.wake(tenant, model, version).await?;
            }
            // While the chosen version starts, another of the alias's versions answers.
            let fallback = || {
                target
                    .weights()
                    .iter()
                    .filter(|(_, w)| **w > 0)
                    .find_map(|(v, _)| routes.least_busy(*v, except))
            };
            if let Some(replica) = chosen.or_else(fallback) {
                if let Some(deadline) = deadline {
                    self.cold_start(&key, alias, "started", deadline - routes.start_timeout);
                }
                return Ok(self.routed(&key, replica));
            }
            waiting.get_or_insert_with(|| self.fleet.wait_for(&key, version));
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + routes.start_timeout);
            if Instant::now() >= deadline {
                self.cold_start(&key, alias, "timeout", deadline - routes.start_timeout);
                return Err(Error::Unavailable {
                    message: format!("no replica of {model}@{alias} is ready yet; retry shortly"),
                    retry_after_s: 2,
                });
            }
            // The waiting requests' rounds drive the start, one at a time.
            tokio::time::sleep(WAITING_REFRESH / 2).await;
        }
    }

    /// Counts a request that waited for a replica to start, since `since`.
    fn cold_start(&self, key: &ModelKey, alias: &AliasName, outcome: &str, since: Instant) {
        let (model, alias) = self.fleet.metric_names(key, alias);
        let labels = [
            ("tenant", key.0.as_str()),
            ("model", model.as_str()),
            ("alias", alias.as_str()),
            ("outcome", outcome),
        ];
        let waited = since.elapsed().as_secs_f64();
        telemetry::global().observe(telemetry::ALIAS_COLD_STARTS, &labels, waited);
    }

    fn routed(&self, key: &ModelKey, replica: &ReadyReplica) -> Routed {
        Routed {
            addr: replica.addr,
            version: replica.version,
            task: replica.task.clone(),
            hold: self.fleet.hold(key, replica),
        }
    }

    /// This process's routes of a model, read again (a round over it) when older than
    /// `max_age` or missing.
    async fn current_routes(
        &self,
        key: &ModelKey,
        tenant: &Tenant,
        max_age: Duration,
    ) -> Result<Arc<Routes>> {
        if let Some(routes) = self.fleet.routes(key, max_age) {
            return Ok(routes);
        }
        let _round = self.fleet.round.lock().await;
        // Another request may have read them while this one waited for the round.
        if let Some(routes) = self.fleet.routes(key, max_age) {
            return Ok(routes);
        }
        let record = self
            .models
            .model_record(&tenant.name, &key.1)
            .await?
            .ok_or_else(|| Error::not_found(Resource::Model, key.1.as_str()))?;
        let routes = if record.is_served() {
            self.serve_model(record, &mut ServingReport::default())
                .await?
        } else {
            self.routes_of(&record, &BTreeMap::new())
        };
        self.fleet.publish(key.clone(), Some(routes));
        self.fleet
            .routes(key, max_age)
            .ok_or_else(|| Error::internal("routes published a moment ago are gone"))
    }

    /// Asks for a replica of `version` (a request found none ready): written once, by
    /// compare-and-set, so every process's next round starts it.
    async fn wake(&self, tenant: &Tenant, model: &ModelName, version: u64) -> Result<()> {
        let key = (tenant.name.clone(), model.clone());
        if self.fleet.woke_lately(&key, version) {
            return Ok(());
        }
        self.change_record(tenant, model, |record, now| Ok(record.wake(version, now)))
            .await?;
        self.fleet.publish(key, None);
        Ok(())
    }
}

/// The `lancer_replicas` series of one model: its replicas by version, ready or starting.
fn replica_gauges(key: &ModelKey, routes: &Routes) -> Vec<(Vec<(&'static str, String)>, f64)> {
    let mut gauges = Vec::new();
    for (version, running) in &routes.running {
        let ready = routes
            .ready
            .iter()
            .filter(|r| r.version == *version)
            .count() as u32;
        for (state, count) in [
            ("ready", ready),
            ("starting", running.saturating_sub(ready)),
        ] {
            let labels = vec![
                ("tenant", key.0.to_string()),
                ("model", key.1.to_string()),
                ("version", version.to_string()),
                ("state", state.to_owned()),
            ];
            gauges.push((labels, f64::from(count)));
        }
    }
    gauges
}

fn replica_state(task: Option<&Task>) -> ReplicaState {
    match task {
        Some(task) if task.status.is_terminal() => ReplicaState::Ended,
        Some(task) if task.status == TaskStatus::Running && task.endpoint.is_some() => {
            ReplicaState::Ready
        }
        _ => ReplicaState::Starting,
    }
}
