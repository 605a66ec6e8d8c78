//! The domain: the task model, its state machine, request validation and ingestion rules.
//! No I/O here.

pub mod ingest;
pub mod task;
pub mod validate;
