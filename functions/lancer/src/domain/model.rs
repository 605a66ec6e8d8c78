//! Model aliases: a name a tenant gives to one version of a model, or to a split of its
//! traffic between versions by weight (a canary), kept with the history of every change.
//! A model's aliases live in one `ModelRecord`, changed by compare-and-set on its revision
//! like a pipeline. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::Invalid;
use super::path::printable;
use super::serving::{Demand, Replica, Serving};
use super::tenant::TenantName;

super::path::name_type!(
    /// A model's name in its tenant's lake (`models/<name>.lance`).
    ModelName,
    "model"
);

super::path::name_type!(
    /// An alias of a model, e.g. `production`: parsed like every other name.
    AliasName,
    "alias"
);

/// The most versions one alias splits its traffic between.
pub const MAX_ALIAS_VERSIONS: usize = 8;
/// The most a version's weight may be (weights are relative: 90 and 10 is 90%).
pub const MAX_WEIGHT: u32 = 10_000;
/// The most aliases a model has at once.
pub const MAX_ALIASES: usize = 32;
/// The changes an alias's history keeps, newest last; older ones are dropped.
pub const MAX_ALIAS_HISTORY: usize = 100;

/// Where an alias sends requests: model versions and their weights, at least one of them
/// above zero. One version is a plain alias; more are a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasTarget(BTreeMap<u64, u32>);

impl AliasTarget {
    /// One version, all the traffic.
    pub fn single(version: u64) -> Self {
        Self(BTreeMap::from([(version, 100)]))
    }

    /// The versions and their weights, lowest version first.
    pub fn weights(&self) -> &BTreeMap<u64, u32> {
        &self.0
    }

    /// The version when the alias names just one.
    pub fn only_version(&self) -> Option<u64> {
        match self.0.keys().collect::<Vec<_>>()[..] {
            [version] => Some(*version),
            _ => None,
        }
    }

    /// The version of the `n`th of every `sum of weights` requests: the weights cut
    /// `0..sum` into consecutive ranges, one per version (zero-weight versions get none).
    pub fn pick(&self, n: u64) -> u64 {
        let total: u64 = self.0.values().map(|w| u64::from(*w)).sum();
        let mut at = n % total.max(1);
        for (version, weight) in &self.0 {
            if at < u64::from(*weight) {
                return *version;
            }
            at -= u64::from(*weight);
        }
        *self.0.keys().next_back().unwrap_or(&0)
    }
}

/// The body of `PUT /models/{id}/aliases/{alias}`: one version, or versions by weight.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasRequest {
    /// The one version the alias names (1 or more).
    #[schema(example = 7)]
    pub version: Option<i64>,
    /// Versions and their relative weights, e.g. `{"7": 90, "8": 10}` for a 10% canary of
    /// version 8: at most 8 versions, each weight 0 to 10,000, their sum above zero.
    #[schema(value_type = Option<BTreeMap<String, i64>>, example = json!({"7": 90, "8": 10}))]
    pub versions: Option<BTreeMap<String, i64>>,
}

impl AliasRequest {
    /// The target this request names, checked for shape only: whether each version exists
    /// is for the caller to check against the lake.
    pub fn parse(&self) -> Result<AliasTarget, Invalid> {
        match (self.version, &self.versions) {
            (Some(version), None) => Ok(AliasTarget::single(parse_version("version", version)?)),
            (None, Some(versions)) => parse_weights(versions),
            _ => Err(Invalid::rule(
                "give either version (one version) or versions (versions and their weights)",
            )),
        }
    }
}

fn parse_version(field: &str, version: i64) -> Result<u64, Invalid> {
    u64::try_from(version)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| Invalid::rule(format!("{field} must be a model version, 1 or more")))
}

fn parse_weights(versions: &BTreeMap<String, i64>) -> Result<AliasTarget, Invalid> {
    if versions.is_empty() || versions.len() > MAX_ALIAS_VERSIONS {
        return Err(Invalid::rule(format!(
            "versions must name 1 to {MAX_ALIAS_VERSIONS} versions, not {}",
            versions.len()
        )));
    }
    let mut weights = BTreeMap::new();
    for (key, weight) in versions {
        let field = format!("versions.{}", printable(key));
        let version = key
            .parse::<i64>()
            .map_err(|_| Invalid::rule(format!("{field}: a key must be a version number")))
            .and_then(|v| parse_version(&field, v))?;
        let weight = u32::try_from(*weight)
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .ok_or_else(|| Invalid::rule(format!("{field}: a weight is 0 to {MAX_WEIGHT}")))?;
        if weights.insert(version, weight).is_some() {
            return Err(Invalid::rule(format!(
                "{field}: the version is named twice"
            )));
        }
    }
    if weights.values().all(|w| *w == 0) {
        return Err(Invalid::rule(
            "versions: the weights must sum to more than 0",
        ));
    }
    Ok(AliasTarget(weights))
}

/// What a change to an alias did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AliasAction {
    /// `PUT`: the alias was created or moved.
    Set,
    /// `POST .../rollback`: the alias went back to its value before the last change.
    Rollback,
    /// `DELETE`: the alias was removed.
    Delete,
}

/// One change to an alias, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasChange {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The tenant whose key made it.
    pub tenant: TenantName,
    /// What it did.
    pub action: AliasAction,
    /// The alias's value before it (`None`: it did not exist).
    pub previous: Option<AliasTarget>,
    /// Its value after it (`None`: it was deleted).
    pub value: Option<AliasTarget>,
}

/// An alias: its value (`None` once deleted, when only its history is left) and history.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Alias {
    /// Where it sends requests now.
    pub target: Option<AliasTarget>,
    /// Its changes, oldest first, the newest `MAX_ALIAS_HISTORY`.
    pub history: Vec<AliasChange>,
}

impl Alias {
    /// When it last changed, and by whom.
    pub fn last_change(&self) -> Option<&AliasChange> {
        self.history.last()
    }

    fn record(&mut self, change: AliasChange) {
        self.target = change.value.clone();
        self.history.push(change);
        let over = self.history.len().saturating_sub(MAX_ALIAS_HISTORY);
        self.history.drain(..over);
    }
}

/// Why an alias could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasRefusal {
    /// The model has `MAX_ALIASES` aliases already.
    #[error("model {0} has {MAX_ALIASES} aliases, the most it may; delete one first")]
    TooMany(String),
    /// No alias of that name exists now.
    #[error("model {model} has no alias {alias}")]
    NoSuchAlias {
        /// The model.
        model: String,
        /// The alias.
        alias: String,
    },
    /// A rollback with no earlier value to go back to.
    #[error("alias {0} has no earlier value to roll back to")]
    NothingToRollBack(String),
}

/// Everything lancer keeps about one model of one tenant beyond its versions in the lake:
/// its aliases, live and deleted, with their histories, and how it is served
/// (`domain::serving`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The tenant whose lake holds the model.
    pub tenant: TenantName,
    /// The model's name in that lake.
    pub model: ModelName,
    /// Aliases by name, deleted ones kept for their history.
    pub aliases: BTreeMap<AliasName, Alias>,
    /// How the versions its aliases name are served, once declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<Serving>,
    /// The serving tasks that run now, one per replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Replica>,
    /// The slot the next replica takes.
    #[serde(default)]
    pub next_slot: u64,
    /// What each served version is wanted to run, by version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub demand: BTreeMap<u64, Demand>,
    /// Bumped by every write; a store writes a record only over the revision it was read
    /// at (0: no record stored yet).
    pub revision: u64,
}

impl ModelRecord {
    /// A record with no alias, not stored yet.
    pub fn new(tenant: TenantName, model: ModelName) -> Self {
        Self {
            tenant,
            model,
            aliases: BTreeMap::new(),
            serving: None,
            replicas: Vec::new(),
            next_slot: 0,
            demand: BTreeMap::new(),
            revision: 0,
        }
    }

    /// The alias `name` while it exists.
    pub fn live_alias(&self, name: &AliasName) -> Option<&AliasTarget> {
        self.aliases.get(name)?.target.as_ref()
    }

    /// Every alias that exists now, by name.
    pub fn live_aliases(&self) -> impl Iterator<Item = (&AliasName, &Alias, &AliasTarget)> {
        self.aliases
            .iter()
            .filter_map(|(name, alias)| Some((name, alias, alias.target.as_ref()?)))
    }

    /// The versions some alias sends requests to (zero-weight ones included: they are
    /// named, so they stay).
    pub fn versions_in_use(&self) -> BTreeSet<u64> {
        self.live_aliases()
            .flat_map(|(_, _, target)| target.weights().keys().copied())
            .collect()
    }

    /// Points `name` at `target`; `false` when it already was (nothing is recorded).
    pub fn set_alias(
        &mut self,
        name: &AliasName,
        target: AliasTarget,
        by: &TenantName,
        now: DateTime<Utc>,
    ) -> Result<bool, AliasRefusal> {
        let previous = self.live_alias(name).cloned();
        if previous.as_ref() == Some(&target) {
            return Ok(false);
        }
        if previous.is_none() && self.live_aliases().count() >= MAX_ALIASES {
            return Err(AliasRefusal::TooMany(self.model.to_string()));
        }
        self.change(name, AliasAction::Set, Some(target), by, now);
        self.drop_deleted_beyond_bound();
        Ok(true)
    }

    /// Removes `name`, keeping its history; the value it had.
    pub fn delete_alias(
        &mut self,
        name: &AliasName,
        by: &TenantName,
        now: DateTime<Utc>,
    ) -> Result<AliasTarget, AliasRefusal> {
        let previous = self
            .live_alias(name)
            .cloned()
            .ok_or_else(|| self.no_such(name))?;
        self.change(name, AliasAction::Delete, None, by, now);
        Ok(previous)
    }

    /// Undoes the alias's last change: it takes the value it had before (a second
    /// rollback undoes the first; a deleted alias comes back). The value it now has.
    pub fn rollback_alias(
        &mut self,
        name: &AliasName,
        by: &TenantName,
        now: DateTime<Utc>,
    ) -> Result<AliasTarget, AliasRefusal> {
        let last = self
            .aliases
            .get(name)
            .and_then(Alias::last_change)
            .ok_or_else(|| self.no_such(name))?;
        let earlier = last
            .previous
            .clone()
            .ok_or_else(|| AliasRefusal::NothingToRollBack(name.to_string()))?;
        if self.live_alias(name).is_none() && self.live_aliases().count() >= MAX_ALIASES {
            return Err(AliasRefusal::TooMany(self.model.to_string()));
        }
        self.change(name, AliasAction::Rollback, Some(earlier.clone()), by, now);
        Ok(earlier)
    }

    fn change(
        &mut self,
        name: &AliasName,
        action: AliasAction,
        value: Option<AliasTarget>,
        by: &TenantName,
        now: DateTime<Utc>,
    ) {
        let alias = self.aliases.entry(name.clone()).or_default();
        let previous = alias.target.clone();
        alias.record(AliasChange {
            at: now,
            tenant: by.clone(),
            action,
            previous,
            value,
        });
    }

    /// Keeps deleted aliases' histories only while the record holds at most twice
    /// `MAX_ALIASES` names: the longest-deleted go first.
    fn drop_deleted_beyond_bound(&mut self) {
        while self.aliases.len() > 2 * MAX_ALIASES {
            let oldest = self
                .aliases
                .iter()
                .filter(|(_, alias)| alias.target.is_none())
                .min_by_key(|(_, alias)| alias.last_change().map(|c| c.at))
                .map(|(name, _)| name.clone());
            match oldest {
                Some(name) => self.aliases.remove(&name),
                None => break,
            };
        }
    }

    fn no_such(&self, name: &AliasName) -> AliasRefusal {
        AliasRefusal::NoSuchAlias {
            model: self.model.to_string(),
            alias: name.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> Result<AliasTarget, Invalid> {
        serde_json::from_value::<AliasRequest>(body)
            .expect("the shape")
            .parse()
    }

    fn name(text: &str) -> AliasName {
        AliasName::parse(text).expect("a name")
    }

    fn record() -> ModelRecord {
        let tenant = TenantName::parse("acme").expect("a tenant");
        ModelRecord::new(tenant, ModelName::parse("mnist_cnn").expect("a name"))
    }

    fn acme() -> TenantName {
        TenantName::parse("acme").expect("a tenant")
    }

    #[test]
    fn a_request_names_one_version_or_versions_by_weight() {
        assert_eq!(request(json!({"version": 7})), Ok(AliasTarget::single(7)));
        let split = request(json!({"versions": {"7": 90, "8": 10}})).expect("a split");
        assert_eq!(split.weights(), &BTreeMap::from([(7, 90), (8, 10)]));
        assert_eq!(split.only_version(), None);
    }

    #[test]
    fn a_bad_request_is_refused_naming_the_field() {
        let refused = |body: serde_json::Value, field: &str| {
            let err = request(body.clone()).expect_err("refused").to_string();
            assert!(err.contains(field), "{body}: {err}");
        };
        refused(json!({}), "either version");
        refused(
            json!({"version": 1, "versions": {"1": 1}}),
            "either version",
        );
        refused(json!({"version": 0}), "version");
        refused(json!({"version": -3}), "version");
        refused(json!({"versions": {}}), "versions must name 1 to 8");
        refused(json!({"versions": {"7": 0, "8": 0}}), "sum to more than 0");
        refused(json!({"versions": {"7": -1}}), "versions.7");
        refused(json!({"versions": {"7": 10001}}), "versions.7");
        refused(json!({"versions": {"seven": 1}}), "versions.seven");
        refused(json!({"versions": {"0": 1}}), "versions.0");
        refused(json!({"versions": {"7": 1, "07": 1}}), "named twice");
        let nine: serde_json::Map<_, _> = (1..=9).map(|v| (v.to_string(), json!(1))).collect();
        refused(json!({"versions": nine}), "not 9");
        assert!(serde_json::from_value::<AliasRequest>(json!({"verison": 1})).is_err());
    }

    #[test]
    fn a_split_sends_each_version_its_share_of_every_round_of_requests() {
        let split = request(json!({"versions": {"7": 90, "8": 10, "9": 0}})).expect("split");
        let picks: Vec<u64> = (0..10_000).map(|n| split.pick(n)).collect();
        let eights = picks.iter().filter(|v| **v == 8).count();
        assert_eq!(eights, 1_000);
        assert!(!picks.contains(&9), "a zero weight gets nothing");
        assert_eq!(AliasTarget::single(3).pick(12345), 3);
    }

    #[test]
    fn each_change_is_kept_with_the_value_before_it_and_setting_the_same_value_records_nothing() {
        let mut model = record();
        let (at, later) = (Utc::now(), Utc::now() + chrono::Duration::seconds(1));
        let production = name("production");
        assert_eq!(
            model.set_alias(&production, AliasTarget::single(1), &acme(), at),
            Ok(true)
        );
        assert_eq!(
            model.set_alias(&production, AliasTarget::single(1), &acme(), later),
            Ok(false)
        );
        let canary = request(json!({"versions": {"1": 90, "2": 10}})).expect("split");
        model
            .set_alias(&production, canary.clone(), &acme(), later)
            .expect("set");
        let history = &model.aliases[&production].history;
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].previous, Some(AliasTarget::single(1)));
        assert_eq!(history[1].value, Some(canary));
        assert_eq!((history[1].at, &history[1].tenant), (later, &acme()));
        assert_eq!(model.versions_in_use(), BTreeSet::from([1, 2]));
    }

    #[test]
    fn a_rollback_undoes_the_last_change_and_a_second_undoes_the_first() {
        let mut model = record();
        let production = name("production");
        let now = Utc::now();
        model
            .set_alias(&production, AliasTarget::single(1), &acme(), now)
            .expect("set");
        assert_eq!(
            model.rollback_alias(&production, &acme(), now),
            Err(AliasRefusal::NothingToRollBack("production".into())),
            "a new alias has nothing before it"
        );
        model
            .set_alias(&production, AliasTarget::single(2), &acme(), now)
            .expect("set");
        assert_eq!(
            model.rollback_alias(&production, &acme(), now),
            Ok(AliasTarget::single(1))
        );
        assert_eq!(model.live_alias(&production), Some(&AliasTarget::single(1)));
        assert_eq!(
            model.rollback_alias(&production, &acme(), now),
            Ok(AliasTarget::single(2))
        );
        let actions: Vec<_> = model.aliases[&production]
            .history
            .iter()
            .map(|c| c.action)
            .collect();
        assert_eq!(
            actions,
            [
                AliasAction::Set,
                AliasAction::Set,
                AliasAction::Rollback,
                AliasAction::Rollback
            ]
        );
    }

    #[test]
    fn a_deleted_alias_keeps_its_history_and_a_rollback_brings_it_back() {
        let mut model = record();
        let staging = name("staging");
        let now = Utc::now();
        assert!(matches!(
            model.delete_alias(&staging, &acme(), now),
            Err(AliasRefusal::NoSuchAlias { .. })
        ));
        model
            .set_alias(&staging, AliasTarget::single(4), &acme(), now)
            .expect("set");
        assert_eq!(
            model.delete_alias(&staging, &acme(), now),
            Ok(AliasTarget::single(4))
        );
        assert_eq!(model.live_alias(&staging), None);
        assert!(model.versions_in_use().is_empty());
        assert_eq!(model.aliases[&staging].history.len(), 2);
        assert_eq!(
            model.rollback_alias(&staging, &acme(), now),
            Ok(AliasTarget::single(4))
        );
    }

    #[test]
    fn a_model_holds_at_most_32_aliases_and_an_alias_the_newest_100_changes() {
        let mut model = record();
        let now = Utc::now();
        for n in 0..MAX_ALIASES {
            let alias = name(&format!("a{n}"));
            model
                .set_alias(&alias, AliasTarget::single(1), &acme(), now)
                .expect("set");
        }
        let one_more = model.set_alias(&name("extra"), AliasTarget::single(1), &acme(), now);
        assert_eq!(one_more, Err(AliasRefusal::TooMany("mnist_cnn".into())));
        let busy = name("a0");
        for version in 2..=(MAX_ALIAS_HISTORY as u64 + 10) {
            model
                .set_alias(&busy, AliasTarget::single(version), &acme(), now)
                .expect("set");
        }
        let history = &model.aliases[&busy].history;
        assert_eq!(history.len(), MAX_ALIAS_HISTORY);
        assert_eq!(
            history.last().and_then(|c| c.value.clone()),
            Some(AliasTarget::single(110))
        );
    }

    #[test]
    fn deleted_aliases_histories_are_dropped_oldest_first_past_twice_the_bound() {
        let mut model = record();
        let start = Utc::now();
        for n in 0..(3 * MAX_ALIASES) {
            let at = start + chrono::Duration::seconds(n as i64);
            let alias = name(&format!("a{n}"));
            model
                .set_alias(&alias, AliasTarget::single(1), &acme(), at)
                .expect("set");
            model.delete_alias(&alias, &acme(), at).expect("delete");
        }
        assert_eq!(model.aliases.len(), 2 * MAX_ALIASES);
        assert!(!model.aliases.contains_key(&name("a0")), "the oldest went");
        assert!(
            model
                .aliases
                .contains_key(&name(&format!("a{}", 3 * MAX_ALIASES - 1)))
        );
    }
}
