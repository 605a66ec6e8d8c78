//! Configuration, read once from `LANCER_*` environment variables with embedded defaults.
//! `Var` is the one table of variable names: the loader reads it, and `runner_env` passes
//! a runner the part of it that runners read.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::domain::ingest::IngestRules;
pub use crate::domain::limits::{ScheduleLimits, UploadLimits};
pub use crate::domain::tenant::ApiKeys;
use crate::lake::{LakeRoot, absolute};
use crate::sandbox::{SandboxMode, UnknownSandboxMode};

/// A configuration lancer cannot run with; the message names the variable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

type Result<T, E = ConfigError> = std::result::Result<T, E>;

fn bad(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// Declares `Var` from one row per variable: its doc, its name, how the loader reads it
/// into a `Config` (the row's block gets the variable's `Reader` and the config read so
/// far, which starts as `Config::default()`), and, for the variables runners read, how
/// a `Config` writes it back for a runner's environment. Rows are read in order, so a
/// row may look at what an earlier one set.
macro_rules! settings {
    (@write $config:ident) => { None };
    (@write $config:ident, $bound:ident $write:block) => {{
        let $bound = $config;
        $write
    }};
    ($(
        $(#[doc = $doc:literal])*
        $var:ident = $name:literal,
        read($vars:ident, $into:ident) $read:block
        $(runners($from:ident) $write:block)?
        ;
    )*) => {
        /// Every variable lancer reads.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Var {
            $($(#[doc = $doc])* $var,)*
        }

        impl Var {
            /// Every variable, in the order the loader reads them.
            pub const ALL: &'static [Var] = &[$(Var::$var),*];

            /// The variable's name in the environment.
            pub fn name(self) -> &'static str {
                match self {
                    $(Var::$var => $name,)*
                }
            }

            /// Reads this variable into `config`.
            fn read(self, vars: Reader<'_>, config: &mut Config) -> Result<()> {
                match self {
                    $(Var::$var => {
                        let ($vars, $into) = (vars, config);
                        $read
                    })*
                }
                Ok(())
            }

            /// The value a runner gets for this variable, or `None` where runners do not
            /// read it (or `config` leaves it unset).
            fn for_runner(self, config: &Config) -> Option<String> {
                match self {
                    $(Var::$var => settings!(@write config $(, $from $write)?),)*
                }
            }
        }
    };
}

settings! {
    /// A local folder or an `s3://bucket/prefix` URL.
    Lake = "LANCER_LAKE",
    read(v, c) {
        if let Some(root) = v.text() {
            c.lake.root = LakeRoot::parse(&root);
        }
    }
    runners(c) { Some(c.lake.root.uri()) };

    /// A JSON object of object-store / Lance storage options.
    StorageOptions = "LANCER_STORAGE_OPTIONS",
    read(v, c) { c.lake.storage_options = v.json_object()?; }
    runners(c) { Some(json(&c.lake.storage_options)) };

    /// A DynamoDB table for task records; wins over `LANCER_DB`.
    TaskTable = "LANCER_TASK_TABLE",
    read(v, c) {
        if let Some(table) = v.text() {
            c.tasks = TaskTable::Dynamo { table };
        }
    }
    runners(c) {
        match &c.tasks {
            TaskTable::Dynamo { table } => Some(table.clone()),
            TaskTable::Sqlite(_) => None,
        }
    };

    /// A SQLite file for task records.
    Db = "LANCER_DB",
    read(v, c) {
        if let (None, Some(db)) = (v.other(Var::TaskTable), v.text()) {
            c.tasks = TaskTable::Sqlite(db.into());
        }
    }
    runners(c) {
        match &c.tasks {
            TaskTable::Sqlite(path) => Some(absolute(path)),
            TaskTable::Dynamo { .. } => None,
        }
    };

    /// The address `lancer serve` listens on.
    Host = "LANCER_HOST",
    read(v, c) {
        if let Some(raw) = v.text() {
            c.server.host = raw
                .parse()
                .map_err(|_| v.bad(format!("must be an IP address, not '{raw}'")))?;
        }
    };

    /// The port `lancer serve` listens on.
    Port = "LANCER_PORT",
    read(v, c) {
        if let Some(port) = v.number()? {
            c.server.port = u16::try_from(port).map_err(|_| v.bad("must be at most 65535"))?;
        }
    };

    /// The folder holding `lancer-scripts.json` and the scripts.
    Scripts = "LANCER_SCRIPTS",
    read(v, c) {
        if let Some(root) = v.text() {
            c.scripts.root = root.into();
        }
    }
    runners(c) { Some(absolute(&c.scripts.root)) };

    /// `key=tenant,...`: the API keys. Set but empty is refused, so auth fails closed.
    ApiKeys = "LANCER_API_KEYS",
    read(v, c) {
        if let Some(inline) = v.raw() {
            c.server.api_keys = Some(ApiKeys::parse(&inline).map_err(|err| v.bad(err))?);
        }
    };

    /// A file of `key=tenant` lines, read when `LANCER_API_KEYS` is unset.
    ApiKeysFile = "LANCER_API_KEYS_FILE",
    read(v, c) {
        if let (None, Some(file)) = (v.other_raw(Var::ApiKeys), v.text()) {
            let text = std::fs::read_to_string(&file)
                .map_err(|err| v.bad(format!("cannot be read from '{file}': {err}")))?;
            c.server.api_keys = Some(ApiKeys::parse(&text).map_err(|err| v.bad(err))?);
        }
    };

    /// `true` lets a server without API keys listen beyond loopback.
    AllowOpen = "LANCER_ALLOW_OPEN",
    read(v, c) { c.server.allow_open = v.flag()?; };

    /// `true` serves `/metrics` without a key, covering every tenant.
    MetricsOpen = "LANCER_METRICS_OPEN",
    read(v, c) { c.server.metrics_open = v.flag()?; };

    /// Connections `lancer serve` serves at once.
    MaxConnections = "LANCER_MAX_CONNECTIONS",
    read(v, c) { c.server.max_connections = v.count(c.server.max_connections)?; };

    /// Event streams open at once, over all tenants.
    MaxStreams = "LANCER_MAX_STREAMS",
    read(v, c) { c.server.streams.total = v.count(c.server.streams.total)?; };

    /// Event streams one tenant may hold open at once.
    TenantStreams = "LANCER_TENANT_STREAMS",
    read(v, c) { c.server.streams.per_tenant = v.count(c.server.streams.per_tenant)?; };

    /// Schedules one tenant may have active at once.
    TenantSchedules = "LANCER_TENANT_SCHEDULES",
    read(v, c) { c.schedules.per_tenant = v.count(c.schedules.per_tenant)?; };

    /// Runs one tenant's schedules may start in a minute.
    TenantRunsPerMinute = "LANCER_TENANT_RUNS_PER_MINUTE",
    read(v, c) { c.schedules.runs_per_minute = v.count(c.schedules.runs_per_minute)?; };

    /// The shortest time a schedule may leave between two runs.
    ScheduleMinInterval = "LANCER_SCHEDULE_MIN_INTERVAL_SECS",
    read(v, c) { c.schedules.min_interval = v.seconds(c.schedules.min_interval)?; };

    /// Batch tasks the local dispatcher runs at once.
    Concurrency = "LANCER_CONCURRENCY",
    read(v, c) { c.dispatch.concurrency = v.count(c.dispatch.concurrency)?; };

    /// Batch tasks one tenant may run at once (default: all of them).
    TenantConcurrency = "LANCER_TENANT_CONCURRENCY",
    read(v, c) {
        if let Some(slots) = v.positive()? {
            c.dispatch.tenant_concurrency = Some(slots as usize);
        }
    };

    /// Services one tenant may run beside the batch slots; 0 allows none.
    TenantServices = "LANCER_TENANT_SERVICES",
    read(v, c) {
        if let Some(services) = v.number()? {
            c.dispatch.tenant_services = services as usize;
        }
    };

    /// Seconds without a heartbeat after which a running task has lost its runner.
    Lease = "LANCER_LEASE_SECS",
    read(v, c) { c.dispatch.lease = v.seconds(c.dispatch.lease)?; }
    runners(c) { Some(c.dispatch.lease.as_secs().to_string()) };

    /// Seconds between SIGTERM and SIGKILL on cancel; 0 kills at once.
    CancelGrace = "LANCER_CANCEL_GRACE_SECS",
    read(v, c) {
        if let Some(grace) = v.number()? {
            c.dispatch.cancel_grace = Duration::from_secs(grace);
        }
    }
    runners(c) { Some(c.dispatch.cancel_grace.as_secs().to_string()) };

    /// The runner binary (default: `lancer-runner` beside the current binary).
    Runner = "LANCER_RUNNER",
    read(v, c) { c.dispatch.runner = v.text().map(PathBuf::from); };

    /// The interpreter for `*.py` scripts.
    Python = "LANCER_PYTHON",
    read(v, c) {
        if let Some(python) = v.text() {
            c.scripts.python = python;
        }
    }
    runners(c) { Some(c.scripts.python.clone()) };

    /// `local` or `ray`: where runners run.
    Backend = "LANCER_BACKEND",
    read(v, c) {
        match v.text().as_deref() {
            None | Some("local") => {}
            Some("ray") => c.dispatch.backend = Backend::Ray(RayConfig::default()),
            Some(other) => return Err(v.bad(format!("must be local or ray, not '{other}'"))),
        }
    }
    runners(c) { Some(c.backend_name().into()) };

    /// A JSON array of rules that turn uploads under `raw/` into tasks.
    IngestRules = "LANCER_INGEST_RULES",
    read(v, c) {
        if let Some(json) = v.text() {
            c.ingest_rules = IngestRules::parse(&json).map_err(|err| v.bad(format!("is not valid: {err}")))?;
        }
    };

    /// A JSON object of variables the operator gives every script.
    ScriptEnv = "LANCER_SCRIPT_ENV",
    read(v, c) { c.scripts.env = v.json_object()?; }
    runners(c) { Some(json(&c.scripts.env)) };

    /// `off`, `best-effort` or `required`: whether scripts run confined.
    Sandbox = "LANCER_SANDBOX",
    read(v, c) {
        if let Some(mode) = v.text() {
            c.scripts.sandbox = mode.parse().map_err(|err: UnknownSandboxMode| v.bad(err.to_string()))?;
        }
    }
    runners(c) { Some(c.scripts.sandbox.as_str().into()) };

    /// The most bytes of one upload.
    MaxUploadBytes = "LANCER_MAX_UPLOAD_BYTES",
    read(v, c) {
        if let Some(bytes) = v.number()? {
            c.server.uploads.max_bytes = bytes;
        }
    };

    /// The most bytes a tenant may keep under `raw/`.
    UploadQuotaBytes = "LANCER_UPLOAD_QUOTA_BYTES",
    read(v, c) {
        if let Some(bytes) = v.number()? {
            c.server.uploads.quota_bytes = bytes;
        }
    };

    /// Seconds a request may take, body included, before it is answered 408.
    RequestTimeout = "LANCER_REQUEST_TIMEOUT_SECS",
    read(v, c) { c.server.timeouts.request = v.seconds(c.server.timeouts.request)?; };

    /// Seconds an upload's body may take to arrive.
    UploadTimeout = "LANCER_UPLOAD_TIMEOUT_SECS",
    read(v, c) { c.server.timeouts.upload = v.seconds(c.server.timeouts.upload)?; };

    /// The Ray head's dashboard URL; read when `LANCER_BACKEND=ray`.
    RayAddress = "RAY_ADDRESS",
    read(v, c) {
        if let (Backend::Ray(ray), Some(raw)) = (&mut c.dispatch.backend, v.text()) {
            ray.address = ray_address(&raw).map_err(|message| v.bad(message))?;
        }
    };

    /// The runner binary's path on Ray's nodes.
    RayRunner = "LANCER_RAY_RUNNER",
    read(v, c) {
        if let Backend::Ray(ray) = &mut c.dispatch.backend {
            ray.runner = v.text().map(PathBuf::from);
        }
    };

    /// A JSON object of variables that replace the runner's defaults on Ray's nodes.
    RayEnv = "LANCER_RAY_ENV",
    read(v, c) {
        if let Backend::Ray(ray) = &mut c.dispatch.backend {
            ray.env = v.json_object()?;
        }
    };

    /// The bearer token of a Ray head with token authentication.
    RayToken = "LANCER_RAY_TOKEN",
    read(v, c) {
        if let Backend::Ray(ray) = &mut c.dispatch.backend {
            ray.token = v.text();
        }
    };
}

/// Everything a lancer process is configured with; each field names its variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `LANCER_LAKE` and `LANCER_STORAGE_OPTIONS`: where datasets and models live.
    pub lake: LakeConfig,
    /// `LANCER_DB` or `LANCER_TASK_TABLE`: where task records live.
    pub tasks: TaskTable,
    /// How `lancer serve` and the API function listen, authenticate and bound requests.
    pub server: ServerConfig,
    /// Where and how runners run.
    pub dispatch: DispatchConfig,
    /// How scripts are found, started and confined.
    pub scripts: ScriptConfig,
    /// `LANCER_INGEST_RULES`: JSON array of rules that turn uploads under `raw/` into tasks.
    pub ingest_rules: IngestRules,
    /// `LANCER_TENANT_SCHEDULES`, `LANCER_TENANT_RUNS_PER_MINUTE`,
    /// `LANCER_SCHEDULE_MIN_INTERVAL_SECS`.
    pub schedules: ScheduleLimits,
}

/// Where the lake lives and how to reach it.
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
    Dynamo {
        /// The table's name.
        table: String,
    },
}

/// What `lancer serve` and the API function answer with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `LANCER_HOST` and `LANCER_PORT`: where `lancer serve` listens.
    pub host: IpAddr,
    /// See `host`; 0 picks a free port.
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
    /// Streams over all tenants.
    pub total: usize,
    /// Streams of one tenant.
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
    /// Any request but an upload.
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

/// Where runners run.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// Subprocesses of `lancer serve`.
    Local,
    /// Ray jobs, submitted through the Jobs REST API of a Ray head.
    Ray(RayConfig),
}

/// How to reach the Ray head and what its jobs run with (`LANCER_BACKEND=ray`).
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

impl Default for RayConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8265".into(),
            runner: None,
            env: BTreeMap::new(),
            token: None,
        }
    }
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

/// One variable, read through a lookup. An empty variable counts as unset, except the API
/// keys: `LANCER_API_KEYS=""` is a key set with no key, refused rather than read as open
/// mode, so auth fails closed.
#[derive(Clone, Copy)]
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    var: Var,
}

impl Reader<'_> {
    /// An error that names the variable: `"{name} {message}"`.
    fn bad(&self, message: impl std::fmt::Display) -> ConfigError {
        bad(format!("{} {message}", self.var.name()))
    }

    fn raw(&self) -> Option<String> {
        self.other_raw(self.var)
    }

    fn text(&self) -> Option<String> {
        self.other(self.var)
    }

    /// Another variable's value, for a row whose meaning depends on it.
    fn other(&self, var: Var) -> Option<String> {
        self.other_raw(var).filter(|value| !value.is_empty())
    }

    fn other_raw(&self, var: Var) -> Option<String> {
        (self.lookup)(var.name())
    }

    fn number(&self) -> Result<Option<u64>> {
        self.text()
            .map(|raw| {
                raw.parse::<u64>()
                    .map_err(|_| self.bad(format!("must be a whole number, not '{raw}'")))
            })
            .transpose()
    }

    /// A number that must be at least 1 (a slot count, a limit, a timeout): a 0 would
    /// stop the server doing its work, so it is refused rather than read as 1.
    fn positive(&self) -> Result<Option<u64>> {
        match self.number()? {
            Some(0) => Err(self.bad("must be at least 1, not 0")),
            number => Ok(number),
        }
    }

    fn count(&self, default: usize) -> Result<usize> {
        Ok(self.positive()?.map_or(default, |n| n as usize))
    }

    fn seconds(&self, default: Duration) -> Result<Duration> {
        Ok(self.positive()?.map_or(default, Duration::from_secs))
    }

    fn flag(&self) -> Result<bool> {
        match self.text().as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(self.bad(format!("must be true or false, not '{other}'"))),
        }
    }

    /// A JSON object of strings; empty when unset.
    fn json_object(&self) -> Result<BTreeMap<String, String>> {
        match self.text() {
            Some(json) => serde_json::from_str(&json)
                .map_err(|err| self.bad(format!("must be a JSON object of strings: {err}"))),
            None => Ok(BTreeMap::new()),
        }
    }
}

/// A map as the JSON object its variable holds.
fn json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

impl Config {
    /// Reads the configuration from the process's environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `lookup`, a variable's value by name: each row of
    /// `Var` in order, over the defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = Self::default();
        for &var in Var::ALL {
            var.read(
                Reader {
                    lookup: &lookup,
                    var,
                },
                &mut config,
            )?;
        }
        Ok(config)
    }
}

impl Config {
    /// The name runners record as the task's backend.
    pub fn backend_name(&self) -> &'static str {
        match self.dispatch.backend {
            Backend::Local => "local",
            Backend::Ray(_) => "ray",
        }
    }

    /// The socket address `lancer serve` binds.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.server.host, self.server.port)
    }

    /// How often a runner heartbeats: a third of the lease, so two may be lost.
    pub fn heartbeat_every(&self) -> Duration {
        (self.dispatch.lease / 3).max(Duration::from_millis(500))
    }

    /// The variables a runner process needs to rebuild this configuration: the rows of
    /// `Var` that runners read, each written as the loader reads it back (paths made
    /// absolute).
    pub fn runner_env(&self) -> Vec<(String, String)> {
        Var::ALL
            .iter()
            .filter_map(|var| Some((var.name().to_owned(), var.for_runner(self)?)))
            .collect()
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
/// The error is the message after the variable's name.
fn ray_address(raw: &str) -> Result<String, String> {
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let url =
        url::Url::parse(&with_scheme).map_err(|err| format!("'{raw}' is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be the head's dashboard URL (http://host:8265), not '{raw}'"
        ));
    }
    Ok(with_scheme.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::tenant::TenantName;

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
    fn every_variable_has_one_row_a_unique_name_and_a_line_in_the_readme() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let mut names = std::collections::HashSet::new();
        for var in Var::ALL {
            assert!(names.insert(var.name()), "{} has two rows", var.name());
            assert!(
                readme.contains(var.name()),
                "README never names {}",
                var.name()
            );
        }
    }

    #[test]
    fn a_db_file_yields_to_a_dynamodb_table_and_a_keys_file_to_inline_keys() {
        let config = Config::from_lookup(lookup(&[
            ("LANCER_DB", "/tmp/ignored.db"),
            ("LANCER_TASK_TABLE", "tasks"),
            ("LANCER_API_KEYS", "inline-key-1=alice"),
            ("LANCER_API_KEYS_FILE", "/nonexistent/keys"),
        ]))
        .expect("the file is not read when inline keys are given");
        assert_eq!(
            config.tasks,
            TaskTable::Dynamo {
                table: "tasks".into()
            }
        );
        let keys = config.server.api_keys.expect("keys");
        assert_eq!(
            keys.tenant_of("inline-key-1").map(AsRef::as_ref),
            Some("alice")
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
