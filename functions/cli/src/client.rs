//! A small typed client of the REST API: it speaks the library's own types.

use anyhow::{Context, Result, bail};
use lancer::domain::pipeline::Pipeline;
use lancer::domain::task::{Task, TaskStatus};
use lancer::ports::ArtifactSummary;
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

/// A log slice and where the next one starts.
pub struct LogSlice {
    pub text: String,
    pub next_offset: u64,
    /// The task's status when the slice was read; `None` from a server that did not say.
    pub status: Option<TaskStatus>,
}

/// A page of `GET /tasks`.
#[derive(Deserialize)]
pub struct TaskList {
    pub tasks: Vec<Task>,
    pub next_page_token: Option<String>,
}

/// A page of `GET /pipelines`.
#[derive(Deserialize)]
pub struct PipelineList {
    pub pipelines: Vec<Pipeline>,
    pub next_page_token: Option<String>,
}

impl Client {
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach lancer at {}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("HTTP_ERROR");
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        bail!("{status}: {code}: {message}")
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = self.send(request).await?;
        response
            .json()
            .await
            .context("the server's answer is not what this client expected")
    }

    pub async fn submit(&self, spec: &Value, idempotency_key: Option<&str>) -> Result<Task> {
        let mut request = self.request(Method::POST, "/tasks").json(spec);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.json(request).await
    }

    pub async fn list_tasks(
        &self,
        status: Option<&str>,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<TaskList> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(status.map(|s| ("status", s.to_owned())));
        query.extend(page_token.map(|t| ("page_token", t.to_owned())));
        self.json(self.request(Method::GET, "/tasks").query(&query))
            .await
    }

    pub async fn task(&self, id: &str) -> Result<Task> {
        self.json(self.request(Method::GET, &format!("/tasks/{id}")))
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<Task> {
        self.json(self.request(Method::POST, &format!("/tasks/{id}/cancel")))
            .await
    }

    pub async fn logs(&self, id: &str, offset: u64) -> Result<LogSlice> {
        let request = self
            .request(Method::GET, &format!("/tasks/{id}/logs"))
            .query(&[("offset", offset)]);
        let response = self.send(request).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let next_offset = header("x-next-offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let status = header("x-task-status").and_then(|v| v.parse().ok());
        Ok(LogSlice {
            text: response.text().await?,
            next_offset,
            status,
        })
    }

    pub async fn artifacts(&self, kind: &str) -> Result<Vec<ArtifactSummary>> {
        self.json(self.request(Method::GET, &format!("/{kind}")))
            .await
    }

    pub async fn artifact(&self, kind: &str, id: &str) -> Result<Value> {
        self.json(self.request(Method::GET, &format!("/{kind}/{id}")))
            .await
    }

    pub async fn delete_artifact(&self, kind: &str, id: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, &format!("/{kind}/{id}")))
            .await?;
        Ok(())
    }

    pub async fn submit_pipeline(
        &self,
        spec: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Pipeline> {
        let mut request = self.request(Method::POST, "/pipelines").json(spec);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.json(request).await
    }

    pub async fn pipeline(&self, id: &str) -> Result<Pipeline> {
        self.json(self.request(Method::GET, &format!("/pipelines/{id}")))
            .await
    }

    pub async fn list_pipelines(
        &self,
        limit: usize,
        page_token: Option<&str>,
    ) -> Result<PipelineList> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(page_token.map(|t| ("page_token", t.to_owned())));
        self.json(self.request(Method::GET, "/pipelines").query(&query))
            .await
    }

    /// `POST /pipelines/{id}/<action>`: cancel or retry.
    pub async fn pipeline_action(&self, id: &str, action: &str) -> Result<Pipeline> {
        self.json(self.request(Method::POST, &format!("/pipelines/{id}/{action}")))
            .await
    }

    /// `GET path` as JSON.
    pub async fn get_value(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::GET, path)).await
    }

    /// `PUT path` with a JSON body; the answer as JSON.
    pub async fn put_value(&self, path: &str, body: &Value) -> Result<Value> {
        self.json(self.request(Method::PUT, path).json(body)).await
    }

    /// `POST path` with no body; the answer as JSON.
    pub async fn post_value(&self, path: &str) -> Result<Value> {
        self.json(self.request(Method::POST, path)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.send(self.request(Method::DELETE, path)).await?;
        Ok(())
    }
}
