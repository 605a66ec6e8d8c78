//! Builds the adapters a configuration selects: what every entrypoint's `main` calls.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{Backend, Config};
use crate::dispatch::local::{LocalDispatcher, RunnerCommand};
use crate::dispatch::ray::RayDispatcher;
use crate::dispatch::spawn_reconciler;
use crate::domain::fair::FairLimits;
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
            let limits = FairLimits {
                slots: config.concurrency,
                per_tenant: config.tenant_concurrency.unwrap_or(config.concurrency),
                services_per_tenant: config.tenant_services,
            };
            Arc::new(LocalDispatcher::new(
                store,
                runner,
                limits,
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
            Arc::new(RayDispatcher::new(
                store,
                ray.address.clone(),
                runner.to_string_lossy().into_owned(),
                config.ray_runner_env(ray),
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
        upload_limits: config.uploads,
        timeouts: config.timeouts,
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
    serve_connections(listener, app, config.max_connections, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

/// How long a client has to send a request's headers: a slow-loris client that drips
/// bytes holds a connection no longer than this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests get to finish once the server is asked to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, with at most `max_connections`
/// at once (more wait in the kernel's accept queue) and a bound on the time to read a
/// request's headers: axum's own `serve` has neither.
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the slots are never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still open after the drain timeout were dropped");
    }
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
        sandbox: config.sandbox,
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
