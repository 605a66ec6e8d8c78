//! lancer: a serverless-style ML job service on object storage.
//!
//! The domain (task model, state machine, validation) does no I/O; it talks to the world
//! through the ports (`TaskStore`, `Lake`, `Dispatcher`), whose adapters live beside it.

#![warn(missing_docs)]

pub mod app;
pub mod application;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod lake;
pub mod ports;
pub mod runner;
pub mod sandbox;
pub mod scripts;
pub mod store;
pub mod telemetry;

pub use error::{Error, Result};
