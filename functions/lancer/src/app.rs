//! Builds the adapters a configuration selects: what every entrypoint's `main` calls.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::application::{Advanced, Fleet, RoundReport, Service};
use crate::config::{Backend, Config, ConfigError, TaskTable};
use crate::dispatch::local::{LocalDispatcher, RunnerCommand};
use crate::dispatch::ray::RayDispatcher;
use crate::domain::endpoint::Reserved;
use crate::domain::fair::FairLimits;
use crate::error::{Error, Result, chain};
use crate::http::origin::Hosts;
use crate::http::serve::serve_connections;
use crate::http::streams::OpenStreams;
use crate::http::{AppState, router};
use crate::lake::LakeRoot;
use crate::lake::lance::LanceLake;
use crate::ports::{Dispatcher, Lake, ModelStore, PipelineStore, TaskStore};
use crate::runner::RunnerContext;
use crate::sandbox::SandboxMode;
use crate::scripts::{REGISTRY_FILE, RegistryError, ScriptFolder, ScriptRegistry};
use crate::store::dynamodb::DynamoTaskStore;
use crate::store::sqlite::SqliteTaskStore;
use crate::telemetry;

/// Why a process could not start: its configuration, its listening socket, or an adapter
/// it could not open.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is missing, malformed or refused (an open server without API keys,
    /// an unsafe folder layout, an unusable lake root or runner binary).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API's listening socket could not be bound, or its address read back.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address it was to listen on.
        addr: std::net::SocketAddr,
        /// What the operating system answered.
        source: std::io::Error,
    },
    /// An adapter could not be opened: the SQLite task table, or the Ray jobs client.
    #[error(transparent)]
    Adapter(#[from] Error),
}

/// The task table the configuration names (DynamoDB with the standard AWS chain's
/// credentials, region and endpoint), which holds the pipelines too.
pub async fn open_stores(config: &Config) -> Result<Stores> {
    Ok(match &config.tasks {
        TaskTable::Dynamo { table } => {
            let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            Stores::of(Arc::new(DynamoTaskStore::new(
                aws_sdk_dynamodb::Client::new(&aws),
                table.clone(),
            )))
        }
        TaskTable::Sqlite(path) => Stores::of(Arc::new(SqliteTaskStore::open(path)?)),
    })
}

/// The records' stores, one table (SQLite's file, DynamoDB's table) behind all three.
pub struct Stores {
    /// Task records.
    pub tasks: Arc<dyn TaskStore>,
    /// Pipelines, schedules and the step cache.
    pub pipelines: Arc<dyn PipelineStore>,
    /// Model records: aliases and their histories.
    pub models: Arc<dyn ModelStore>,
}

impl Stores {
    fn of<S: TaskStore + PipelineStore + ModelStore + 'static>(store: Arc<S>) -> Self {
        Self {
            tasks: store.clone(),
            pipelines: store.clone(),
            models: store,
        }
    }
}

/// The Lance lake at the configured root (a local folder is created if missing); a root it
/// cannot open is a configuration error.
pub fn open_lake(config: &Config) -> Result<Arc<dyn Lake>, StartError> {
    Ok(Arc::new(LanceLake::at(
        &config.lake.root,
        config.lake.storage_options.clone(),
    )?))
}

/// The dispatcher `LANCER_BACKEND` selects.
pub fn open_dispatcher(
    config: &Config,
    store: Arc<dyn TaskStore>,
) -> Result<Arc<dyn Dispatcher>, StartError> {
    let dispatch = &config.dispatch;
    Ok(match &dispatch.backend {
        Backend::Local => {
            let runner = RunnerCommand::locate(dispatch.runner.clone(), config.runner_env())?;
            let limits = FairLimits {
                slots: dispatch.concurrency,
                per_tenant: dispatch.tenant_concurrency.unwrap_or(dispatch.concurrency),
                services_per_tenant: dispatch.tenant_services,
            };
            Arc::new(LocalDispatcher::new(
                store,
                runner,
                limits,
                dispatch.cancel_grace,
            ))
        }
        Backend::Ray(ray) => {
            // A path on Ray's nodes need not exist here; the local default must.
            let runner = match &ray.runner {
                Some(path) => path.clone(),
                None => RunnerCommand::locate(dispatch.runner.clone(), Vec::new())?.program,
            };
            Arc::new(RayDispatcher::new(
                store,
                ray.address.clone(),
                runner.to_string_lossy().into_owned(),
                config.ray_runner_env(ray),
                ray.token.as_deref(),
            )?)
        }
    })
}

/// The use cases over the adapters the configuration selects: what the API and the
/// ingestion handler run.
pub async fn service(config: &Config) -> Result<Service, StartError> {
    let Stores {
        tasks: store,
        pipelines,
        models,
    } = open_stores(config).await?;
    Ok(Service {
        pipelines,
        models,
        lake: open_lake(config)?,
        dispatcher: open_dispatcher(config, store.clone())?,
        store,
        scripts: Arc::new(ScriptFolder::new(config.scripts.root.clone())),
        api_keys: config.server.api_keys.clone(),
        ingest_rules: config.ingest_rules.clone(),
        upload_limits: config.server.uploads,
        schedule_limits: config.schedules,
        lease: config.dispatch.lease,
        fleet: Default::default(),
    })
}

/// The REST API's state: the use cases and the request time limits. `api_port` is the
/// port the API itself answers on, where it listens (none on Lambda).
pub async fn app_state(config: &Config, api_port: Option<u16>) -> Result<AppState, StartError> {
    let reserved = reserved_ports(config, api_port);
    let mut service = service(config).await?;
    service.fleet = Arc::new(Fleet::new(reserved.clone()));
    Ok(AppState {
        service,
        timeouts: config.server.timeouts,
        metrics_open: config.server.metrics_open,
        reserved,
        streams: Arc::new(OpenStreams::new(config.server.streams)),
        // A DNS-rebinding page reaches a keyless server on loopback under its own name.
        hosts: match (&config.server.api_keys, config.server.allow_open) {
            (None, false) if !on_lambda() => Hosts::Loopback {
                listen: config.server.host,
            },
            _ => Hosts::Any,
        },
    })
}

/// The ports a serving task's endpoint may never be: the API's own, Ray's dashboard, GCS
/// and client ports on the Ray backend, and the Lambda Runtime API's.
fn reserved_ports(config: &Config, api_port: Option<u16>) -> Reserved {
    let mut ports: Vec<u16> = api_port.into_iter().collect();
    if let Backend::Ray(ray) = &config.dispatch.backend {
        let dashboard = url::Url::parse(&ray.address)
            .ok()
            .and_then(|url| url.port());
        ports.extend(dashboard.into_iter().chain(RAY_PORTS));
    }
    let lambda = std::env::var("AWS_LAMBDA_RUNTIME_API").ok();
    ports.extend(lambda.and_then(|api| api.rsplit_once(':')?.1.parse::<u16>().ok()));
    Reserved { ports }
}

/// Ray's own ports on a head: the GCS, the client server and the dashboard's defaults.
const RAY_PORTS: [u16; 3] = [6379, 10001, 8265];

/// The REST API and the configured dispatcher as one local server (`lancer serve`, and
/// `lancer-api` outside Lambda), until Ctrl-C.
pub async fn serve(config: &Config) -> Result<(), StartError> {
    check_open(config)?;
    check_scripts(config)?;
    check_layout(config)?;
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    let state = Arc::new(app_state(config, Some(addr.port())).await?);
    // Tasks and pipelines left by a previous server are picked up again.
    reconcile_once(&state.service).await;
    spawn_reconciler(state.clone(), config.dispatch.lease);
    let app = router(state);
    info!(backend = config.backend_name(), lake = %config.lake.root, tasks = ?config.tasks, scripts = %config.scripts.root.display(), "embedded platform ready");
    // The one line on stdout, so scripts and tests can find a port-0 server.
    println!("lancer listening on http://{addr}");
    serve_connections(listener, app, config.server.max_connections, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

/// How often running pipelines are advanced: a step starts at most this long after the
/// steps it waits for end.
pub const PIPELINE_TICK: Duration = Duration::from_secs(1);

/// One round of reconcile: the tasks' (leases, pending tasks), then the pipelines'. What
/// the AWS sweeper runs per invocation, and answers; failures are logged, counted and
/// retried next round.
pub async fn reconcile_once(service: &Service) -> RoundReport {
    let mut report = reconcile_tasks(service).await;
    let pipelines = advance_pipelines(service).await;
    report.pipelines = pipelines.pipelines;
    report.errors += pipelines.errors;
    report.errors += serve_models(service).await.errors;
    report
}

/// How often served models' replicas are matched to their load and their routes read
/// again: a replica that dies is replaced, and one that starts is routed to, within this.
pub const SERVING_TICK: Duration = Duration::from_secs(1);

async fn serve_models(service: &Service) -> crate::application::ServingReport {
    let report = service.reconcile_serving().await;
    if report.started + report.stopped + report.ended > 0 || report.errors > 0 {
        info!(?report, "serving round");
    }
    report
}

async fn reconcile_tasks(service: &Service) -> RoundReport {
    let report = service.reconcile().await;
    let outcome = if report.errors > 0 { "errors" } else { "ok" };
    telemetry::global().add(telemetry::RECONCILE_ROUNDS, &[("outcome", outcome)], 1.0);
    if report.errors > 0 {
        warn!(
            ?report,
            backend = service.dispatcher.backend(),
            "reconcile round had errors"
        );
    } else if report.requeued + report.failed > 0 {
        info!(?report, "reconcile round");
    }
    report
}

async fn advance_pipelines(service: &Service) -> Advanced {
    service.advance_pipelines().await.unwrap_or_else(|err| {
        warn!(%err, "advancing pipelines failed");
        Advanced {
            errors: 1,
            ..Default::default()
        }
    })
}

/// Reconciles the dispatcher every half lease, advances pipelines every `PIPELINE_TICK`
/// and serves models every `SERVING_TICK`, until the process ends. Nothing is kept between rounds: the store is
/// the truth, so any number of processes may run this.
pub fn spawn_reconciler<S: AsRef<Service> + Send + Sync + 'static>(
    owner: Arc<S>,
    lease: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let service = (*owner).as_ref();
        let mut tasks = tokio::time::interval((lease / 2).max(Duration::from_millis(500)));
        let mut pipelines = tokio::time::interval(PIPELINE_TICK);
        let mut serving = tokio::time::interval(SERVING_TICK);
        loop {
            tokio::select! {
                _ = tasks.tick() => {
                    reconcile_tasks(service).await;
                }
                _ = pipelines.tick() => {
                    advance_pipelines(service).await;
                }
                _ = serving.tick() => {
                    serve_models(service).await;
                }
            }
        }
    })
}

/// Auth fails closed: a server without API keys listens on loopback only, unless the
/// operator says in so many words that anyone who reaches it may run code.
fn check_open(config: &Config) -> Result<(), ConfigError> {
    let server = &config.server;
    if server.api_keys.is_some() || server.host.is_loopback() {
        return Ok(());
    }
    let addr = config.listen_addr();
    if !server.allow_open {
        return Err(ConfigError(format!(
            "refusing to listen on {addr} without API keys: anyone who could reach it could run code. Set LANCER_API_KEYS, listen on 127.0.0.1, or set LANCER_ALLOW_OPEN=true to accept that"
        )));
    }
    warn!(%addr, "LANCER_ALLOW_OPEN: no API keys and listening beyond loopback; anyone who can reach it can run code");
    Ok(())
}

/// Stops the server at start-up on a broken script registry, and says when it is empty.
fn check_scripts(config: &Config) -> Result<(), ConfigError> {
    let root = &config.scripts.root;
    let broken = |err: RegistryError| {
        ConfigError(format!(
            "LANCER_SCRIPTS {}: {}",
            root.display(),
            chain(&err)
        ))
    };
    let registry = ScriptRegistry::load(root).map_err(broken)?;
    registry.check_all().map_err(broken)?;
    if registry.is_empty() {
        warn!(scripts = %root.display(), "no scripts are registered: every task will be refused until {REGISTRY_FILE} lists some");
    }
    Ok(())
}

/// Scripts may read their scripts folder, and write their tenant's lake folder: a task
/// table or a lake inside the scripts folder is readable by every script, and a scripts
/// folder inside the lake is writable by tenants' scripts. Such a layout is refused where
/// the sandbox is required, and warned about loudly elsewhere.
fn check_layout(config: &Config) -> Result<(), ConfigError> {
    let Some(overlap) = layout_overlap(config) else {
        return Ok(());
    };
    if config.scripts.sandbox == SandboxMode::Required {
        return Err(ConfigError(format!(
            "{overlap}: with LANCER_SANDBOX=required, lancer refuses this layout. Keep LANCER_LAKE and LANCER_DB outside LANCER_SCRIPTS, and LANCER_SCRIPTS outside the lake"
        )));
    }
    warn!(
        "UNSAFE LAYOUT: {overlap}: every script can read it. Keep LANCER_LAKE and LANCER_DB outside LANCER_SCRIPTS (LANCER_SANDBOX=required refuses this layout)"
    );
    Ok(())
}

/// What in the configuration shares a folder it must not, if anything: scripts read the
/// scripts folder and lancer's own binaries, so neither may hold the task table or the
/// lake, and the scripts folder may not be inside the lake, which scripts write.
fn layout_overlap(config: &Config) -> Option<String> {
    let scripts = std::fs::canonicalize(&config.scripts.root).ok()?;
    let readable = [
        ("the scripts folder", Some(scripts.clone())),
        ("lancer's binaries folder", crate::runner::own_folder()),
    ];
    let resolved = |path: &std::path::Path| {
        let absolute = std::path::absolute(path).ok()?;
        // The file or folder may not exist yet: resolve its nearest existing ancestor.
        let existing = absolute.ancestors().find(|a| a.exists())?;
        let rest = absolute.strip_prefix(existing).ok()?;
        Some(std::fs::canonicalize(existing).ok()?.join(rest))
    };
    let mut held = Vec::new();
    if let TaskTable::Sqlite(db) = &config.tasks {
        held.push(("the task table", db, resolved(db)?));
    }
    if let LakeRoot::Local(lake) = &config.lake.root {
        let lake_path = resolved(lake)?;
        if scripts.starts_with(&lake_path) {
            return Some(format!(
                "the scripts folder {} is inside the lake",
                scripts.display()
            ));
        }
        held.push(("the lake", lake, lake_path));
    }
    for (what, given, path) in held {
        if let Some((folder, _)) = readable
            .iter()
            .find(|(_, root)| root.as_ref().is_some_and(|root| path.starts_with(root)))
        {
            return Some(format!("{what} {} is inside {folder}", given.display()));
        }
    }
    None
}

/// True inside AWS Lambda (or an emulator of its Runtime API).
pub fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// What `lancer-runner` needs to run a task: the task table and lake the configuration
/// names, and its scripts, sandbox, heartbeat, lease and cancel settings.
pub async fn runner_context(config: &Config) -> Result<RunnerContext, StartError> {
    Ok(RunnerContext {
        store: open_stores(config).await?.tasks,
        lake: open_lake(config)?,
        scripts: config.scripts.root.clone(),
        python: config.scripts.python.clone(),
        backend: config.backend_name().to_owned(),
        script_env: config.scripts.env.clone(),
        sandbox: config.scripts.sandbox,
        heartbeat_every: config.heartbeat_every(),
        lease: config.dispatch.lease,
        cancel_grace: config.dispatch.cancel_grace,
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
