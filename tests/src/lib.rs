//! Shared helpers and conformance suites for lancer's black-box tests.

pub mod app;
pub mod lake;
pub mod server;
pub mod task_store;
