//! Datasets and models: what a tenant's lake folder holds.

use super::Service;
use crate::domain::path::Name;
use crate::domain::tenant::Tenant;
use crate::domain::validate::ArtifactKind;
use crate::error::{Error, Resource, Result};
use crate::ports::{ArtifactDetail, ArtifactSummary};

fn resource_of(kind: ArtifactKind) -> Resource {
    match kind {
        ArtifactKind::Dataset => Resource::Dataset,
        ArtifactKind::Model => Resource::Model,
    }
}

impl Service {
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
        id: &str,
    ) -> Result<ArtifactDetail> {
        let name = Name::parse("id", id)?;
        self.lake
            .describe(&tenant.root, kind, &name)
            .await?
            .ok_or_else(|| Error::not_found(resource_of(kind), id))
    }

    /// Deletes a dataset or model with every version.
    pub async fn delete_artifact(
        &self,
        tenant: &Tenant,
        kind: ArtifactKind,
        id: &str,
    ) -> Result<()> {
        let name = Name::parse("id", id)?;
        if self.lake.delete(&tenant.root, kind, &name).await? {
            Ok(())
        } else {
            Err(Error::not_found(resource_of(kind), id))
        }
    }
}
