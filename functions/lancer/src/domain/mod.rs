//! The domain: the task model, its state machine, names and lake paths, tenants, request
//! validation and ingestion rules. No I/O here.

pub mod cache;
pub mod endpoint;
pub mod error;
pub mod fair;
pub mod id;
pub mod ingest;
pub mod limits;
pub mod model;
pub mod path;
pub mod pipeline;
pub mod progress;
pub mod serving;
pub mod task;
pub mod tenant;
pub mod validate;
