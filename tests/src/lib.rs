//! Shared helpers and conformance suites for lancer's black-box tests.

pub mod app;
pub mod aws;
pub mod dispatcher;
pub mod lake;
pub mod lambda;
pub mod mnist;
pub mod model_store;
pub mod pipeline_store;
pub mod ray;
pub mod scripts;
pub mod server;
pub mod stores;
pub mod task_store;
