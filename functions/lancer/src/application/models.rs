//! Model aliases: names a tenant gives to versions of a model (or to a split between them),
//! each change kept in the alias's history. The record is changed by compare-and-set, so
//! two API processes moving one alias at once both land, one after the other.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::info;
use utoipa::ToSchema;

use super::Service;
use crate::domain::model::{
    AliasAction, AliasChange, AliasName, AliasRefusal, AliasRequest, AliasTarget, ModelName,
    ModelRecord,
};
use crate::domain::tenant::Tenant;
use crate::domain::validate::ArtifactKind;
use crate::error::{Error, Resource, Result};

/// How often a change re-reads the record after losing a race before it gives up (409).
const CHANGE_ATTEMPTS: u32 = 16;

/// An alias as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AliasView {
    /// The model it belongs to.
    pub model: String,
    /// Its name.
    pub alias: String,
    /// The version it names, when it names just one.
    pub version: Option<u64>,
    /// Every version it names, with its relative weight (one version: 100).
    #[schema(value_type = BTreeMap<String, u32>, example = json!({"7": 90, "8": 10}))]
    pub versions: BTreeMap<u64, u32>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The tenant whose key changed it last.
    pub updated_by: String,
}

/// One change in an alias's history.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AliasChangeView {
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The tenant whose key made it.
    pub tenant: String,
    /// `set`, `rollback` or `delete`.
    pub action: AliasAction,
    /// The versions and weights before it (`null`: the alias did not exist).
    #[schema(value_type = Option<BTreeMap<String, u32>>)]
    pub previous: Option<BTreeMap<u64, u32>>,
    /// The versions and weights after it (`null`: it was deleted).
    #[schema(value_type = Option<BTreeMap<String, u32>>)]
    pub value: Option<BTreeMap<u64, u32>>,
}

/// An alias's history, newest change first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AliasHistory {
    /// The model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// Its changes, newest first (the newest 100 are kept).
    pub changes: Vec<AliasChangeView>,
}

impl From<&AliasChange> for AliasChangeView {
    fn from(change: &AliasChange) -> Self {
        Self {
            at: change.at,
            tenant: change.tenant.to_string(),
            action: change.action,
            previous: change.previous.as_ref().map(|t| t.weights().clone()),
            value: change.value.as_ref().map(|t| t.weights().clone()),
        }
    }
}

fn view(record: &ModelRecord, alias: &AliasName) -> Option<AliasView> {
    let entry = record.aliases.get(alias)?;
    let target = entry.target.as_ref()?;
    let last = entry.last_change()?;
    Some(AliasView {
        model: record.model.to_string(),
        alias: alias.to_string(),
        version: target.only_version(),
        versions: target.weights().clone(),
        updated_at: last.at,
        updated_by: last.tenant.to_string(),
    })
}

fn alias_not_found(model: &ModelName, alias: &AliasName) -> Error {
    Error::not_found(Resource::Alias, format!("{model}@{alias}"))
}

fn refused(refusal: AliasRefusal, model: &ModelName, alias: &AliasName) -> Error {
    match refusal {
        AliasRefusal::NoSuchAlias { .. } => alias_not_found(model, alias),
        other => Error::Conflict(other.to_string()),
    }
}

impl Service {
    /// A model's aliases, by name; a model the tenant's lake does not hold is not found.
    pub async fn model_aliases(
        &self,
        tenant: &Tenant,
        model: &ModelName,
    ) -> Result<Vec<AliasView>> {
        self.model_versions(tenant, model).await?;
        let Some(record) = self.models.model_record(&tenant.name, model).await? else {
            return Ok(Vec::new());
        };
        Ok(record
            .live_aliases()
            .filter_map(|(name, _, _)| view(&record, name))
            .collect())
    }

    /// One alias of a model, while it exists.
    pub async fn model_alias(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<AliasView> {
        self.models
            .model_record(&tenant.name, model)
            .await?
            .and_then(|record| view(&record, alias))
            .ok_or_else(|| alias_not_found(model, alias))
    }

    /// Points an alias at the versions `request` names, each of which must exist.
    pub async fn set_model_alias(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
        request: &AliasRequest,
    ) -> Result<AliasView> {
        let target = request.parse()?;
        let versions = self.model_versions(tenant, model).await?;
        check_versions(&target, &versions, model, request.version.is_some())?;
        let record = self
            .change_model(tenant, model, alias, |record, now| {
                record.set_alias(alias, target.clone(), &tenant.name, now)
            })
            .await?;
        info!(tenant = %tenant.name, %model, %alias, versions = ?target.weights(), "alias set");
        view(&record, alias).ok_or_else(|| alias_not_found(model, alias))
    }

    /// Removes an alias; its history stays.
    pub async fn delete_model_alias(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<()> {
        self.change_model(tenant, model, alias, |record, now| {
            record.delete_alias(alias, &tenant.name, now).map(|_| true)
        })
        .await?;
        info!(tenant = %tenant.name, %model, %alias, "alias deleted");
        Ok(())
    }

    /// Undoes an alias's last change, if the value it goes back to names versions the
    /// lake still holds.
    pub async fn rollback_model_alias(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<AliasView> {
        let versions = self.model_versions(tenant, model).await?;
        let record = self
            .change_model(tenant, model, alias, |record, now| {
                let mut tried = record.clone();
                let earlier = tried.rollback_alias(alias, &tenant.name, now)?;
                if let Some(gone) = missing_version(&earlier, &versions) {
                    return Err(AliasRefusal::NothingToRollBack(format!(
                        "{alias} (its earlier value names version {gone}, which model {model} no longer has)"
                    )));
                }
                *record = tried;
                Ok(true)
            })
            .await?;
        info!(tenant = %tenant.name, %model, %alias, "alias rolled back");
        view(&record, alias).ok_or_else(|| alias_not_found(model, alias))
    }

    /// An alias's changes, newest first; a deleted alias still has its history.
    pub async fn model_alias_history(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<AliasHistory> {
        let record = self.models.model_record(&tenant.name, model).await?;
        let entry = record
            .as_ref()
            .and_then(|record| record.aliases.get(alias))
            .ok_or_else(|| alias_not_found(model, alias))?;
        Ok(AliasHistory {
            model: model.to_string(),
            alias: alias.to_string(),
            changes: entry
                .history
                .iter()
                .rev()
                .map(AliasChangeView::from)
                .collect(),
        })
    }

    /// The versions the tenant's lake holds of `model`; not found when it holds none.
    pub(super) async fn model_versions(
        &self,
        tenant: &Tenant,
        model: &ModelName,
    ) -> Result<BTreeSet<u64>> {
        let detail = self
            .lake
            .describe(&tenant.root, ArtifactKind::Model, model.as_name())
            .await?
            .ok_or_else(|| Error::not_found(Resource::Model, model.as_str()))?;
        Ok(detail.versions.iter().map(|v| v.version).collect())
    }

    /// Applies a change to one of the model's aliases (`change_record`), its refusals
    /// answered as the alias's.
    async fn change_model(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        alias: &AliasName,
        change: impl Fn(&mut ModelRecord, DateTime<Utc>) -> Result<bool, AliasRefusal>,
    ) -> Result<ModelRecord> {
        self.change_record(tenant, model, |record, now| {
            change(record, now).map_err(|r| refused(r, model, alias))
        })
        .await
    }

    /// Applies `change` to the model's record and stores it by compare-and-set, again over
    /// a fresh read when another writer came first. `change` answers whether it changed
    /// anything (nothing is written when not).
    pub(super) async fn change_record(
        &self,
        tenant: &Tenant,
        model: &ModelName,
        mut change: impl FnMut(&mut ModelRecord, DateTime<Utc>) -> Result<bool>,
    ) -> Result<ModelRecord> {
        for attempt in 0..CHANGE_ATTEMPTS {
            let mut record = self
                .models
                .model_record(&tenant.name, model)
                .await?
                .unwrap_or_else(|| ModelRecord::new(tenant.name.clone(), model.clone()));
            if !change(&mut record, Utc::now())? {
                return Ok(record);
            }
            match self.models.update_model(record).await {
                Err(Error::Stale(_)) => lose_a_race(attempt).await,
                other => return other,
            }
        }
        Err(Error::Conflict(format!(
            "model {model} is being changed by others; try again"
        )))
    }
}

/// Waits before the next try after losing a compare-and-set: up to 1, 2, 4 ... 64 ms,
/// spread by the clock's nanoseconds so that writers who collided do not collide again.
async fn lose_a_race(attempt: u32) {
    let most = 1u64 << attempt.min(6);
    let spread = u64::from(Utc::now().timestamp_subsec_nanos()) % (most * 1_000) + 1;
    tokio::time::sleep(std::time::Duration::from_micros(spread)).await;
}

/// A 400 naming the first version `target` names that the model does not have, by its
/// field (`version` for one version, else `versions.<n>`).
fn check_versions(
    target: &AliasTarget,
    versions: &BTreeSet<u64>,
    model: &ModelName,
    single: bool,
) -> Result<()> {
    let Some(version) = missing_version(target, versions) else {
        return Ok(());
    };
    let field = if single {
        "version".to_owned()
    } else {
        format!("versions.{version}")
    };
    Err(Error::invalid(format!(
        "{field}: model {model} has no version {version} (it has {})",
        listed(versions)
    )))
}

fn missing_version(target: &AliasTarget, versions: &BTreeSet<u64>) -> Option<u64> {
    target
        .weights()
        .keys()
        .copied()
        .find(|version| !versions.contains(version))
}

/// A model's versions as a person reads them: `versions 1 to 7`, `version 3`, or the
/// first few when some between were removed.
fn listed(versions: &BTreeSet<u64>) -> String {
    let (Some(first), Some(last)) = (versions.first(), versions.last()) else {
        return "no version".into();
    };
    if first == last {
        return format!("version {first}");
    }
    if last - first + 1 == versions.len() as u64 {
        return format!("versions {first} to {last}");
    }
    let some: Vec<String> = versions.iter().take(10).map(u64::to_string).collect();
    let more = if versions.len() > 10 { ", ..." } else { "" };
    format!("versions {}{more}", some.join(", "))
}
