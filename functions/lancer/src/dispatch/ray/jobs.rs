//! A typed client of Ray's Jobs REST API (`/api/jobs/`): submit, look up, stop, read logs.
//! It knows Ray's wire format and nothing of tasks.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::task::{FailureCode, TaskError};
use crate::error::Result;

/// Ray's Jobs API answers in milliseconds; anything slower is a head in trouble.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Ray's error bodies are Python tracebacks; the end of one is enough for a task's error.
const MAX_BODY_SHOWN: usize = 2_000;

/// A Ray job's lifecycle, as `GET /api/jobs/{id}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Pending,
    Running,
    Stopped,
    Succeeded,
    Failed,
}

#[derive(Debug, Deserialize)]
pub struct JobInfo {
    pub status: JobStatus,
    #[serde(default)]
    pub message: Option<String>,
    /// The driver (the runner) once it started: the node it runs on. Ray fills it only
    /// for a driver that connects to Ray itself (`ray.init()`), which the runner does not.
    #[serde(default)]
    pub driver_info: Option<DriverInfo>,
    /// The Ray agent on the node that runs the driver, `http://<node ip>:<port>`: present
    /// for every job whose driver started.
    #[serde(default)]
    pub driver_agent_http_address: Option<String>,
}

impl JobInfo {
    /// The address of the node Ray runs the job's driver on, as Ray reports it: from the
    /// driver's own record, else from the node agent that runs it.
    pub fn driver_node_ip(&self) -> Option<std::net::IpAddr> {
        if let Some(driver) = &self.driver_info {
            return driver.node_ip_address.parse().ok();
        }
        let agent = url::Url::parse(self.driver_agent_http_address.as_deref()?).ok()?;
        match agent.host()? {
            url::Host::Ipv4(ip) => Some(ip.into()),
            url::Host::Ipv6(ip) => Some(ip.into()),
            url::Host::Domain(_) => None,
        }
    }
}

/// Where Ray started a job's driver.
#[derive(Debug, Deserialize)]
pub struct DriverInfo {
    pub node_ip_address: String,
}

/// `POST /api/jobs/`: one job, its entrypoint and what it needs.
#[derive(Debug, Serialize)]
pub struct JobRequest {
    pub submission_id: String,
    /// A shell command line.
    pub entrypoint: String,
    pub entrypoint_num_cpus: f64,
    pub entrypoint_num_gpus: f64,
    /// Bytes; absent for no reservation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint_memory: Option<u64>,
    /// Custom resources the job's node must offer; absent for none.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub entrypoint_resources: BTreeMap<String, f64>,
    pub runtime_env: RuntimeEnv,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct RuntimeEnv {
    pub env_vars: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Logs {
    #[serde(default)]
    logs: String,
}

/// Why Ray did not take or answer a request. Each names the request (its method and URL,
/// so the head's address) and keeps what came back: the `reqwest` error, or the status and
/// body, and the JSON error where the body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RayError {
    #[error("{request}: the Ray head cannot be reached")]
    Unreachable {
        request: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{request}: Ray refused it ({status}): {}", truncate(.body, MAX_BODY_SHOWN))]
    Rejected {
        request: String,
        status: StatusCode,
        body: String,
    },
    #[error("{request}: Ray failed it ({status}): {}", truncate(.body, MAX_BODY_SHOWN))]
    Broken {
        request: String,
        status: StatusCode,
        body: String,
        #[source]
        source: Option<serde_json::Error>,
    },
}

impl From<RayError> for crate::error::Error {
    fn from(err: RayError) -> Self {
        crate::error::Error::internal(err)
    }
}

impl RayError {
    /// The task's error: what Ray said, and nothing of where the head is (the server log
    /// has that), since a task's error is shown to its tenant.
    pub fn task_error(&self) -> TaskError {
        match self {
            RayError::Unreachable { .. } => TaskError::new(
                FailureCode::BackendUnavailable,
                "the Ray cluster cannot be reached; the server log says why",
            ),
            RayError::Rejected { status, body, .. } => TaskError::new(
                FailureCode::BackendRejected,
                format!(
                    "Ray refused the job ({status}): {}",
                    truncate(body, MAX_BODY_SHOWN)
                ),
            ),
            RayError::Broken { status, body, .. } => TaskError::new(
                FailureCode::BackendError,
                format!(
                    "Ray failed to take the job ({status}): {}",
                    truncate(body, MAX_BODY_SHOWN)
                ),
            ),
        }
    }
}

pub struct JobsClient {
    http: reqwest::Client,
    /// The head's dashboard URL, without a trailing slash.
    address: String,
}

impl JobsClient {
    /// A client of the head at `address`; with `token`, every request carries it as a
    /// bearer token, as a head with token authentication asks.
    pub fn new(address: String, token: Option<&str>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    crate::error::Error::invalid("LANCER_RAY_TOKEN is not a valid header value")
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()?;
        Ok(Self { http, address })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/api/jobs/{rest}", self.address)
    }

    /// Submits a job. A job already submitted under the same id counts as submitted.
    pub async fn submit(&self, job: &JobRequest) -> Result<(), RayError> {
        match self.send(self.http.post(self.url("")).json(job)).await {
            Ok(_) => Ok(()),
            // Ray answers a duplicate submission id with a 500: the job is already there.
            Err(RayError::Broken { body, .. }) if body.contains("already exists") => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The job's state; `None` if Ray has no such job.
    pub async fn job(&self, submission_id: &str) -> Result<Option<JobInfo>, RayError> {
        let Some(info) = self
            .about_job(self.http.get(self.url(submission_id)))
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_value(info.clone())
            .map(Some)
            .map_err(|err| RayError::Broken {
                request: format!("GET {}", self.url(submission_id)),
                status: StatusCode::OK,
                body: info.to_string(),
                source: Some(err),
            })
    }

    /// Stops the job; a job Ray does not have is no error.
    pub async fn stop(&self, submission_id: &str) -> Result<(), RayError> {
        let stop = self.http.post(self.url(&format!("{submission_id}/stop")));
        self.about_job(stop).await.map(|_| ())
    }

    /// The job's driver log; `None` if Ray has no such job.
    pub async fn logs(&self, submission_id: &str) -> Result<Option<String>, RayError> {
        let logs = self.http.get(self.url(&format!("{submission_id}/logs")));
        Ok(self
            .about_job(logs)
            .await?
            .and_then(|body| serde_json::from_value::<Logs>(body).ok())
            .map(|body| body.logs))
    }

    /// A request about one job; `None` when Ray has no such job.
    async fn about_job(&self, request: reqwest::RequestBuilder) -> Result<Option<Value>, RayError> {
        match self.send(request).await {
            Ok(body) => Ok(Some(body)),
            Err(RayError::Rejected {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, RayError> {
        let (client, request) = request.build_split();
        let (label, response) = match request {
            Ok(request) => {
                let label = format!("{} {}", request.method(), request.url());
                (label, client.execute(request).await)
            }
            Err(err) => ("a Ray request".to_owned(), Err(err)),
        };
        let unreachable = |request: &str| {
            let request = request.to_owned();
            move |source| RayError::Unreachable { request, source }
        };
        let response = response.map_err(unreachable(&label))?;
        let status = response.status();
        let body = response.text().await.map_err(unreachable(&label))?;
        if status.is_success() {
            return serde_json::from_str(&body).map_err(|err| RayError::Broken {
                request: label,
                status,
                body,
                source: Some(err),
            });
        }
        if status.is_client_error() {
            Err(RayError::Rejected {
                request: label,
                status,
                body,
            })
        } else {
            Err(RayError::Broken {
                request: label,
                status,
                body,
                source: None,
            })
        }
    }
}

/// The last `max` characters: a traceback's last lines say what went wrong.
fn truncate(text: &str, max: usize) -> String {
    let text = text.trim_end();
    match text.char_indices().rev().nth(max.saturating_sub(1)) {
        Some((cut, _)) if cut > 0 => format!("...{}", &text[cut..]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_node_is_read_from_its_driver_or_else_from_the_agent_that_runs_it() {
        // As Ray answers for the runner, which never calls ray.init(): no driver_info.
        let job: JobInfo = serde_json::from_value(serde_json::json!({
            "status": "RUNNING", "driver_info": null,
            "driver_agent_http_address": "http://10.0.3.7:52365",
        }))
        .expect("a job");
        assert_eq!(job.driver_node_ip(), Some([10, 0, 3, 7].into()));
        let job: JobInfo = serde_json::from_value(serde_json::json!({
            "status": "RUNNING", "driver_info": {"node_ip_address": "10.0.3.8"},
            "driver_agent_http_address": "http://10.0.3.7:52365",
        }))
        .expect("a job");
        assert_eq!(job.driver_node_ip(), Some([10, 0, 3, 8].into()));
        let pending: JobInfo =
            serde_json::from_value(serde_json::json!({"status": "PENDING"})).expect("a job");
        assert_eq!(pending.driver_node_ip(), None, "no driver yet: no node");
    }

    /// The head of one request sent to a loopback listener, answered 404.
    async fn request_head_sent_by(client: impl FnOnce(String) -> JobsClient) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("addr"));
        let jobs = client(address);
        let head = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = socket.read(&mut buffer).await.expect("read");
                head.extend_from_slice(&buffer[..read]);
            }
            let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
            socket.write_all(answer).await.expect("answer");
            String::from_utf8_lossy(&head).to_lowercase()
        });
        assert!(jobs.job("t1-1").await.expect("answered").is_none());
        head.await.expect("the request")
    }

    #[tokio::test]
    async fn a_configured_token_goes_with_every_request_and_none_otherwise() {
        let with = request_head_sent_by(|address| {
            JobsClient::new(address, Some("ray-token-1")).expect("client")
        })
        .await;
        assert!(with.contains("authorization: bearer ray-token-1"), "{with}");
        let without =
            request_head_sent_by(|address| JobsClient::new(address, None).expect("client")).await;
        assert!(!without.contains("authorization"), "{without}");
    }

    #[test]
    fn long_error_bodies_keep_their_end() {
        assert_eq!(truncate("abcdef\n", 3), "...def");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ab", 3), "ab");
    }

    #[test]
    fn a_job_request_is_written_as_rays_jobs_api_reads_it() {
        let request = JobRequest {
            submission_id: "t1-1".into(),
            entrypoint: "'/bin/runner' t1".into(),
            entrypoint_num_cpus: 1.0,
            entrypoint_num_gpus: 0.0,
            entrypoint_memory: None,
            entrypoint_resources: BTreeMap::new(),
            runtime_env: RuntimeEnv {
                env_vars: BTreeMap::from([("A".into(), "1".into())]),
            },
            metadata: BTreeMap::new(),
        };
        let json = serde_json::to_value(&request).expect("json");
        assert_eq!(json["runtime_env"]["env_vars"]["A"], "1");
        assert!(json.get("entrypoint_memory").is_none(), "{json}");
        assert!(json.get("entrypoint_resources").is_none(), "{json}");
        let serving = JobRequest {
            entrypoint_resources: BTreeMap::from([("serve".into(), 1.0)]),
            ..request
        };
        let json = serde_json::to_value(&serving).expect("json");
        assert_eq!(json["entrypoint_resources"]["serve"], 1.0);
    }
}
