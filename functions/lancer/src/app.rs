//! Builds the adapters a configuration selects: what every entrypoint's `main` calls.

use std::sync::Arc;

use crate::config::Config;
use crate::dispatch::local::{LocalDispatcher, RunnerCommand};
use crate::error::Result;
use crate::lake::lance::LanceLake;
use crate::ports::{Lake, TaskStore};
use crate::runner::RunnerContext;
use crate::store::sqlite::SqliteTaskStore;

pub fn open_store(config: &Config) -> Result<Arc<dyn TaskStore>> {
    Ok(Arc::new(SqliteTaskStore::open(&config.db)?))
}

pub fn open_lake(config: &Config) -> Result<Arc<dyn Lake>> {
    Ok(Arc::new(LanceLake::open(
        &config.lake,
        config.storage_options.clone(),
    )?))
}

pub fn local_dispatcher(config: &Config, store: Arc<dyn TaskStore>) -> Result<LocalDispatcher> {
    let runner = RunnerCommand::locate(config.runner.clone(), config.runner_env())?;
    Ok(LocalDispatcher::new(
        store,
        runner,
        config.concurrency,
        config.lease,
        config.cancel_grace,
    ))
}

pub fn runner_context(config: &Config, backend: &str) -> Result<RunnerContext> {
    Ok(RunnerContext {
        store: open_store(config)?,
        lake: open_lake(config)?,
        scripts: config.scripts.clone(),
        python: config.python.clone(),
        backend: backend.to_owned(),
        multi_tenant: config.multi_tenant(),
        heartbeat_every: config.heartbeat_every(),
        cancel_grace: config.cancel_grace,
    })
}

/// `tracing` to stderr, filtered by `RUST_LOG` (default: info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
