//! Datasets and models: what a tenant's lake folder holds.

use super::Service;
use crate::domain::model::ModelName;
use crate::domain::path::Name;
use crate::domain::tenant::Tenant;
use crate::domain::validate::{ArtifactKind, split_version};
use crate::error::{Error, Resource, Result};
use crate::ports::{ArtifactDetail, ArtifactSummary, Version};

pub(super) fn resource_of(kind: ArtifactKind) -> Resource {
    match kind {
        ArtifactKind::Dataset => Resource::Dataset,
        ArtifactKind::Model => Resource::Model,
    }
}

impl Service {
    /// The tenant's datasets or models, each with its latest version.
    pub async fn list_artifacts(
        &self,
        tenant: &Tenant,
        kind: ArtifactKind,
    ) -> Result<Vec<ArtifactSummary>> {
        self.lake.list(&tenant.root, kind).await
    }

    /// One dataset or model; a name the tenant's folder does not hold is not found.
    pub async fn describe_artifact(
        &self,
        tenant: &Tenant,
        kind: ArtifactKind,
        name: &Name,
    ) -> Result<ArtifactDetail> {
        let mut detail = self
            .lake
            .describe(&tenant.root, kind, name)
            .await?
            .ok_or_else(|| Error::not_found(resource_of(kind), name.as_str()))?;
        for version in &mut detail.versions {
            self.add_lineage(tenant, version).await?;
        }
        Ok(detail)
    }

    /// Names what made a version from the task that wrote it: its pipeline step, and the
    /// input version it read.
    async fn add_lineage(&self, tenant: &Tenant, version: &mut Version) -> Result<()> {
        let Some(id) = &version.task_id else {
            return Ok(());
        };
        let Some(task) = self.store.get(id).await? else {
            return Ok(()); // expired from the task table; the tag still names it
        };
        if task.tenant != tenant.name {
            return Ok(());
        }
        let lineage = task.lineage;
        version.pipeline_id = lineage.pipeline;
        version.step = lineage.step;
        if !task.spec.input.is_empty() {
            let (input, _) = split_version(&task.spec.input)?;
            version.input_path = Some(input.to_owned());
            version.input_version = lineage.input_version;
        }
        Ok(())
    }

    /// Deletes a dataset or model with every version; a model an alias still names is a
    /// conflict, and a deleted model's aliases' histories go with it.
    pub async fn delete_artifact(
        &self,
        tenant: &Tenant,
        kind: ArtifactKind,
        name: &Name,
    ) -> Result<()> {
        let model = match kind {
            ArtifactKind::Model => Some(ModelName::parse(name.as_str())?),
            ArtifactKind::Dataset => None,
        };
        if let Some(model) = &model {
            self.refuse_if_aliased(tenant, model).await?;
        }
        if !self.lake.delete(&tenant.root, kind, name).await? {
            return Err(Error::not_found(resource_of(kind), name.as_str()));
        }
        if let Some(model) = &model {
            self.models.delete_model_record(&tenant.name, model).await?;
        }
        Ok(())
    }

    async fn refuse_if_aliased(&self, tenant: &Tenant, model: &ModelName) -> Result<()> {
        let Some(record) = self.models.model_record(&tenant.name, model).await? else {
            return Ok(());
        };
        if record.is_served() {
            return Err(Error::Conflict(format!(
                "model {model} is served: DELETE /api/v1/models/{model}/serving first"
            )));
        }
        let names: Vec<String> = record
            .live_aliases()
            .map(|(name, _, _)| name.to_string())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        Err(Error::Conflict(format!(
            "model {model} is in use by its aliases {}: delete them first",
            names.join(", ")
        )))
    }
}
