//! Builds the adapters a configuration selects: what every entrypoint's `main` calls.

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::{Backend, Config};
use crate::dispatch::local::{LocalDispatcher, RunnerCommand};
use crate::dispatch::ray::RayDispatcher;
use crate::dispatch::spawn_reconciler;
use crate::error::{Error, Result};
use crate::http::{AppState, router};
use crate::lake::lance::LanceLake;
use crate::ports::{Dispatcher, Lake, TaskStore};
use crate::runner::RunnerContext;
use crate::scripts::{REGISTRY_FILE, ScriptRegistry};
use crate::store::dynamodb::DynamoTaskStore;
use crate::store::sqlite::SqliteTaskStore;

/// DynamoDB when `LANCER_TASK_TABLE` names a table (AWS credentials, region and endpoint
/// from the standard chain), else the SQLite file.
pub async fn open_store(config: &Config) -> Result<Arc<dyn TaskStore>> {
    Ok(match &config.task_table {
        Some(table) => {
            let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            Arc::new(DynamoTaskStore::new(
                aws_sdk_dynamodb::Client::new(&aws),
                table.clone(),
            ))
        }
        None => Arc::new(SqliteTaskStore::open(&config.db)?),
    })
}

pub fn open_lake(config: &Config) -> Result<Arc<dyn Lake>> {
    Ok(Arc::new(LanceLake::open(
        &config.lake,
        config.storage_options.clone(),
    )?))
}

/// The dispatcher `LANCER_BACKEND` selects.
pub fn open_dispatcher(config: &Config, store: Arc<dyn TaskStore>) -> Result<Arc<dyn Dispatcher>> {
    Ok(match &config.backend {
        Backend::Local => {
            let runner = RunnerCommand::locate(config.runner.clone(), config.runner_env())?;
            Arc::new(LocalDispatcher::new(
                store,
                runner,
                config.concurrency,
                config.lease,
                config.cancel_grace,
            ))
        }
        Backend::Ray(ray) => {
            // A path on Ray's nodes need not exist here; the local default must.
            let runner = match &ray.runner {
                Some(path) => path.clone(),
                None => RunnerCommand::locate(config.runner.clone(), Vec::new())?.program,
            };
            let mut env: std::collections::BTreeMap<_, _> =
                config.runner_env().into_iter().collect();
            env.extend(ray.env.clone());
            Arc::new(RayDispatcher::new(
                store,
                ray.address.clone(),
                runner.to_string_lossy().into_owned(),
                env,
                config.lease,
            )?)
        }
    })
}

/// Everything the API and the ingestion handler need, from the configuration.
pub async fn app_state(config: &Config) -> Result<AppState> {
    let store = open_store(config).await?;
    Ok(AppState {
        lake: open_lake(config)?,
        dispatcher: open_dispatcher(config, store.clone())?,
        store,
        scripts: config.scripts.clone(),
        api_keys: config.api_keys.clone(),
        ingest_rules: config.ingest_rules.clone(),
    })
}

/// The REST API and the configured dispatcher as one local server (`lancer serve`, and
/// `lancer-api` outside Lambda), until Ctrl-C.
pub async fn serve(config: &Config) -> Result<()> {
    check_open(config)?;
    check_scripts(config)?;
    let state = app_state(config).await?;
    // Tasks left pending or running by a previous server are picked up again.
    if let Err(err) = state.dispatcher.reconcile().await {
        warn!(%err, backend = state.dispatcher.backend(), "first reconcile failed; retrying every half lease");
    }
    spawn_reconciler(state.dispatcher.clone(), config.lease);
    let app = router(state);
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| Error::invalid(format!("cannot listen on {addr}: {err}")))?;
    let addr = listener.local_addr().map_err(Error::internal)?;
    info!(backend = config.backend_name(), lake = %config.lake, db = %config.db.display(), scripts = %config.scripts.display(), "embedded platform ready");
    // The one line on stdout, so scripts and tests can find a port-0 server.
    println!("lancer listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(Error::internal)
}

/// Auth fails closed: a server without API keys listens on loopback only, unless the
/// operator says in so many words that anyone who reaches it may run code.
fn check_open(config: &Config) -> Result<()> {
    if config.api_keys.is_some() || config.host.is_loopback() {
        return Ok(());
    }
    let addr = config.listen_addr();
    if !config.allow_open {
        return Err(Error::invalid(format!(
            "refusing to listen on {addr} without API keys: anyone who could reach it could run code. Set LANCER_API_KEYS, listen on 127.0.0.1, or set LANCER_ALLOW_OPEN=true to accept that"
        )));
    }
    warn!(%addr, "LANCER_ALLOW_OPEN: no API keys and listening beyond loopback; anyone who can reach it can run code");
    Ok(())
}

/// Stops the server at start-up on a broken script registry, and says when it is empty.
fn check_scripts(config: &Config) -> Result<()> {
    let registry = ScriptRegistry::load(&config.scripts)?;
    registry.check_all()?;
    if registry.is_empty() {
        warn!(scripts = %config.scripts.display(), "no scripts are registered: every task will be refused until {REGISTRY_FILE} lists some");
    }
    Ok(())
}

/// True inside AWS Lambda (or an emulator of its Runtime API).
pub fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

pub async fn runner_context(config: &Config) -> Result<RunnerContext> {
    Ok(RunnerContext {
        store: open_store(config).await?,
        lake: open_lake(config)?,
        scripts: config.scripts.clone(),
        python: config.python.clone(),
        backend: config.backend_name().to_owned(),
        script_env: config.script_env.clone(),
        heartbeat_every: config.heartbeat_every(),
        lease: config.lease,
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
