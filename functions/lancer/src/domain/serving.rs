//! Serving a model through its aliases: the serving declaration (which script serves a
//! version, with how many replicas), the replicas that run, and the demand that scales
//! them, all kept in the model's record so that every API process agrees through its
//! compare-and-set. The decisions are here, as pure functions of the record and what one
//! process observed; no I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::Invalid;
use super::model::ModelRecord;
use super::path::LakePath;
use super::task::{Resources, TaskId};
use super::tenant::TenantName;

/// The most replicas one version runs.
pub const MAX_REPLICAS: u32 = 16;
/// The most requests one replica is given at once before another is wanted.
pub const MAX_CONCURRENCY: u32 = 1024;
/// The longest a version may stay idle before its replicas above `min` stop (a day).
pub const MAX_SCALE_DOWN_AFTER_S: u32 = 86_400;
/// The longest a request waits for a replica to start (scale from zero, or a replacement).
pub const MAX_START_TIMEOUT_S: u32 = 600;
/// The longest a version whose replicas keep dying waits before the next one starts.
pub const MAX_RESTART_BACKOFF_S: i64 = 60;

/// Replica bounds as a request gives them.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicasRequest {
    /// The fewest replicas per version, 0 (scale to zero when idle) to `max`; default 1.
    #[serde(default = "one")]
    pub min: i64,
    /// The most replicas per version, 1 to 16; default 1.
    #[serde(default = "one")]
    pub max: i64,
}

fn one() -> i64 {
    1
}

impl Default for ReplicasRequest {
    fn default() -> Self {
        Self { min: 1, max: 1 }
    }
}

/// The body of `PUT /models/{id}/serving`: how each version an alias names is served.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServingRequest {
    /// The serving script (registered like every script); each replica runs it as a task
    /// whose input is the model at one version.
    pub script: String,
    /// The script's params, as a task's (at most 64 KiB).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// What each replica may use, as a task's resources.
    #[serde(default)]
    pub resources: Resources,
    /// Replicas per version.
    #[serde(default)]
    pub replicas: ReplicasRequest,
    /// Seconds a version goes with fewer requests than its replicas carry before one
    /// stops (and, with `min: 0`, without any request before the last stops): 1 to 86,400,
    /// default 300.
    pub scale_down_after_s: Option<i64>,
    /// Requests one replica is given at once before another is wanted: 1 to 1,024,
    /// default 8.
    pub max_concurrency: Option<i64>,
    /// Seconds a request waits for a replica to start before a 503 with `Retry-After`:
    /// 1 to 600, default 30.
    pub start_timeout_s: Option<i64>,
}

/// Replica bounds, `min <= max`, `1 <= max <= 16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaBounds {
    /// The fewest replicas per version (0: none while idle).
    pub min: u32,
    /// The most replicas per version.
    pub max: u32,
}

/// A parsed serving declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServingSpec {
    /// The serving script.
    pub script: String,
    /// Its params.
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// What each replica may use.
    pub resources: Resources,
    /// Replicas per version.
    pub replicas: ReplicaBounds,
    /// Idle seconds before scaling down.
    pub scale_down_after_s: u32,
    /// Requests per replica at once before another is wanted.
    pub max_concurrency: u32,
    /// Seconds a request waits for a replica to start.
    pub start_timeout_s: u32,
}

fn bounded(
    field: &str,
    value: Option<i64>,
    default: u32,
    low: u32,
    high: u32,
) -> Result<u32, Invalid> {
    let value = value.unwrap_or(i64::from(default));
    u32::try_from(value)
        .ok()
        .filter(|v| (low..=high).contains(v))
        .ok_or_else(|| {
            Invalid::rule(format!(
                "{field} must be between {low} and {high}, not {value}"
            ))
        })
}

impl ServingRequest {
    /// The declaration with its bounds checked; the script and params are for the caller
    /// to check as a task's.
    pub fn parse(self) -> Result<ServingSpec, Invalid> {
        let max = bounded("replicas.max", Some(self.replicas.max), 1, 1, MAX_REPLICAS)?;
        let min = bounded("replicas.min", Some(self.replicas.min), 1, 0, max)?;
        Ok(ServingSpec {
            script: self.script,
            params: self.params,
            resources: self.resources,
            replicas: ReplicaBounds { min, max },
            scale_down_after_s: bounded(
                "scale_down_after_s",
                self.scale_down_after_s,
                300,
                1,
                MAX_SCALE_DOWN_AFTER_S,
            )?,
            max_concurrency: bounded(
                "max_concurrency",
                self.max_concurrency,
                8,
                1,
                MAX_CONCURRENCY,
            )?,
            start_timeout_s: bounded(
                "start_timeout_s",
                self.start_timeout_s,
                30,
                1,
                MAX_START_TIMEOUT_S,
            )?,
        })
    }
}

/// A model's serving declaration as its record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serving {
    /// The declaration.
    pub spec: ServingSpec,
    /// The folder of the tenant whose replicas these are (their tasks run as that tenant).
    pub tenant_root: LakePath,
    /// When it was declared.
    pub updated_at: DateTime<Utc>,
    /// The tenant whose key declared it.
    pub updated_by: TenantName,
}

/// One replica: a serving task for one version, in a numbered slot (the slot makes its
/// task's idempotency key, so two processes starting the same slot start one task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The slot, unique within the model.
    pub slot: u64,
    /// The version it serves.
    pub version: u64,
    /// Its serving task.
    pub task: TaskId,
    /// When it was started.
    pub started_at: DateTime<Utc>,
    /// The `updated_at` of the declaration it runs: a new declaration replaces it.
    pub declared_at: DateTime<Utc>,
}

/// What a version is wanted to run, as the processes that route to it agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// Replicas wanted now, within the bounds.
    pub replicas: u32,
    /// When `replicas` last changed or was last confirmed by load.
    pub since: DateTime<Utc>,
    /// The newest request any process recorded.
    pub last_request: Option<DateTime<Utc>>,
    /// Replicas that ended on their own since the version last ran steadily.
    #[serde(default)]
    pub crashes: u32,
    /// No replica starts before this (after a crash, backing off).
    #[serde(default)]
    pub hold_until: Option<DateTime<Utc>>,
}

/// What one process saw of a version since the last round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// The most requests in flight at once.
    pub peak_in_flight: u32,
    /// Its newest request.
    pub last_request: Option<DateTime<Utc>>,
}

/// What a round of serving reconcile does to the replicas of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaPlan {
    /// New replicas to start: (slot, version). Their slots are taken in the record.
    pub start: Vec<(u64, u64)>,
    /// Replicas to stop, already out of the record.
    pub stop: Vec<Replica>,
    /// Replicas whose task ended on its own, out of the record (replaced by `start`).
    pub ended: Vec<Replica>,
}

impl ReplicaPlan {
    /// Whether the round changes nothing in the record's replicas.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty() && self.ended.is_empty()
    }
}

/// How long a version waits after its `crashes`th replica ended on its own: 1, 2, 4 ...
/// 60 s.
fn backoff(crashes: u32) -> Duration {
    Duration::seconds((1i64 << crashes.saturating_sub(1).min(6)).min(MAX_RESTART_BACKOFF_S))
}

impl ModelRecord {
    /// Whether serving reconcile looks after this record: it declares serving, or still
    /// has replicas to stop.
    pub fn is_served(&self) -> bool {
        self.serving.is_some() || !self.replicas.is_empty()
    }

    /// Replicas wanted now, by version (a version missing or at 0 is scaled to zero).
    pub fn wanted(&self) -> BTreeMap<u64, u32> {
        self.demand.iter().map(|(v, d)| (*v, d.replicas)).collect()
    }

    /// The versions that get replicas: those some alias sends a share of requests to.
    pub fn served_versions(&self) -> BTreeSet<u64> {
        self.live_aliases()
            .flat_map(|(_, _, target)| {
                target
                    .weights()
                    .iter()
                    .filter(|(_, weight)| **weight > 0)
                    .map(|(version, _)| *version)
            })
            .collect()
    }

    /// Records a request for `version` that found no ready replica: at least one is
    /// wanted now. `false` when one was wanted already (nothing to write).
    pub fn wake(&mut self, version: u64, now: DateTime<Utc>) -> bool {
        let Some(serving) = &self.serving else {
            return false;
        };
        let max = serving.spec.replicas.max;
        let demand = self.demand.entry(version).or_insert_with(|| Demand {
            replicas: 0,
            since: now,
            last_request: None,
            crashes: 0,
            hold_until: None,
        });
        demand.last_request = Some(now);
        if demand.replicas >= 1 {
            return false;
        }
        demand.replicas = 1.min(max);
        demand.since = now;
        true
    }

    /// Moves each served version's demand by what this process saw (`loads`), and plans
    /// the replicas to match: `ended` are the slots whose task is no longer running.
    /// `ready` are the slots that answer, stopped last when there are too many. The
    /// record is changed in place: the caller writes it when the plan is not empty or the
    /// demand moved (`self != before`).
    pub fn plan_replicas(
        &mut self,
        loads: &BTreeMap<u64, Load>,
        ended: &BTreeSet<u64>,
        ready: &BTreeSet<u64>,
        now: DateTime<Utc>,
    ) -> ReplicaPlan {
        let mut plan = ReplicaPlan::default();
        let (served, declared_at) = match &self.serving {
            Some(serving) => (self.served_versions(), Some(serving.updated_at)),
            None => (BTreeSet::new(), None),
        };
        let (gone, kept): (Vec<Replica>, Vec<Replica>) = std::mem::take(&mut self.replicas)
            .into_iter()
            .partition(|r| ended.contains(&r.slot));
        for replica in &gone {
            if let Some(demand) = self.demand.get_mut(&replica.version) {
                demand.crashes += 1;
                demand.hold_until = Some(now + backoff(demand.crashes));
            }
        }
        plan.ended = gone;
        // A replica of a version no alias sends to, or of an older declaration, stops.
        let (kept, unserved): (Vec<Replica>, Vec<Replica>) = kept
            .into_iter()
            .partition(|r| served.contains(&r.version) && Some(r.declared_at) == declared_at);
        plan.stop = unserved;
        self.replicas = kept;
        self.demand.retain(|version, _| served.contains(version));
        for version in served {
            self.forget_crashes_once_steady(version, now);
            let load = loads.get(&version).copied().unwrap_or_default();
            let wanted = self.move_demand(version, load, now);
            self.match_replicas(version, wanted, ready, now, &mut plan);
        }
        plan
    }

    /// The replicas `version` should run after this round's load: up at once, down one
    /// `scale_down_after_s` after the load fell (to none only once no request came for as
    /// long), always within the bounds.
    fn move_demand(&mut self, version: u64, load: Load, now: DateTime<Utc>) -> u32 {
        let Some(serving) = &self.serving else {
            return 0;
        };
        let spec = &serving.spec;
        let bounds = spec.replicas;
        let after = Duration::seconds(i64::from(spec.scale_down_after_s));
        let demand = self.demand.entry(version).or_insert_with(|| Demand {
            replicas: bounds.min,
            since: now,
            last_request: None,
            crashes: 0,
            hold_until: None,
        });
        // Only a request newer by a tenth of the idle time is written: a busy version
        // does not rewrite its record every round.
        if let Some(at) = load.last_request
            && demand
                .last_request
                .is_none_or(|stored| at - stored >= (after / 10).max(Duration::seconds(1)))
        {
            demand.last_request = Some(at);
        }
        let want = load.peak_in_flight.div_ceil(spec.max_concurrency);
        if want > demand.replicas {
            demand.replicas = want;
            demand.since = now;
        } else if want < demand.replicas && now - demand.since >= after {
            // One replica fewer per idle period; the last stays while requests still come.
            let idle = demand.last_request.is_none_or(|at| now - at >= after);
            demand.replicas = (demand.replicas - 1).max(want).max(u32::from(!idle));
            demand.since = now;
        } else if want > 0 && want == demand.replicas && now - demand.since >= after / 2 {
            demand.since = now;
        }
        demand.replicas = demand.replicas.clamp(bounds.min, bounds.max);
        demand.replicas
    }

    /// A version whose replicas have all run a minute since its last crash starts again
    /// without backing off.
    fn forget_crashes_once_steady(&mut self, version: u64, now: DateTime<Utc>) {
        let minute = Duration::seconds(60);
        let steady = self
            .replicas_of(version)
            .all(|r| now - r.started_at >= minute);
        if let Some(demand) = self.demand.get_mut(&version)
            && steady
            && demand.hold_until.is_some_and(|until| now - until >= minute)
        {
            demand.crashes = 0;
            demand.hold_until = None;
        }
    }

    fn replicas_of(&self, version: u64) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(move |r| r.version == version)
    }

    /// Starts or stops replicas of `version` until it runs `wanted`; a version backing
    /// off after crashes starts none until its hold ends.
    fn match_replicas(
        &mut self,
        version: u64,
        wanted: u32,
        ready: &BTreeSet<u64>,
        now: DateTime<Utc>,
        plan: &mut ReplicaPlan,
    ) {
        let running = self.replicas_of(version).count() as u32;
        let held = self
            .demand
            .get(&version)
            .and_then(|d| d.hold_until)
            .is_some_and(|until| now < until);
        if running < wanted && !held {
            for _ in running..wanted {
                plan.start.push((self.next_slot, version));
                self.next_slot += 1;
            }
        }
        if running > wanted {
            // The newest that do not answer yet go first, then the newest.
            let mut surplus: Vec<&Replica> = self.replicas_of(version).collect();
            surplus.sort_by_key(|r| (ready.contains(&r.slot), std::cmp::Reverse(r.slot)));
            let stop: BTreeSet<u64> = surplus
                .iter()
                .take((running - wanted) as usize)
                .map(|r| r.slot)
                .collect();
            let (stopped, kept) = std::mem::take(&mut self.replicas)
                .into_iter()
                .partition(|r| stop.contains(&r.slot));
            self.replicas = kept;
            plan.stop.extend::<Vec<Replica>>(stopped);
        }
    }

    /// Records the task started for a planned slot, under the current declaration.
    pub fn started(&mut self, slot: u64, version: u64, task: TaskId, now: DateTime<Utc>) {
        let Some(serving) = &self.serving else {
            return;
        };
        self.replicas.push(Replica {
            slot,
            version,
            task,
            started_at: now,
            declared_at: serving.updated_at,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{AliasName, AliasTarget, ModelName};
    use serde_json::json;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    fn spec(min: u32, max: u32) -> ServingSpec {
        serde_json::from_value::<ServingRequest>(json!({
            "script": "serve.py",
            "replicas": {"min": min, "max": max},
            "scale_down_after_s": 100,
            "max_concurrency": 4,
        }))
        .expect("the shape")
        .parse()
        .expect("valid")
    }

    /// A model whose alias `production` splits `weights`, served with `min..=max`.
    fn served(weights: &[(u64, u32)], min: u32, max: u32) -> ModelRecord {
        let tenant = TenantName::parse("acme").expect("a tenant");
        let mut record = ModelRecord::new(tenant.clone(), ModelName::parse("cnn").expect("a name"));
        let target = AliasRequestFor(weights).target();
        let alias = AliasName::parse("production").expect("an alias");
        record
            .set_alias(&alias, target, &tenant, at(0))
            .expect("set");
        record.serving = Some(Serving {
            spec: spec(min, max),
            tenant_root: LakePath::parse("root", "tenants/acme").expect("a folder"),
            updated_at: at(0),
            updated_by: tenant,
        });
        record
    }

    struct AliasRequestFor<'a>(&'a [(u64, u32)]);

    impl AliasRequestFor<'_> {
        fn target(&self) -> AliasTarget {
            let versions = self.0.iter().map(|(v, w)| (v.to_string(), i64::from(*w)));
            crate::domain::model::AliasRequest {
                version: None,
                versions: Some(versions.collect()),
            }
            .parse()
            .expect("a target")
        }
    }

    /// Runs a round and records a task for every slot it starts.
    fn round(
        record: &mut ModelRecord,
        loads: &[(u64, u32)],
        ended: &[u64],
        now: i64,
    ) -> ReplicaPlan {
        let loads = loads
            .iter()
            .map(|(version, peak)| {
                let load = Load {
                    peak_in_flight: *peak,
                    last_request: (*peak > 0).then(|| at(now)),
                };
                (*version, load)
            })
            .collect();
        let ended = ended.iter().copied().collect();
        let plan = record.plan_replicas(&loads, &ended, &BTreeSet::new(), at(now));
        for (slot, version) in &plan.start {
            let task = TaskId::parse(&format!("t{slot}")).expect("an id");
            record.started(*slot, *version, task, at(now));
        }
        plan
    }

    fn count(record: &ModelRecord, version: u64) -> usize {
        record.replicas_of(version).count()
    }

    #[test]
    fn a_declaration_out_of_bounds_is_refused_naming_the_field() {
        let refused = |body: Value, field: &str| {
            let request: ServingRequest = serde_json::from_value(body.clone()).expect("shape");
            let err = request.parse().expect_err("refused").to_string();
            assert!(err.contains(field), "{body}: {err}");
        };
        refused(
            json!({"script": "s", "replicas": {"min": 2, "max": 1}}),
            "replicas.min",
        );
        refused(
            json!({"script": "s", "replicas": {"max": 17}}),
            "replicas.max",
        );
        refused(
            json!({"script": "s", "replicas": {"max": 0}}),
            "replicas.max",
        );
        refused(
            json!({"script": "s", "max_concurrency": 0}),
            "max_concurrency",
        );
        refused(
            json!({"script": "s", "scale_down_after_s": 86_401}),
            "scale_down_after_s",
        );
        refused(
            json!({"script": "s", "start_timeout_s": -1}),
            "start_timeout_s",
        );
        let defaults: ServingRequest =
            serde_json::from_value(json!({"script": "s"})).expect("shape");
        let defaults = defaults.parse().expect("valid");
        assert_eq!(defaults.replicas, ReplicaBounds { min: 1, max: 1 });
        assert_eq!(
            (defaults.scale_down_after_s, defaults.max_concurrency),
            (300, 8)
        );
    }

    #[test]
    fn each_version_an_alias_sends_to_gets_its_minimum_and_a_zero_weight_gets_none() {
        let mut record = served(&[(7, 90), (8, 10), (9, 0)], 2, 4);
        let plan = round(&mut record, &[], &[], 0);
        assert_eq!(plan.start.len(), 4);
        assert_eq!(
            (count(&record, 7), count(&record, 8), count(&record, 9)),
            (2, 2, 0)
        );
        assert!(
            round(&mut record, &[], &[], 1).is_empty(),
            "a second round starts nothing"
        );
    }

    #[test]
    fn load_scales_a_version_up_at_once_and_down_one_replica_per_idle_period() {
        let mut record = served(&[(7, 100)], 1, 4);
        round(&mut record, &[], &[], 0);
        round(&mut record, &[(7, 13)], &[], 1);
        assert_eq!(
            count(&record, 7),
            4,
            "13 in flight at 4 each wants 4 replicas"
        );
        round(&mut record, &[(7, 20)], &[], 2);
        assert_eq!(count(&record, 7), 4, "never above max");
        round(&mut record, &[(7, 1)], &[], 50);
        assert_eq!(count(&record, 7), 4, "not before scale_down_after_s");
        let plan = round(&mut record, &[(7, 1)], &[], 102);
        assert_eq!((plan.stop.len(), count(&record, 7)), (1, 3));
        round(&mut record, &[(7, 1)], &[], 150);
        assert_eq!(count(&record, 7), 3, "one per period");
        round(&mut record, &[], &[], 210);
        round(&mut record, &[], &[], 320);
        round(&mut record, &[], &[], 430);
        assert_eq!(count(&record, 7), 1, "never below min");
    }

    #[test]
    fn with_min_zero_an_idle_version_stops_and_a_request_wakes_it() {
        let mut record = served(&[(7, 100)], 0, 2);
        assert!(
            round(&mut record, &[], &[], 0).is_empty(),
            "nothing runs before a request"
        );
        assert!(record.wake(7, at(1)));
        assert!(!record.wake(7, at(1)), "a second wake has nothing to write");
        round(&mut record, &[], &[], 1);
        assert_eq!(count(&record, 7), 1);
        round(&mut record, &[(7, 1)], &[], 60);
        round(&mut record, &[], &[], 120);
        assert_eq!(
            count(&record, 7),
            1,
            "a request 60 s ago keeps the last replica"
        );
        let plan = round(&mut record, &[], &[], 161);
        assert_eq!(
            (plan.stop.len(), count(&record, 7)),
            (1, 0),
            "idle 100 s: none"
        );
    }

    #[test]
    fn a_replica_that_ends_is_replaced_after_a_growing_backoff() {
        let mut record = served(&[(7, 100)], 1, 1);
        round(&mut record, &[], &[], 0);
        let first = record.replicas[0].slot;
        let plan = round(&mut record, &[], &[first], 10);
        assert_eq!((plan.ended.len(), plan.start.len()), (1, 0), "held for 1 s");
        round(&mut record, &[], &[], 11);
        assert_eq!(count(&record, 7), 1, "replaced once the hold ends");
        let second = record.replicas[0].slot;
        assert_ne!(first, second, "in a new slot, so a new task");
        round(&mut record, &[], &[second], 12);
        round(&mut record, &[], &[], 13);
        assert_eq!(count(&record, 7), 0, "the second crash holds for 2 s");
        round(&mut record, &[], &[], 14);
        assert_eq!(count(&record, 7), 1);
        round(&mut record, &[], &[], 200);
        assert_eq!(
            record.demand[&7].crashes, 0,
            "forgotten once it ran a minute"
        );
    }

    #[test]
    fn replicas_of_an_unserved_version_or_an_older_declaration_stop() {
        let mut record = served(&[(7, 90), (8, 10)], 1, 1);
        round(&mut record, &[], &[], 0);
        let alias = AliasName::parse("production").expect("an alias");
        let tenant = record.tenant.clone();
        record
            .set_alias(&alias, AliasTarget::single(8), &tenant, at(1))
            .expect("set");
        let plan = round(&mut record, &[], &[], 1);
        assert_eq!(plan.stop.iter().map(|r| r.version).collect::<Vec<_>>(), [7]);
        assert!(!record.demand.contains_key(&7), "its demand is forgotten");
        if let Some(serving) = &mut record.serving {
            serving.updated_at = at(2);
        }
        let plan = round(&mut record, &[], &[], 2);
        assert_eq!(
            (plan.stop.len(), plan.start.len()),
            (1, 1),
            "redeclared: replaced"
        );
        record.serving = None;
        let plan = round(&mut record, &[], &[], 3);
        assert_eq!((plan.stop.len(), record.is_served()), (1, false));
    }

    #[test]
    fn surplus_replicas_that_do_not_answer_stop_first() {
        let mut record = served(&[(7, 100)], 1, 3);
        round(&mut record, &[(7, 12)], &[], 0);
        let slots: Vec<u64> = record.replicas.iter().map(|r| r.slot).collect();
        let ready = BTreeSet::from([slots[1], slots[2]]);
        let plan = record.plan_replicas(&BTreeMap::new(), &BTreeSet::new(), &ready, at(101));
        assert_eq!(
            plan.stop.iter().map(|r| r.slot).collect::<Vec<_>>(),
            [slots[0]]
        );
    }
}
