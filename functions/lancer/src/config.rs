//! Configuration, read once from `LANCER_*` environment variables with embedded defaults.
//! `Var` is the one table of variable names: the loader reads it, and `runner_env` passes
//! a runner the part of it that runners read.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::ingest::IngestRules;
use crate::domain::tenant::TenantName;
use crate::lake::{LakeRoot, absolute};
use crate::sandbox::SandboxMode;

/// A configuration lancer cannot run with; the message names the variable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

type Result<T, E = ConfigError> = std::result::Result<T, E>;

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// Every variable lancer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Lake,
    StorageOptions,
    Db,
    TaskTable,
    Host,
    Port,
    Scripts,
    ApiKeys,
    ApiKeysFile,
    AllowOpen,
    MetricsOpen,
    MaxConnections,
    MaxStreams,
    TenantStreams,
    TenantSchedules,
    TenantRunsPerMinute,
    ScheduleMinInterval,
    Concurrency,
    TenantConcurrency,
    TenantServices,
    Lease,
    CancelGrace,
    Runner,
    Python,
    Backend,
    IngestRules,
    ScriptEnv,
    Sandbox,
    MaxUploadBytes,
    UploadQuotaBytes,
    RequestTimeout,
    UploadTimeout,
    RayAddress,
    RayRunner,
    RayEnv,
    RayToken,
}

impl Var {
    /// The variables a runner reads to rebuild the part of the configuration it needs.
    const FOR_RUNNERS: [Var; 11] = [
        Var::Lake,
        Var::StorageOptions,
        Var::Db,
        Var::TaskTable,
        Var::Scripts,
        Var::Lease,
        Var::CancelGrace,
        Var::Python,
        Var::Backend,
        Var::ScriptEnv,
        Var::Sandbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Var::Lake => "LANCER_LAKE",
            Var::StorageOptions => "LANCER_STORAGE_OPTIONS",
            Var::Db => "LANCER_DB",
            Var::TaskTable => "LANCER_TASK_TABLE",
            Var::Host => "LANCER_HOST",
            Var::Port => "LANCER_PORT",
            Var::Scripts => "LANCER_SCRIPTS",
            Var::ApiKeys => "LANCER_API_KEYS",
            Var::ApiKeysFile => "LANCER_API_KEYS_FILE",
            Var::AllowOpen => "LANCER_ALLOW_OPEN",
            Var::MetricsOpen => "LANCER_METRICS_OPEN",
            Var::MaxConnections => "LANCER_MAX_CONNECTIONS",
            Var::MaxStreams => "LANCER_MAX_STREAMS",
            Var::TenantStreams => "LANCER_TENANT_STREAMS",
            Var::TenantSchedules => "LANCER_TENANT_SCHEDULES",
            Var::TenantRunsPerMinute => "LANCER_TENANT_RUNS_PER_MINUTE",
            Var::ScheduleMinInterval => "LANCER_SCHEDULE_MIN_INTERVAL_SECS",
            Var::Concurrency => "LANCER_CONCURRENCY",
            Var::TenantConcurrency => "LANCER_TENANT_CONCURRENCY",
            Var::TenantServices => "LANCER_TENANT_SERVICES",
            Var::Lease => "LANCER_LEASE_SECS",
            Var::CancelGrace => "LANCER_CANCEL_GRACE_SECS",
            Var::Runner => "LANCER_RUNNER",
            Var::Python => "LANCER_PYTHON",
            Var::Backend => "LANCER_BACKEND",
            Var::IngestRules => "LANCER_INGEST_RULES",
            Var::ScriptEnv => "LANCER_SCRIPT_ENV",
            Var::Sandbox => "LANCER_SANDBOX",
            Var::MaxUploadBytes => "LANCER_MAX_UPLOAD_BYTES",
            Var::UploadQuotaBytes => "LANCER_UPLOAD_QUOTA_BYTES",
            Var::RequestTimeout => "LANCER_REQUEST_TIMEOUT_SECS",
            Var::UploadTimeout => "LANCER_UPLOAD_TIMEOUT_SECS",
            Var::RayAddress => "RAY_ADDRESS",
            Var::RayRunner => "LANCER_RAY_RUNNER",
            Var::RayEnv => "LANCER_RAY_ENV",
            Var::RayToken => "LANCER_RAY_TOKEN",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub lake: LakeConfig,
    /// `LANCER_DB` or `LANCER_TASK_TABLE`: where task records live.
    pub tasks: TaskTable,
    pub server: ServerConfig,
    pub dispatch: DispatchConfig,
    pub scripts: ScriptConfig,
    /// `LANCER_INGEST_RULES`: JSON array of rules that turn uploads under `raw/` into tasks.
    pub ingest_rules: IngestRules,
    /// `LANCER_TENANT_SCHEDULES`, `LANCER_TENANT_RUNS_PER_MINUTE`,
    /// `LANCER_SCHEDULE_MIN_INTERVAL_SECS`.
    pub schedules: ScheduleLimits,
}

/// How much a tenant's schedules may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleLimits {
    /// Schedules one tenant may have active at once.
    pub per_tenant: usize,
    /// Runs one tenant's schedules may start in a minute; ticks past it are let pass.
    pub runs_per_minute: usize,
    /// The shortest time a schedule may leave between two runs.
    pub min_interval: Duration,
}

impl Default for ScheduleLimits {
    fn default() -> Self {
        Self {
            per_tenant: 10,
            runs_per_minute: 10,
            min_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LakeConfig {
    /// `LANCER_LAKE`: a local folder or an `s3://bucket/prefix` URL.
    pub root: LakeRoot,
    /// `LANCER_STORAGE_OPTIONS`: JSON object of object-store / Lance storage options.
    pub storage_options: BTreeMap<String, String>,
}

/// The task table.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskTable {
    /// `LANCER_DB`: a SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// `LANCER_TASK_TABLE`: a DynamoDB table (the AWS level); credentials, region and
    /// endpoint come from the standard AWS chain.
    Dynamo { table: String },
}

/// What `lancer serve` and the API function answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `LANCER_HOST` and `LANCER_PORT`: where `lancer serve` listens.
    pub host: IpAddr,
    pub port: u16,
    /// `LANCER_API_KEYS` (`key=tenant,...`) or `LANCER_API_KEYS_FILE` (a `key=tenant` per line).
    pub api_keys: Option<ApiKeys>,
    /// `LANCER_ALLOW_OPEN=true`: let a server without API keys listen beyond loopback.
    pub allow_open: bool,
    /// `GET /metrics` without a key, covering every tenant (`LANCER_METRICS_OPEN`): for a
    /// Prometheus on the operator's network. Otherwise it needs a key and shows that
    /// tenant's tasks.
    pub metrics_open: bool,
    /// `LANCER_MAX_CONNECTIONS`: connections `lancer serve` serves at once.
    pub max_connections: usize,
    /// `LANCER_MAX_STREAMS` and `LANCER_TENANT_STREAMS`: event streams open at once, in
    /// all and per tenant.
    pub streams: StreamLimits,
    /// `LANCER_MAX_UPLOAD_BYTES` and `LANCER_UPLOAD_QUOTA_BYTES`.
    pub uploads: UploadLimits,
    /// `LANCER_REQUEST_TIMEOUT_SECS` and `LANCER_UPLOAD_TIMEOUT_SECS`.
    pub timeouts: Timeouts,
}

/// How many event streams may be open at once (`LANCER_MAX_STREAMS`, `LANCER_TENANT_STREAMS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub total: usize,
    pub per_tenant: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            total: 256,
            per_tenant: 16,
        }
    }
}

/// Where and how runners run.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchConfig {
    /// `LANCER_BACKEND` (`local` or `ray`).
    pub backend: Backend,
    /// `LANCER_CONCURRENCY`: batch tasks the local dispatcher runs at once.
    pub concurrency: usize,
    /// `LANCER_TENANT_CONCURRENCY`: batch tasks one tenant may run at once (default: all).
    pub tenant_concurrency: Option<usize>,
    /// `LANCER_TENANT_SERVICES`: services one tenant may run beside the batch slots.
    pub tenant_services: usize,
    /// `LANCER_LEASE_SECS`: a running task without a heartbeat for this long has lost its runner.
    pub lease: Duration,
    /// `LANCER_CANCEL_GRACE_SECS`: time between SIGTERM and SIGKILL on cancel.
    pub cancel_grace: Duration,
    /// `LANCER_RUNNER`: the runner binary (default: `lancer-runner` beside the current binary).
    pub runner: Option<PathBuf>,
}

/// How scripts are found and started.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptConfig {
    /// `LANCER_SCRIPTS`: the folder holding `lancer-scripts.json` and the scripts.
    pub root: PathBuf,
    /// `LANCER_PYTHON`: the interpreter for `*.py` scripts.
    pub python: String,
    /// `LANCER_SCRIPT_ENV`: a JSON object of variables the operator gives every script (a
    /// script's environment is otherwise an allow-list; see the README).
    pub env: BTreeMap<String, String>,
    /// `LANCER_SANDBOX` (`off`, `best-effort`, `required`): whether scripts run confined
    /// by Landlock.
    pub sandbox: SandboxMode,
}

/// How long a request may take, body included, before it is answered 408.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub request: Duration,
    /// An upload's body may take longer to arrive.
    pub upload: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(30),
            upload: Duration::from_secs(15 * 60),
        }
    }
}

/// How much raw data a tenant may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// The most bytes of one upload.
    pub max_bytes: u64,
    /// The most bytes a tenant may keep under `raw/`.
    pub quota_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            quota_bytes: 10 << 30,
        }
    }
}

/// Where runners run.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// Subprocesses of `lancer serve`.
    Local,
    /// Ray jobs, submitted through the Jobs REST API of a Ray head.
    Ray(RayConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RayConfig {
    /// `RAY_ADDRESS`: the head's dashboard URL (default `http://127.0.0.1:8265`).
    pub address: String,
    /// `LANCER_RAY_RUNNER`: the runner binary's path on Ray's nodes (default: the local one,
    /// right for a local Ray head; `/usr/local/bin/lancer-runner` in the runner image).
    pub runner: Option<PathBuf>,
    /// `LANCER_RAY_ENV`: a JSON object of variables that replace the runner's defaults on
    /// Ray's nodes, where paths differ from this machine's (`LANCER_SCRIPTS`, `LANCER_PYTHON`).
    pub env: BTreeMap<String, String>,
    /// `LANCER_RAY_TOKEN`: the bearer token of a head with token authentication. It stays
    /// with the Jobs client: no job's environment carries it.
    pub token: Option<String>,
}

/// Where the lake and the task table live by default: `$XDG_DATA_HOME/lancer` (else
/// `~/.local/share/lancer`), outside the scripts folder (the current one by default), which
/// scripts may read.
pub fn data_dir() -> PathBuf {
    let share = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    share.join("lancer")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lake: LakeConfig {
                root: LakeRoot::Local(data_dir().join("lance_storage")),
                storage_options: BTreeMap::new(),
            },
            tasks: TaskTable::Sqlite(data_dir().join("lancer.db")),
            server: ServerConfig {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 8000,
                api_keys: None,
                allow_open: false,
                metrics_open: false,
                max_connections: 1024,
                streams: StreamLimits::default(),
                uploads: UploadLimits::default(),
                timeouts: Timeouts::default(),
            },
            dispatch: DispatchConfig {
                backend: Backend::Local,
                concurrency: 1,
                tenant_concurrency: None,
                tenant_services: 4,
                lease: Duration::from_secs(30),
                cancel_grace: Duration::from_secs(5),
                runner: None,
            },
            scripts: ScriptConfig {
                root: ".".into(),
                python: "python3".into(),
                env: BTreeMap::new(),
                sandbox: SandboxMode::default(),
            },
            ingest_rules: IngestRules::default(),
            schedules: ScheduleLimits::default(),
        }
    }
}

/// API key -> tenant. Keys are held as SHA-256 digests: a lookup hashes the presented key
/// first, so its timing tells nothing about how much of a real key was guessed, and the
/// keys themselves never sit in memory or in debug output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiKeys(HashMap<[u8; 32], TenantName>);

fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Whether some key belongs to `tenant`.
    pub fn has_tenant(&self, tenant: &TenantName) -> bool {
        self.0.values().any(|name| name == tenant)
    }

    /// Parses `key=tenant` entries separated by commas or newlines; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = HashMap::new();
        for entry in text
            .split([',', '\n'])
            .map(|e| e.split('#').next().unwrap_or("").trim())
        {
            if entry.is_empty() {
                continue;
            }
            let (key, tenant) = entry
                .split_once('=')
                .ok_or_else(|| bad("API keys are written key=tenant"))?;
            let (key, tenant) = (key.trim(), tenant.trim());
            if key.len() < 8 {
                return Err(bad("an API key must be at least 8 characters"));
            }
            // Records of the keyless single tenant carry this name: a keyed tenant of the
            // same name would inherit them.
            if tenant == crate::domain::tenant::DEFAULT_TENANT {
                return Err(bad(format!(
                    "the tenant name '{tenant}' is reserved for the server without keys; choose another"
                )));
            }
            keys.insert(
                key_digest(key),
                TenantName::parse(tenant).map_err(|err| bad(err.to_string()))?,
            );
        }
        if keys.is_empty() {
            return Err(bad("API keys are configured but none was given"));
        }
        Ok(Self(keys))
    }

    pub fn tenant_of(&self, key: &str) -> Option<&TenantName> {
        self.0.get(&key_digest(key))
    }
}

/// Reads variables through a lookup. An empty variable counts as unset, except the API
/// keys: `LANCER_API_KEYS=""` is a key set with no key, refused rather than read as open
/// mode, so auth fails closed.
struct Reader<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    fn raw(&self, var: Var) -> Option<String> {
        (self.lookup)(var.name())
    }

    fn text(&self, var: Var) -> Option<String> {
        self.raw(var).filter(|value| !value.is_empty())
    }

    fn number(&self, var: Var) -> Result<Option<u64>> {
        self.text(var)
            .map(|raw| {
                raw.parse::<u64>().map_err(|_| {
                    bad(format!(
                        "{} must be a whole number, not '{raw}'",
                        var.name()
                    ))
                })
            })
            .transpose()
    }

    /// A number that must be at least 1 (a slot count, a limit, a timeout): a 0 would
    /// stop the server doing its work, so it is refused rather than read as 1.
    fn positive(&self, var: Var) -> Result<Option<u64>> {
        match self.number(var)? {
            Some(0) => Err(bad(format!("{} must be at least 1, not 0", var.name()))),
            number => Ok(number),
        }
    }

    fn count(&self, var: Var, default: usize) -> Result<usize> {
        Ok(self.positive(var)?.map_or(default, |n| n as usize))
    }

    fn seconds(&self, var: Var, default: Duration) -> Result<Duration> {
        Ok(self.positive(var)?.map_or(default, Duration::from_secs))
    }

    fn flag(&self, var: Var) -> Result<bool> {
        match self.text(var).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(bad(format!(
                "{} must be true or false, not '{other}'",
                var.name()
            ))),
        }
    }

    /// A variable holding a JSON object of strings; empty when unset.
    fn json_object(&self, var: Var) -> Result<BTreeMap<String, String>> {
        match self.text(var) {
            Some(json) => serde_json::from_str(&json).map_err(|err| {
                bad(format!(
                    "{} must be a JSON object of strings: {err}",
                    var.name()
                ))
            }),
            None => Ok(BTreeMap::new()),
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `lookup`, a variable's value by name.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let vars = Reader { lookup };
        let defaults = Self::default();
        Ok(Self {
            lake: LakeConfig {
                root: vars
                    .text(Var::Lake)
                    .map_or(defaults.lake.root, |root| LakeRoot::parse(&root)),
                storage_options: vars.json_object(Var::StorageOptions)?,
            },
            tasks: match (vars.text(Var::TaskTable), vars.text(Var::Db)) {
                (Some(table), _) => TaskTable::Dynamo { table },
                (None, Some(db)) => TaskTable::Sqlite(db.into()),
                (None, None) => defaults.tasks,
            },
            server: server(&vars, defaults.server)?,
            dispatch: dispatch(&vars, defaults.dispatch)?,
            scripts: ScriptConfig {
                root: vars
                    .text(Var::Scripts)
                    .map_or(defaults.scripts.root, PathBuf::from),
                python: vars.text(Var::Python).unwrap_or(defaults.scripts.python),
                env: vars.json_object(Var::ScriptEnv)?,
                sandbox: match vars.text(Var::Sandbox) {
                    Some(mode) => mode
                        .parse()
                        .map_err(|err: crate::sandbox::UnknownSandboxMode| bad(err.to_string()))?,
                    None => defaults.scripts.sandbox,
                },
            },
            ingest_rules: match vars.text(Var::IngestRules) {
                Some(json) => IngestRules::parse(&json)
                    .map_err(|err| bad(format!("{}: {err}", Var::IngestRules.name())))?,
                None => defaults.ingest_rules,
            },
            schedules: ScheduleLimits {
                per_tenant: vars.count(Var::TenantSchedules, defaults.schedules.per_tenant)?,
                runs_per_minute: vars
                    .count(Var::TenantRunsPerMinute, defaults.schedules.runs_per_minute)?,
                min_interval: vars
                    .seconds(Var::ScheduleMinInterval, defaults.schedules.min_interval)?,
            },
        })
    }
}

fn server<F: Fn(&str) -> Option<String>>(
    vars: &Reader<F>,
    defaults: ServerConfig,
) -> Result<ServerConfig> {
    let api_keys = match (vars.raw(Var::ApiKeys), vars.text(Var::ApiKeysFile)) {
        (Some(inline), _) => Some(ApiKeys::parse(&inline)?),
        (None, Some(file)) => Some(ApiKeys::parse(&std::fs::read_to_string(&file).map_err(
            |err| bad(format!("cannot read LANCER_API_KEYS_FILE '{file}': {err}")),
        )?)?),
        (None, None) => None,
    };
    let host = match vars.text(Var::Host) {
        Some(raw) => raw
            .parse()
            .map_err(|_| bad(format!("LANCER_HOST must be an IP address, not '{raw}'")))?,
        None => defaults.host,
    };
    let port = match vars.number(Var::Port)? {
        Some(port) => u16::try_from(port).map_err(|_| bad("LANCER_PORT must be at most 65535"))?,
        None => defaults.port,
    };
    Ok(ServerConfig {
        host,
        port,
        api_keys,
        allow_open: vars.flag(Var::AllowOpen)?,
        metrics_open: vars.flag(Var::MetricsOpen)?,
        max_connections: vars.count(Var::MaxConnections, defaults.max_connections)?,
        streams: StreamLimits {
            total: vars.count(Var::MaxStreams, defaults.streams.total)?,
            per_tenant: vars.count(Var::TenantStreams, defaults.streams.per_tenant)?,
        },
        uploads: UploadLimits {
            max_bytes: vars
                .number(Var::MaxUploadBytes)?
                .unwrap_or(defaults.uploads.max_bytes),
            quota_bytes: vars
                .number(Var::UploadQuotaBytes)?
                .unwrap_or(defaults.uploads.quota_bytes),
        },
        timeouts: Timeouts {
            request: vars.seconds(Var::RequestTimeout, defaults.timeouts.request)?,
            upload: vars.seconds(Var::UploadTimeout, defaults.timeouts.upload)?,
        },
    })
}

fn dispatch<F: Fn(&str) -> Option<String>>(
    vars: &Reader<F>,
    defaults: DispatchConfig,
) -> Result<DispatchConfig> {
    let backend = match vars.text(Var::Backend).as_deref() {
        None | Some("local") => Backend::Local,
        Some("ray") => Backend::Ray(RayConfig {
            address: ray_address(vars.text(Var::RayAddress))?,
            runner: vars.text(Var::RayRunner).map(PathBuf::from),
            env: vars.json_object(Var::RayEnv)?,
            token: vars.text(Var::RayToken),
        }),
        Some(other) => {
            return Err(bad(format!(
                "LANCER_BACKEND must be local or ray, not '{other}'"
            )));
        }
    };
    Ok(DispatchConfig {
        backend,
        concurrency: vars.count(Var::Concurrency, defaults.concurrency)?,
        tenant_concurrency: vars.positive(Var::TenantConcurrency)?.map(|n| n as usize),
        tenant_services: vars
            .number(Var::TenantServices)?
            .map_or(defaults.tenant_services, |n| n as usize),
        lease: vars.seconds(Var::Lease, defaults.lease)?,
        cancel_grace: vars
            .number(Var::CancelGrace)?
            .map_or(defaults.cancel_grace, Duration::from_secs),
        runner: vars.text(Var::Runner).map(PathBuf::from),
    })
}

impl Config {
    /// The name runners record as the task's backend.
    pub fn backend_name(&self) -> &'static str {
        match self.dispatch.backend {
            Backend::Local => "local",
            Backend::Ray(_) => "ray",
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.host, self.server.port)
    }

    /// How often a runner heartbeats: a third of the lease, so two may be lost.
    pub fn heartbeat_every(&self) -> Duration {
        (self.dispatch.lease / 3).max(Duration::from_millis(500))
    }

    /// The variables a runner process needs to rebuild this configuration: `Var`'s runner
    /// part, each written as the loader reads it back (paths made absolute).
    pub fn runner_env(&self) -> Vec<(String, String)> {
        Var::FOR_RUNNERS
            .into_iter()
            .filter_map(|var| Some((var.name().to_owned(), self.runner_value(var)?)))
            .collect()
    }

    fn runner_value(&self, var: Var) -> Option<String> {
        let json = |map: &BTreeMap<String, String>| {
            serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
        };
        Some(match var {
            Var::Lake => self.lake.root.uri(),
            Var::StorageOptions => json(&self.lake.storage_options),
            Var::Db => match &self.tasks {
                TaskTable::Sqlite(path) => absolute(path),
                TaskTable::Dynamo { .. } => return None,
            },
            Var::TaskTable => match &self.tasks {
                TaskTable::Dynamo { table } => table.clone(),
                TaskTable::Sqlite(_) => return None,
            },
            Var::Scripts => absolute(&self.scripts.root),
            Var::Lease => self.dispatch.lease.as_secs().to_string(),
            Var::CancelGrace => self.dispatch.cancel_grace.as_secs().to_string(),
            Var::Python => self.scripts.python.clone(),
            Var::Backend => self.backend_name().into(),
            Var::ScriptEnv => json(&self.scripts.env),
            Var::Sandbox => self.scripts.sandbox.as_str().into(),
            _ => return None,
        })
    }

    /// The runner's configuration for a Ray job's `runtime_env`, which Ray's dashboard
    /// shows to anyone who can reach it: storage options that are credentials stay out
    /// (Ray's nodes bring their own, from their environment or role), and
    /// `LANCER_RAY_ENV` goes on top.
    pub fn ray_runner_env(&self, ray: &RayConfig) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self.runner_env().into_iter().collect();
        let shareable: BTreeMap<&String, &String> = self
            .lake
            .storage_options
            .iter()
            .filter(|(key, _)| !is_credential(key))
            .collect();
        env.insert(
            Var::StorageOptions.name().into(),
            serde_json::to_string(&shareable).unwrap_or_else(|_| "{}".into()),
        );
        // The same for the operator's script variables: a name that says key, secret,
        // token or password stays off the dashboard, and Ray's nodes must provide it.
        let script_env: BTreeMap<&String, &String> = self
            .scripts
            .env
            .iter()
            .filter(|(name, _)| !is_credential(name) && !name.to_ascii_lowercase().ends_with("key"))
            .collect();
        env.insert(
            Var::ScriptEnv.name().into(),
            serde_json::to_string(&script_env).unwrap_or_else(|_| "{}".into()),
        );
        env.extend(ray.env.clone());
        env
    }
}

/// Whether a storage option holds a credential.
fn is_credential(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "access_key",
        "credential",
        "sas_key",
        "account_key",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// The Jobs API URL from `RAY_ADDRESS`; `host:port` without a scheme means plain HTTP.
fn ray_address(raw: Option<String>) -> Result<String> {
    let raw = raw.unwrap_or_else(|| "http://127.0.0.1:8265".into());
    let with_scheme = if raw.contains("://") {
        raw.clone()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme)
        .map_err(|err| bad(format!("RAY_ADDRESS '{raw}' is not a URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "RAY_ADDRESS must be the head's dashboard URL (http://host:8265), not '{raw}'"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_variables_give_the_readmes_defaults() {
        let config = Config::from_lookup(lookup(&[])).expect("valid");
        assert_eq!(config.listen_addr().to_string(), "127.0.0.1:8000");
        let data = data_dir();
        assert_eq!(
            config.lake.root,
            LakeRoot::Local(data.join("lance_storage"))
        );
        assert_eq!(config.tasks, TaskTable::Sqlite(data.join("lancer.db")));
        assert!(!data.starts_with(std::env::current_dir().expect("cwd")));
        assert_eq!(config.scripts.root, PathBuf::from("."));
        assert_eq!(config.scripts.python, "python3");
        assert_eq!(config.scripts.sandbox, SandboxMode::BestEffort);
        assert_eq!(config.server.api_keys, None);
        assert_eq!(config.server.max_connections, 1024);
        assert_eq!(config.server.uploads.max_bytes, 1 << 30);
        assert_eq!(config.server.uploads.quota_bytes, 10 << 30);
        assert_eq!(config.server.timeouts.request, Duration::from_secs(30));
        assert_eq!(config.server.timeouts.upload, Duration::from_secs(900));
        assert_eq!(config.dispatch.backend, Backend::Local);
        assert_eq!(config.dispatch.concurrency, 1);
        assert_eq!(config.dispatch.tenant_services, 4);
        assert_eq!(config.dispatch.lease, Duration::from_secs(30));
        assert_eq!(config.dispatch.cancel_grace, Duration::from_secs(5));
        assert!(config.ingest_rules.is_empty());
    }

    #[test]
    fn a_runner_reads_back_the_servers_runner_settings() {
        let server = Config::from_lookup(lookup(&[
            ("LANCER_LAKE", "s3://bucket/lake"),
            ("LANCER_TASK_TABLE", "tasks"),
            ("LANCER_LEASE_SECS", "12"),
            ("LANCER_SANDBOX", "required"),
            ("LANCER_SCRIPT_ENV", r#"{"A": "1"}"#),
            ("LANCER_PORT", "9001"),
        ]))
        .expect("valid");
        let env: HashMap<String, String> = server.runner_env().into_iter().collect();
        let runner = Config::from_lookup(|name| env.get(name).cloned()).expect("valid");
        assert_eq!(runner.lake, server.lake);
        assert_eq!(runner.tasks, server.tasks);
        assert_eq!(runner.dispatch.lease, server.dispatch.lease);
        assert_eq!(runner.scripts.sandbox, server.scripts.sandbox);
        assert_eq!(runner.scripts.env, server.scripts.env);
        assert!(
            !env.contains_key("LANCER_PORT"),
            "servers' settings stay out"
        );
    }

    #[test]
    fn variables_override_defaults() {
        let config = Config::from_lookup(lookup(&[
            ("LANCER_PORT", "9001"),
            ("LANCER_LAKE", "s3://bucket/lake"),
            ("LANCER_API_KEYS", "secret-key-1=acme, secret-key-2=globex"),
            ("LANCER_STORAGE_OPTIONS", r#"{"allow_http":"true"}"#),
        ]))
        .expect("valid config");
        assert_eq!(config.server.port, 9001);
        assert_eq!(config.lake.root.to_string(), "s3://bucket/lake");
        assert!(
            !format!("{config:?}").contains("secret-key"),
            "keys never show in debug output"
        );
        let keys = config.server.api_keys.expect("keys");
        assert_eq!(
            keys.tenant_of("secret-key-2").map(TenantName::as_str),
            Some("globex")
        );
        assert_eq!(keys.tenant_of("nope"), None);
        assert_eq!(
            config
                .lake
                .storage_options
                .get("allow_http")
                .map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn an_empty_key_set_is_refused_not_read_as_open_mode() {
        for keys in ["", " ", ",", "# none"] {
            let err = Config::from_lookup(lookup(&[("LANCER_API_KEYS", keys)]))
                .expect_err("an empty key set");
            assert!(
                err.to_string().contains("none was given"),
                "{keys:?}: {err}"
            );
        }
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let path = file.path().to_string_lossy().into_owned();
        assert!(Config::from_lookup(lookup(&[("LANCER_API_KEYS_FILE", &path)])).is_err());
        assert_eq!(
            Config::from_lookup(lookup(&[("LANCER_PORT", "")]))
                .map(|c| c.server.port)
                .ok(),
            Some(8000),
            "other empty variables still mean unset"
        );
    }

    #[test]
    fn a_zero_where_at_least_one_is_needed_is_refused_with_the_variable_named() {
        for var in [
            "LANCER_CONCURRENCY",
            "LANCER_TENANT_CONCURRENCY",
            "LANCER_LEASE_SECS",
            "LANCER_MAX_CONNECTIONS",
            "LANCER_REQUEST_TIMEOUT_SECS",
        ] {
            let err = Config::from_lookup(lookup(&[(var, "0")])).expect_err(var);
            assert!(
                err.to_string()
                    .contains(&format!("{var} must be at least 1")),
                "{err}"
            );
            assert!(
                Config::from_lookup(lookup(&[(var, "1")])).is_ok(),
                "{var}=1"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let err = Config::from_lookup(lookup(&[("LANCER_PORT", "eighty")])).expect_err("bad port");
        assert!(err.to_string().contains("LANCER_PORT"));
        assert!(Config::from_lookup(lookup(&[("LANCER_API_KEYS", "short=acme")])).is_err());
        assert!(
            Config::from_lookup(lookup(&[("LANCER_API_KEYS", "long-enough=Bad Tenant")])).is_err()
        );
        let err = Config::from_lookup(lookup(&[("LANCER_API_KEYS", "long-enough=default")]))
            .expect_err("the keyless tenant's name");
        assert!(err.to_string().contains("reserved"), "{err}");
        let err = Config::from_lookup(lookup(&[("LANCER_BACKEND", "slurm")])).expect_err("backend");
        assert!(err.to_string().contains("LANCER_BACKEND"));
        let err = Config::from_lookup(lookup(&[
            ("LANCER_BACKEND", "ray"),
            ("RAY_ADDRESS", "ray://head:10001"),
        ]))
        .expect_err("ray client address");
        assert!(err.to_string().contains("RAY_ADDRESS"));
    }

    #[test]
    fn credentials_in_storage_options_never_reach_a_ray_jobs_environment() {
        let config = Config::from_lookup(lookup(&[
            ("LANCER_BACKEND", "ray"),
            (
                "LANCER_STORAGE_OPTIONS",
                r#"{"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "s3cr3t",
                    "aws_session_token": "tok", "aws_endpoint": "http://minio:9000",
                    "allow_http": "true"}"#,
            ),
            (
                "LANCER_SCRIPT_ENV",
                r#"{"HF_TOKEN": "hf-tok-1", "OPENAI_API_KEY": "sk-123", "DB_PASSWORD": "pw-9",
                    "WANDB_KEY": "wb-7", "MODEL_DIR": "/models"}"#,
            ),
        ]))
        .expect("valid");
        let Backend::Ray(ray) = &config.dispatch.backend else {
            panic!("ray was asked for")
        };
        let env = config.ray_runner_env(ray);
        let shown = serde_json::to_string(&env).expect("json");
        for secret in [
            "AKIAEXAMPLE",
            "s3cr3t",
            "aws_session_token",
            "hf-tok-1",
            "sk-123",
            "pw-9",
            "wb-7",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("/models"),
            "other script variables go: {shown}"
        );
        let options: BTreeMap<String, String> =
            serde_json::from_str(&env["LANCER_STORAGE_OPTIONS"]).expect("options");
        assert_eq!(
            options.get("aws_endpoint").map(String::as_str),
            Some("http://minio:9000")
        );
        assert_eq!(options.len(), 2, "{options:?}");
    }

    #[test]
    fn the_ray_backend_takes_the_dashboard_address_with_or_without_a_scheme() {
        let ray = |address: Option<&str>| {
            let mut pairs = vec![("LANCER_BACKEND", "ray")];
            pairs.extend(address.map(|a| ("RAY_ADDRESS", a)));
            match Config::from_lookup(lookup(&pairs))
                .expect("valid")
                .dispatch
                .backend
            {
                Backend::Ray(ray) => ray.address,
                Backend::Local => panic!("ray was asked for"),
            }
        };
        assert_eq!(ray(None), "http://127.0.0.1:8265");
        let config = Config::from_lookup(lookup(&[
            ("LANCER_BACKEND", "ray"),
            (
                "LANCER_RAY_ENV",
                r#"{"LANCER_SCRIPTS": "/opt/lancer/scripts"}"#,
            ),
        ]))
        .expect("valid");
        let Backend::Ray(ray_config) = config.dispatch.backend else {
            panic!("ray was asked for")
        };
        assert_eq!(
            ray_config.env.get("LANCER_SCRIPTS").map(String::as_str),
            Some("/opt/lancer/scripts")
        );
        assert_eq!(ray(Some("10.0.0.5:8265")), "http://10.0.0.5:8265");
        assert_eq!(
            ray(Some("https://ray.example.com/")),
            "https://ray.example.com"
        );
    }
}
