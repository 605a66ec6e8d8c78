//! The ids of records, in a module of their own so that tasks and pipelines, which name
//! each other (a task's lineage names its pipeline, a pipeline's steps their tasks), each
//! import them from here rather than from one another.

super::path::name_type!(
    /// A task's id: a name, in practice a UUIDv7 (so ids sort by creation time). A
    /// client's id is parsed before any lookup, and one that cannot parse is no task's.
    TaskId,
    "task id"
);

impl TaskId {
    /// The id of a task created now: the caller brings the UUID, the domain reads no clock.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self::parse(&uuid.to_string()).expect("a UUID is a name")
    }
}

super::path::name_type!(
    /// A pipeline's id: a UUIDv7, so ids sort by creation time.
    PipelineId,
    "pipeline id"
);

impl PipelineId {
    /// The id of a pipeline created now, from the caller's UUID.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self::parse(&uuid.to_string()).expect("a UUID is a name")
    }
}
