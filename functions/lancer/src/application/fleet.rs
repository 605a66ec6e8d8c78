//! One process's view of the replicas that answer: where each ready replica listens (as the
//! platform confirmed it, never as a script claimed it), how many requests each carries now,
//! and the load each served version saw since the last serving round. It is a cache of the
//! store's truth, rebuilt by every round; losing it loses nothing but the load since then.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::domain::endpoint::Reserved;
use crate::domain::model::{AliasName, AliasTarget, ModelName};
use crate::domain::serving::Load;
use crate::domain::task::TaskId;
use crate::domain::tenant::TenantName;

/// A tenant's model: the key of everything the fleet keeps.
pub type ModelKey = (TenantName, ModelName);

/// How long a model's routes are used before a request reads them again itself (where no
/// serving round refreshes them, as on Lambda).
pub const ROUTES_FRESH_FOR: Duration = Duration::from_secs(2);

/// The most aliases one process labels its metrics with by name: past it, `other`, so a
/// tenant creating aliases cannot grow the metrics without bound.
pub const MAX_LABELLED_ALIASES: usize = 256;

/// A replica that answers: its version, its task and the address the platform confirmed.
#[derive(Debug, Clone)]
pub struct ReadyReplica {
    /// The model version it serves.
    pub version: u64,
    /// Its slot in the model's record.
    pub slot: u64,
    /// Its serving task.
    pub task: TaskId,
    /// Where it listens, as its dispatcher confirmed.
    pub addr: SocketAddr,
    in_flight: Arc<AtomicU32>,
}

/// What a request to one of a model's aliases is routed by.
#[derive(Debug, Clone)]
pub struct Routes {
    /// When these were read.
    pub read_at: Instant,
    /// Whether the model declares serving (without it, no alias has an endpoint).
    pub declared: bool,
    /// Its live aliases.
    pub aliases: BTreeMap<AliasName, AliasTarget>,
    /// The replicas that answer now.
    pub ready: Vec<ReadyReplica>,
    /// Replicas wanted per version (0 or absent: the version is scaled to zero).
    pub wanted: BTreeMap<u64, u32>,
    /// Replicas the record holds per version, ready or starting.
    pub running: BTreeMap<u64, u32>,
    /// How long a request waits for a replica to start.
    pub start_timeout: Duration,
}

impl Routes {
    /// The ready replica of `version` carrying the fewest requests now.
    pub fn least_busy(&self, version: u64, except: Option<&TaskId>) -> Option<&ReadyReplica> {
        self.ready
            .iter()
            .filter(|r| r.version == version && Some(&r.task) != except)
            .min_by_key(|r| r.in_flight.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Default)]
struct VersionLoad {
    in_flight: u32,
    peak: u32,
    last_request: Option<DateTime<Utc>>,
}

/// The per-process routing table and load counters, shared by the proxy and the rounds.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Ports no replica may be reached on: the API's own and the control planes'.
    pub reserved: Reserved,
    routes: RwLock<HashMap<ModelKey, Arc<Routes>>>,
    in_flight: Mutex<HashMap<TaskId, Arc<AtomicU32>>>,
    loads: Mutex<HashMap<(ModelKey, u64), VersionLoad>>,
    picks: Mutex<HashMap<(ModelKey, AliasName), u64>>,
    woken: Mutex<HashMap<(ModelKey, u64), Instant>>,
    labelled: Mutex<std::collections::HashSet<(ModelKey, AliasName)>>,
    /// Held by the process's serving round, so requests that wait do not run it twice.
    pub(super) round: tokio::sync::Mutex<()>,
}

/// A request's hold on a version (and on its replica, once it has one): counted in flight
/// until dropped. A request waiting for a replica to start is load too, or a version
/// scaled from zero would be scaled back down before its first replica is ready.
#[derive(Debug)]
pub struct InFlight {
    fleet: Arc<Fleet>,
    key: (ModelKey, u64),
    replica: Option<Arc<AtomicU32>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(replica) = &self.replica {
            replica.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(load) = lock(&self.fleet.loads).get_mut(&self.key) {
            load.in_flight = load.in_flight.saturating_sub(1);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a counter leaves counts, never broken invariants.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Fleet {
    /// An empty fleet whose replicas are never reached on `reserved` ports.
    pub fn new(reserved: Reserved) -> Self {
        Self {
            reserved,
            ..Self::default()
        }
    }

    /// A model's routes, if read within `max_age`.
    pub fn routes(&self, key: &ModelKey, max_age: Duration) -> Option<Arc<Routes>> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        routes
            .get(key)
            .filter(|r| r.read_at.elapsed() < max_age)
            .cloned()
    }

    /// Replaces a model's routes (`None`: it is served no more).
    pub(super) fn publish(&self, key: ModelKey, routes: Option<Routes>) {
        let mut table = self.routes.write().unwrap_or_else(|p| p.into_inner());
        match routes {
            Some(routes) => table.insert(key, Arc::new(routes)),
            None => table.remove(&key),
        };
    }

    /// Forgets every model not in `served`.
    pub(super) fn retain(&self, served: &std::collections::HashSet<ModelKey>) {
        let mut table = self.routes.write().unwrap_or_else(|p| p.into_inner());
        table.retain(|key, _| served.contains(key));
    }

    /// A ready replica as the routes hold it, with its in-flight counter (kept across
    /// rounds by task).
    pub(super) fn ready(
        &self,
        version: u64,
        slot: u64,
        task: TaskId,
        addr: SocketAddr,
    ) -> ReadyReplica {
        let in_flight = lock(&self.in_flight)
            .entry(task.clone())
            .or_default()
            .clone();
        ReadyReplica {
            version,
            slot,
            task,
            addr,
            in_flight,
        }
    }

    /// Takes a replica that could not be reached out of every route until the next round
    /// confirms it again, so no further request tries it.
    pub fn evict(&self, task: &TaskId) {
        let mut table = self.routes.write().unwrap_or_else(|p| p.into_inner());
        for routes in table.values_mut() {
            if routes.ready.iter().any(|r| &r.task == task) {
                let mut kept = (**routes).clone();
                kept.ready.retain(|r| &r.task != task);
                *routes = Arc::new(kept);
            }
        }
    }

    /// Drops the counters of replicas no longer ready anywhere.
    pub(super) fn forget_replicas(&self, alive: &std::collections::HashSet<TaskId>) {
        lock(&self.in_flight).retain(|task, _| alive.contains(task));
    }

    /// The `model` and `alias` labels of an alias's metrics: its names while fewer than
    /// `MAX_LABELLED_ALIASES` have been labelled, else `other`.
    pub fn metric_names(&self, key: &ModelKey, alias: &AliasName) -> (String, String) {
        let mut labelled = lock(&self.labelled);
        let entry = (key.clone(), alias.clone());
        if labelled.contains(&entry) || labelled.len() < MAX_LABELLED_ALIASES {
            labelled.insert(entry);
            return (key.1.to_string(), alias.to_string());
        }
        ("other".into(), "other".into())
    }

    /// The number of the next request to an alias, for `AliasTarget::pick`.
    pub fn next_pick(&self, key: &ModelKey, alias: &AliasName) -> u64 {
        let mut picks = lock(&self.picks);
        let n = picks.entry((key.clone(), alias.clone())).or_default();
        *n = n.wrapping_add(1);
        *n - 1
    }

    /// Counts a request to `replica` in flight until the returned hold is dropped.
    pub fn hold(self: &Arc<Self>, key: &ModelKey, replica: &ReadyReplica) -> InFlight {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut hold = self.wait_for(key, replica.version);
        hold.replica = Some(replica.in_flight.clone());
        hold
    }

    /// Counts a request that waits for a replica of `version` in flight on the version
    /// until the returned hold is dropped.
    pub fn wait_for(self: &Arc<Self>, key: &ModelKey, version: u64) -> InFlight {
        let load_key = (key.clone(), version);
        {
            let mut loads = lock(&self.loads);
            let load = loads.entry(load_key.clone()).or_default();
            load.in_flight += 1;
            load.peak = load.peak.max(load.in_flight);
            load.last_request = Some(Utc::now());
        }
        InFlight {
            fleet: self.clone(),
            key: load_key,
            replica: None,
        }
    }

    /// What each version of a model carried since the last call: its peak in flight and
    /// newest request. The peak starts again from the requests in flight now.
    pub(super) fn take_loads(&self, key: &ModelKey) -> BTreeMap<u64, Load> {
        let mut loads = lock(&self.loads);
        loads
            .iter_mut()
            .filter(|((model, _), _)| model == key)
            .map(|((_, version), load)| {
                let taken = Load {
                    peak_in_flight: load.peak,
                    last_request: load.last_request,
                };
                load.peak = load.in_flight;
                (*version, taken)
            })
            .collect()
    }

    /// Whether this process asked for `version` to wake within the last second (a request
    /// that finds no replica asks once, not once per request).
    pub(super) fn woke_lately(&self, key: &ModelKey, version: u64) -> bool {
        let mut woken = lock(&self.woken);
        let entry = (key.clone(), version);
        match woken.get(&entry) {
            Some(at) if at.elapsed() < Duration::from_secs(1) => true,
            _ => {
                woken.insert(entry, Instant::now());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ModelKey {
        (
            TenantName::parse("acme").expect("a tenant"),
            ModelName::parse("cnn").expect("a model"),
        )
    }

    #[test]
    fn a_versions_peak_is_what_was_in_flight_at_once_and_starts_again_from_now() {
        let fleet = Arc::new(Fleet::default());
        let task = TaskId::parse("t1").expect("an id");
        let replica = fleet.ready(7, 0, task, "127.0.0.1:4000".parse().expect("addr"));
        let mut holds: Vec<InFlight> = (0..3).map(|_| fleet.hold(&key(), &replica)).collect();
        holds.truncate(1);
        let loads = fleet.take_loads(&key());
        assert_eq!(loads[&7].peak_in_flight, 3);
        assert!(loads[&7].last_request.is_some());
        assert_eq!(
            fleet.take_loads(&key())[&7].peak_in_flight,
            1,
            "one still in flight"
        );
    }

    #[test]
    fn the_least_busy_ready_replica_of_the_version_is_chosen() {
        let fleet = Arc::new(Fleet::default());
        let a = fleet.ready(
            7,
            0,
            TaskId::parse("a").expect("id"),
            "127.0.0.1:4000".parse().expect("addr"),
        );
        let b = fleet.ready(
            7,
            1,
            TaskId::parse("b").expect("id"),
            "127.0.0.1:4001".parse().expect("addr"),
        );
        let other = fleet.ready(
            8,
            2,
            TaskId::parse("c").expect("id"),
            "127.0.0.1:4002".parse().expect("addr"),
        );
        let _busy = fleet.hold(&key(), &a);
        let routes = Routes {
            read_at: Instant::now(),
            declared: true,
            aliases: BTreeMap::new(),
            ready: vec![a.clone(), b.clone(), other],
            wanted: BTreeMap::new(),
            running: BTreeMap::new(),
            start_timeout: Duration::from_secs(1),
        };
        assert_eq!(routes.least_busy(7, None).map(|r| r.slot), Some(1));
        assert_eq!(routes.least_busy(7, Some(&b.task)).map(|r| r.slot), Some(0));
        assert!(routes.least_busy(9, None).is_none());
    }
}
