//! Dispatcher adapters: local subprocesses, Ray jobs, and an in-memory fake. What every
//! backend shares, the reconcile round, is a use case (`application::reconcile`).

pub mod listeners;
pub mod local;
pub mod memory;
pub mod ray;
