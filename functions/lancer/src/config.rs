//! Configuration, read once from `LANCER_*` environment variables with embedded defaults.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::ingest::IngestRules;
use crate::domain::path::Name;
use crate::error::{Error, Result};
use crate::sandbox::SandboxMode;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `LANCER_LAKE`: the lake root, a local folder or an `s3://bucket/prefix` URL.
    pub lake: String,
    /// `LANCER_STORAGE_OPTIONS`: JSON object of object-store / Lance storage options.
    pub storage_options: BTreeMap<String, String>,
    /// `LANCER_DB`: the SQLite task table.
    pub db: PathBuf,
    /// `LANCER_TASK_TABLE`: a DynamoDB table for tasks instead of SQLite (AWS level).
    pub task_table: Option<String>,
    /// `LANCER_HOST` and `LANCER_PORT`: where `lancer serve` listens.
    pub host: IpAddr,
    pub port: u16,
    /// `LANCER_SCRIPTS`: the folder every task's `script` is resolved in.
    pub scripts: PathBuf,
    /// `LANCER_API_KEYS` (`key=tenant,...`) or `LANCER_API_KEYS_FILE` (a `key=tenant` per line).
    pub api_keys: Option<ApiKeys>,
    /// `LANCER_ALLOW_OPEN=true`: let a server without API keys listen beyond loopback.
    pub allow_open: bool,
    /// `LANCER_MAX_CONNECTIONS`: connections `lancer serve` serves at once.
    pub max_connections: usize,
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
    /// `LANCER_PYTHON`: the interpreter for `*.py` scripts.
    pub python: String,
    /// `LANCER_BACKEND` (`local` or `ray`): where runners run.
    pub backend: Backend,
    /// `LANCER_INGEST_RULES`: JSON array of rules that turn uploads under `raw/` into tasks.
    pub ingest_rules: IngestRules,
    /// `LANCER_SCRIPT_ENV`: a JSON object of variables the operator gives every script (a
    /// script's environment is otherwise an allow-list; see the README).
    pub script_env: BTreeMap<String, String>,
    /// `LANCER_SANDBOX` (`off`, `best-effort`, `required`): whether scripts run confined
    /// by Landlock.
    pub sandbox: SandboxMode,
    /// `LANCER_MAX_UPLOAD_BYTES` and `LANCER_UPLOAD_QUOTA_BYTES`.
    pub uploads: UploadLimits,
    /// `LANCER_REQUEST_TIMEOUT_SECS` and `LANCER_UPLOAD_TIMEOUT_SECS`.
    pub timeouts: Timeouts,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lake: "./lance_storage".into(),
            storage_options: BTreeMap::new(),
            db: "./lancer.db".into(),
            task_table: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8000,
            scripts: ".".into(),
            api_keys: None,
            allow_open: false,
            max_connections: 1024,
            concurrency: 1,
            tenant_concurrency: None,
            tenant_services: 4,
            lease: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            runner: None,
            python: "python3".into(),
            backend: Backend::Local,
            ingest_rules: IngestRules::default(),
            script_env: BTreeMap::new(),
            sandbox: SandboxMode::default(),
            uploads: UploadLimits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// API key -> tenant. Keys are held as SHA-256 digests: a lookup hashes the presented key
/// first, so its timing tells nothing about how much of a real key was guessed, and the
/// keys themselves never sit in memory or in debug output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApiKeys(HashMap<[u8; 32], Name>);

fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
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
                .ok_or_else(|| Error::invalid("API keys are written key=tenant"))?;
            let (key, tenant) = (key.trim(), tenant.trim());
            if key.len() < 8 {
                return Err(Error::invalid("an API key must be at least 8 characters"));
            }
            keys.insert(key_digest(key), Name::parse("tenant", tenant)?);
        }
        if keys.is_empty() {
            return Err(Error::invalid("API keys are configured but none was given"));
        }
        Ok(Self(keys))
    }

    pub fn tenant_of(&self, key: &str) -> Option<&Name> {
        self.0.get(&key_digest(key))
    }
}

impl Config {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `lookup`. An empty variable counts as unset, except
    /// the API keys: `LANCER_API_KEYS=""` is a key set with no key, which is refused rather
    /// than read as open mode, so auth fails closed.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let defaults = Self::default();
        let parse = |name: &str| -> Result<Option<u64>> {
            get(name)
                .map(|raw| {
                    raw.parse::<u64>().map_err(|_| {
                        Error::invalid(format!("{name} must be a whole number, not '{raw}'"))
                    })
                })
                .transpose()
        };
        let api_keys = match (lookup("LANCER_API_KEYS"), get("LANCER_API_KEYS_FILE")) {
            (Some(inline), _) => Some(ApiKeys::parse(&inline)?),
            (None, Some(file)) => Some(ApiKeys::parse(&std::fs::read_to_string(&file).map_err(
                |err| Error::invalid(format!("cannot read LANCER_API_KEYS_FILE '{file}': {err}")),
            )?)?),
            (None, None) => None,
        };
        let storage_options = json_object(get("LANCER_STORAGE_OPTIONS"), "LANCER_STORAGE_OPTIONS")?;
        let host = match get("LANCER_HOST") {
            Some(raw) => raw.parse().map_err(|_| {
                Error::invalid(format!("LANCER_HOST must be an IP address, not '{raw}'"))
            })?,
            None => defaults.host,
        };
        Ok(Self {
            lake: get("LANCER_LAKE").unwrap_or(defaults.lake),
            storage_options,
            db: get("LANCER_DB").map(PathBuf::from).unwrap_or(defaults.db),
            task_table: get("LANCER_TASK_TABLE"),
            host,
            port: match parse("LANCER_PORT")? {
                Some(port) => u16::try_from(port)
                    .map_err(|_| Error::invalid("LANCER_PORT must be at most 65535"))?,
                None => defaults.port,
            },
            scripts: get("LANCER_SCRIPTS")
                .map(PathBuf::from)
                .unwrap_or(defaults.scripts),
            api_keys,
            allow_open: match get("LANCER_ALLOW_OPEN").as_deref() {
                None | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(other) => {
                    return Err(Error::invalid(format!(
                        "LANCER_ALLOW_OPEN must be true or false, not '{other}'"
                    )));
                }
            },
            tenant_concurrency: parse("LANCER_TENANT_CONCURRENCY")?.map(|n| n.max(1) as usize),
            tenant_services: parse("LANCER_TENANT_SERVICES")?
                .map_or(defaults.tenant_services, |n| n as usize),
            max_connections: parse("LANCER_MAX_CONNECTIONS")?
                .map_or(defaults.max_connections, |n| n.max(1) as usize),
            concurrency: parse("LANCER_CONCURRENCY")?
                .map_or(defaults.concurrency, |n| n.max(1) as usize),
            lease: parse("LANCER_LEASE_SECS")?
                .map_or(defaults.lease, |s| Duration::from_secs(s.max(1))),
            cancel_grace: parse("LANCER_CANCEL_GRACE_SECS")?
                .map_or(defaults.cancel_grace, Duration::from_secs),
            runner: get("LANCER_RUNNER").map(PathBuf::from),
            python: get("LANCER_PYTHON").unwrap_or(defaults.python),
            script_env: json_object(get("LANCER_SCRIPT_ENV"), "LANCER_SCRIPT_ENV")?,
            uploads: UploadLimits {
                max_bytes: parse("LANCER_MAX_UPLOAD_BYTES")?.unwrap_or(defaults.uploads.max_bytes),
                quota_bytes: parse("LANCER_UPLOAD_QUOTA_BYTES")?
                    .unwrap_or(defaults.uploads.quota_bytes),
            },
            timeouts: Timeouts {
                request: parse("LANCER_REQUEST_TIMEOUT_SECS")?
                    .map_or(defaults.timeouts.request, |s| Duration::from_secs(s.max(1))),
                upload: parse("LANCER_UPLOAD_TIMEOUT_SECS")?
                    .map_or(defaults.timeouts.upload, |s| Duration::from_secs(s.max(1))),
            },
            sandbox: match get("LANCER_SANDBOX") {
                Some(mode) => mode.parse()?,
                None => SandboxMode::default(),
            },
            ingest_rules: match get("LANCER_INGEST_RULES") {
                Some(json) => IngestRules::parse(&json)?,
                None => IngestRules::default(),
            },
            backend: match get("LANCER_BACKEND").as_deref() {
                None | Some("local") => Backend::Local,
                Some("ray") => Backend::Ray(RayConfig {
                    address: ray_address(get("RAY_ADDRESS"))?,
                    runner: get("LANCER_RAY_RUNNER").map(PathBuf::from),
                    env: json_object(get("LANCER_RAY_ENV"), "LANCER_RAY_ENV")?,
                }),
                Some(other) => {
                    return Err(Error::invalid(format!(
                        "LANCER_BACKEND must be local or ray, not '{other}'"
                    )));
                }
            },
        })
    }

    /// The name runners record as the task's backend.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Local => "local",
            Backend::Ray(_) => "ray",
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// How often a runner heartbeats: a third of the lease, so two may be lost.
    pub fn heartbeat_every(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(500))
    }

    /// The variables a runner process needs to rebuild this configuration.
    pub fn runner_env(&self) -> Vec<(String, String)> {
        let absolute = |path: &PathBuf| {
            std::path::absolute(path)
                .unwrap_or_else(|_| path.clone())
                .to_string_lossy()
                .into_owned()
        };
        let lake = if self.lake.contains("://") {
            self.lake.clone()
        } else {
            absolute(&PathBuf::from(&self.lake))
        };
        let mut env = vec![
            ("LANCER_LAKE".into(), lake),
            (
                "LANCER_STORAGE_OPTIONS".into(),
                serde_json::to_string(&self.storage_options).unwrap_or_else(|_| "{}".into()),
            ),
            ("LANCER_DB".into(), absolute(&self.db)),
            ("LANCER_SCRIPTS".into(), absolute(&self.scripts)),
            ("LANCER_LEASE_SECS".into(), self.lease.as_secs().to_string()),
            (
                "LANCER_CANCEL_GRACE_SECS".into(),
                self.cancel_grace.as_secs().to_string(),
            ),
            ("LANCER_PYTHON".into(), self.python.clone()),
            ("LANCER_BACKEND".into(), self.backend_name().into()),
            (
                "LANCER_SCRIPT_ENV".into(),
                serde_json::to_string(&self.script_env).unwrap_or_else(|_| "{}".into()),
            ),
            ("LANCER_SANDBOX".into(), self.sandbox.as_str().into()),
        ];
        if let Some(table) = &self.task_table {
            env.push(("LANCER_TASK_TABLE".into(), table.clone()));
        }
        env
    }
}

impl Config {
    /// The runner's configuration for a Ray job's `runtime_env`, which Ray's dashboard
    /// shows to anyone who can reach it: storage options that are credentials stay out
    /// (Ray's nodes bring their own, from their environment or role), and
    /// `LANCER_RAY_ENV` goes on top.
    pub fn ray_runner_env(&self, ray: &RayConfig) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self.runner_env().into_iter().collect();
        let shareable: BTreeMap<&String, &String> = self
            .storage_options
            .iter()
            .filter(|(key, _)| !is_credential(key))
            .collect();
        env.insert(
            "LANCER_STORAGE_OPTIONS".into(),
            serde_json::to_string(&shareable).unwrap_or_else(|_| "{}".into()),
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

/// A variable holding a JSON object of strings; empty when unset.
fn json_object(raw: Option<String>, name: &str) -> Result<BTreeMap<String, String>> {
    match raw {
        Some(json) => serde_json::from_str(&json).map_err(|err| {
            Error::invalid(format!("{name} must be a JSON object of strings: {err}"))
        }),
        None => Ok(BTreeMap::new()),
    }
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
        .map_err(|err| Error::invalid(format!("RAY_ADDRESS '{raw}' is not a URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
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
    fn no_variables_give_the_embedded_defaults() {
        assert_eq!(
            Config::from_lookup(lookup(&[])).ok(),
            Some(Config::default())
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
        assert_eq!(config.port, 9001);
        assert_eq!(config.lake, "s3://bucket/lake");
        assert!(
            !format!("{config:?}").contains("secret-key"),
            "keys never show in debug output"
        );
        let keys = config.api_keys.expect("keys");
        assert_eq!(
            keys.tenant_of("secret-key-2").map(Name::as_str),
            Some("globex")
        );
        assert_eq!(keys.tenant_of("nope"), None);
        assert_eq!(
            config.storage_options.get("allow_http").map(String::as_str),
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
                .map(|c| c.port)
                .ok(),
            Some(8000),
            "other empty variables still mean unset"
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let err = Config::from_lookup(lookup(&[("LANCER_PORT", "eighty")])).expect_err("bad port");
        assert!(err.to_string().contains("LANCER_PORT"));
        assert!(Config::from_lookup(lookup(&[("LANCER_API_KEYS", "short=acme")])).is_err());
        assert!(
            Config::from_lookup(lookup(&[("LANCER_API_KEYS", "long-enough=Bad Tenant")])).is_err()
        );
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
        ]))
        .expect("valid");
        let Backend::Ray(ray) = &config.backend else {
            panic!("ray was asked for")
        };
        let env = config.ray_runner_env(ray);
        let shown = serde_json::to_string(&env).expect("json");
        for secret in ["AKIAEXAMPLE", "s3cr3t", "aws_session_token"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
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
            match Config::from_lookup(lookup(&pairs)).expect("valid").backend {
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
        let Backend::Ray(ray_config) = config.backend else {
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
