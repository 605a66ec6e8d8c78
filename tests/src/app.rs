//! An in-process API over a router: a memory task store, a real Lance lake on a temp dir,
//! and a dispatcher that records what it was asked.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use lancer::application::Service;
use lancer::config::{ApiKeys, UploadLimits};
use lancer::dispatch::memory::RecordingDispatcher;
use lancer::domain::ingest::IngestRules;
use lancer::http::{AppState, router};
use lancer::lake::lance::LanceLake;
use lancer::ports::{Lake, ModelStore, PipelineStore, TaskStore};
use lancer::store::memory::MemoryTaskStore;
use serde_json::Value;
use tower::ServiceExt;

pub struct TestApp {
    pub router: Router,
    pub store: Arc<dyn TaskStore>,
    pub pipelines: Arc<dyn PipelineStore>,
    pub models: Arc<dyn ModelStore>,
    pub lake: Arc<dyn Lake>,
    pub dispatcher: Arc<RecordingDispatcher>,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
            .to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestApp {
    /// `keys` like `"key-for-acme-1=acme"`; `None` for open single-tenant mode.
    pub fn new(keys: Option<&str>) -> Self {
        Self::with_store(keys, Arc::new(MemoryTaskStore::new()))
    }

    pub fn with_store(keys: Option<&str>, store: Arc<dyn TaskStore>) -> Self {
        Self::build(keys, store, IngestRules::default())
    }

    /// An app whose tasks and pipelines live in `tasks` and `pipelines` (one store, as the
    /// real adapters are, or two).
    pub fn with_stores(tasks: Arc<dyn TaskStore>, pipelines: Arc<dyn PipelineStore>) -> Self {
        let mut app = Self::build(None, tasks, IngestRules::default());
        app.pipelines = pipelines;
        app.router = router(app.state(None, IngestRules::default()));
        app
    }

    /// An app whose uploads run `rules` (a `LANCER_INGEST_RULES` JSON array).
    pub fn with_ingest_rules(keys: Option<&str>, rules: &str) -> Self {
        let rules = IngestRules::parse(rules).expect("valid rules");
        Self::build(keys, Arc::new(MemoryTaskStore::new()), rules)
    }

    /// An app over `lake` (its temp dir holds the scripts only).
    pub fn with_lake(keys: Option<&str>, lake: Arc<dyn Lake>) -> Self {
        let mut app = Self::build(
            keys,
            Arc::new(MemoryTaskStore::new()),
            IngestRules::default(),
        );
        let state = app.state(keys, IngestRules::default());
        app.lake = lake.clone();
        app.router = router(AppState {
            service: Service {
                lake,
                ..state.service
            },
            ..state
        });
        app
    }

    /// An app whose uploads are held to `limits`.
    pub fn with_upload_limits(keys: Option<&str>, limits: UploadLimits) -> Self {
        let mut app = Self::new(keys);
        let state = app.state(keys, IngestRules::default());
        app.router = router(AppState {
            service: Service {
                upload_limits: limits,
                ..state.service
            },
            ..state
        });
        app
    }

    /// The use cases over this app's adapters, with `keys` and the default limits.
    pub fn service(&self, keys: Option<&str>) -> Service {
        Service {
            store: self.store.clone(),
            pipelines: self.pipelines.clone(),
            models: self.models.clone(),
            lake: self.lake.clone(),
            dispatcher: self.dispatcher.clone(),
            scripts: Arc::new(lancer::scripts::ScriptFolder::new(self.scripts())),
            api_keys: keys.map(|k| ApiKeys::parse(k).expect("valid keys")),
            ingest_rules: IngestRules::default(),
            upload_limits: UploadLimits::default(),
            schedule_limits: Default::default(),
            lease: Duration::from_secs(30),
            fleet: Default::default(),
        }
    }

    /// The state of this app's router, to build another over other adapters.
    fn state(&self, keys: Option<&str>, ingest_rules: IngestRules) -> AppState {
        AppState {
            service: Service {
                ingest_rules,
                ..self.service(keys)
            },
            timeouts: Default::default(),
            metrics_open: false,
            reserved: Default::default(),
            streams: Default::default(),
            hosts: Default::default(),
        }
    }

    /// One reconcile round of the pipelines, as `lancer serve` runs every second.
    pub async fn advance_pipelines(&self) {
        self.state(None, IngestRules::default())
            .service
            .advance_pipelines()
            .await
            .expect("advance");
    }

    /// Moves a task as a runner would: starts it, then applies `ending`.
    pub async fn finish(&self, id: &str, ending: lancer::domain::task::Change) {
        let id = &lancer::domain::task::TaskId::parse(id).expect("a task id");
        use lancer::domain::task::Change;
        let pending = self.store.get(id).await.expect("get").expect("stored");
        let start = Change::Start {
            backend: "test".into(),
        };
        let running = self
            .store
            .transition(id, pending.guard(), start)
            .await
            .expect("start");
        self.store
            .transition(id, running.guard(), ending)
            .await
            .expect("end");
    }

    /// Completes a task as a runner would after its script wrote `rows` rows as a new
    /// version of its output dataset: that version is recorded on the task.
    pub async fn finish_writing(&self, id: &str, rows: usize) {
        let id = &lancer::domain::task::TaskId::parse(id).expect("a task id");
        use lancer::domain::task::{Change, Heartbeat};
        let task = self.store.get(id).await.expect("get").expect("stored");
        let output = task.output_path.clone().expect("an output");
        let options = self.lake.storage_options().into_iter().collect();
        let batch = crate::lake::dataset_batch(rows);
        crate::lake::write_lance(&self.lake.uri_of(&output), batch, &options).await;
        let version = self.lake.latest_version(&output).await.expect("version");
        let start = Change::Start {
            backend: "test".into(),
        };
        let running = self
            .store
            .transition(id, task.guard(), start)
            .await
            .expect("start");
        let beat = Heartbeat {
            output_version: version,
            ..Heartbeat::default()
        };
        self.store
            .heartbeat(id, running.attempt, beat)
            .await
            .expect("heartbeat");
        let done = Change::Complete {
            result: serde_json::json!({}),
        };
        self.store
            .transition(id, running.guard(), done)
            .await
            .expect("complete");
    }

    /// The scripts folder: `jobs/noop.py`, registered.
    pub fn scripts(&self) -> std::path::PathBuf {
        self.dir.path().join("scripts")
    }

    fn build(keys: Option<&str>, store: Arc<dyn TaskStore>, ingest_rules: IngestRules) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(scripts.join("jobs")).expect("mkdir");
        std::fs::write(
            scripts.join("jobs/noop.py"),
            "def run(i, o, p):\n    return {}\n",
        )
        .expect("write");
        std::fs::write(
            scripts.join(lancer::scripts::REGISTRY_FILE),
            r#"{"scripts": ["jobs/noop.py"]}"#,
        )
        .expect("write the registry");
        let lake: Arc<dyn Lake> = Arc::new(
            LanceLake::open(
                &dir.path().join("lake").to_string_lossy(),
                Default::default(),
            )
            .expect("lake"),
        );
        let mut app = Self {
            router: Router::new(),
            dispatcher: Arc::new(RecordingDispatcher::new(store.clone())),
            store,
            pipelines: Arc::new(MemoryTaskStore::new()),
            models: Arc::new(MemoryTaskStore::new()),
            lake,
            dir,
        };
        app.router = router(app.state(keys, ingest_rules));
        app
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.call(Method::GET, path, None, headers).await
    }

    /// `POST /api/v1/tasks/{id}/cancel`.
    pub async fn cancel(&self, id: &str, headers: &[(&str, &str)]) -> Answer {
        let path = format!("/api/v1/tasks/{id}/cancel");
        self.call(Method::POST, &path, None, headers).await
    }

    pub async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(serde_json::to_vec(body).expect("json")),
            headers,
        )
        .await
    }
}
