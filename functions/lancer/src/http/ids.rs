//! Ids and names in request paths, parsed once here so the use cases take typed values.

use crate::domain::id::{PipelineId, TaskId};
use crate::domain::model::{AliasName, ModelName};
use crate::domain::path::{Name, printable};
use crate::error::{Error, Resource, Result};

/// A task id from a path. Text that is no task id names no task, so it is a 404 like
/// another tenant's task, never a hint about which ids exist.
pub(super) fn task_id(raw: &str) -> Result<TaskId> {
    TaskId::parse(raw).map_err(|_| Error::not_found(Resource::Task, printable(raw)))
}

/// A pipeline id from a path; as `task_id`, text that is no id is not found.
pub(super) fn pipeline_id(raw: &str) -> Result<PipelineId> {
    PipelineId::parse(raw).map_err(|_| Error::not_found(Resource::Pipeline, printable(raw)))
}

/// A dataset's or model's name from a path: a name that breaks the naming rules is a 400
/// that says which rule.
pub(super) fn artifact_name(raw: &str) -> Result<Name> {
    Ok(Name::parse("id", raw)?)
}

/// A model's name from a path, by the naming rules (a 400 that says which).
pub(super) fn model_name(raw: &str) -> Result<ModelName> {
    Ok(ModelName::parse(raw)?)
}

/// An alias's name from a path, by the naming rules (a 400 that says which).
pub(super) fn alias_name(raw: &str) -> Result<AliasName> {
    Ok(AliasName::parse(raw)?)
}
