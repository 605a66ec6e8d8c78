//! The domain: the task model, its state machine and request validation. No I/O here.

pub mod task;
pub mod validate;
