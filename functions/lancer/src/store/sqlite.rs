//! The SQLite TaskStore (and PipelineStore, in `pipelines`, and ModelStore, in `models`) of
//! the embedded default. WAL mode and a busy timeout let the
//! server and every runner process write the same file at once; each change runs in an
//! IMMEDIATE transaction whose UPDATE is guarded by status and attempt.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::{
    existing_for_key, next_heartbeat, next_record, page_limit, page_of, page_start, task_not_found,
};
use crate::domain::task::{Change, Guard, Heartbeat, Task, TaskId, TaskStatus};
use crate::error::{Error, Result};
use crate::ports::{Created, ListQuery, TaskPage, TaskStore};

mod models;
mod pipelines;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    idempotency_key TEXT,
    heartbeat_ms INTEGER,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_key ON tasks (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_by_tenant ON tasks (tenant, id);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, heartbeat_ms);
CREATE TABLE IF NOT EXISTS pipelines (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    revision INTEGER NOT NULL,
    idempotency_key TEXT,
    body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS pipelines_by_key ON pipelines (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS pipelines_by_tenant ON pipelines (tenant, id);
CREATE INDEX IF NOT EXISTS pipelines_by_status ON pipelines (status, id);
CREATE TABLE IF NOT EXISTS cache (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (tenant, digest)
);
CREATE TABLE IF NOT EXISTS models (
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    revision INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant, model)
);
CREATE INDEX IF NOT EXISTS models_served ON models (tenant, model)
    WHERE json_extract(body, '$.serving') IS NOT NULL OR json_extract(body, '$.replicas') IS NOT NULL;
";

/// The `TaskStore`, `PipelineStore` and `ModelStore` over one SQLite file.
pub struct SqliteTaskStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteTaskStore {
    /// Opens the database at `path`, creating the file, its folder and the tables where
    /// missing, in WAL mode with a 10 s busy timeout.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking SQLite work off the async threads.
    async fn with_conn<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| Error::internal("sqlite lock poisoned"))?;
            work(&mut conn)
        })
        .await?
    }

    /// Reads, decides and writes one record in a single IMMEDIATE transaction.
    async fn update<F>(&self, id: &str, decide: F) -> Result<Task>
    where
        F: FnOnce(&Task) -> Result<Task> + Send + 'static,
    {
        let id = id.to_owned();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = select_task(&tx, &id)?.ok_or_else(|| task_not_found(&id))?;
            let next = decide(&current)?;
            let written = tx.execute(
                "UPDATE tasks SET status = ?1, attempt = ?2, heartbeat_ms = ?3, body = ?4
                     WHERE id = ?5 AND status = ?6 AND attempt = ?7",
                params![
                    next.status.as_str(),
                    next.attempt,
                    next.heartbeat_at.map(|at| at.timestamp_millis()),
                    to_json(&next)?,
                    id,
                    current.status.as_str(),
                    current.attempt,
                ],
            )?;
            if written != 1 {
                return Err(Error::Stale(format!("task {id} changed during the update")));
            }
            tx.commit()?;
            Ok(next)
        })
        .await
    }
}

fn to_json(task: &Task) -> Result<String> {
    serde_json::to_string(task).map_err(Error::internal)
}

fn from_json(body: &str) -> Result<Task> {
    serde_json::from_str(body).map_err(Error::internal)
}

fn select_task(conn: &Connection, id: &str) -> Result<Option<Task>> {
    let body: Option<String> = conn
        .query_row("SELECT body FROM tasks WHERE id = ?1", [id], |row| {
            row.get(0)
        })
        .optional()?;
    body.as_deref().map(from_json).transpose()
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::ConstraintViolation)
}

#[async_trait]
impl TaskStore for SqliteTaskStore {
    async fn create(&self, task: Task) -> Result<Created> {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                ?;
            let inserted = tx.execute(
                "INSERT INTO tasks (id, tenant, status, attempt, idempotency_key, heartbeat_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
                params![
                    task.id.as_str(),
                    task.tenant.as_str(),
                    task.status.as_str(),
                    task.attempt,
                    task.spec.idempotency_key,
                    to_json(&task)?,
                ],
            );
            match inserted {
                Ok(_) => {
                    tx.commit()?;
                    Ok(Created::New(task))
                }
                Err(err) if is_unique_violation(&err) && task.spec.idempotency_key.is_some() => {
                    let body: Option<String> = tx
                        .query_row(
                            "SELECT body FROM tasks WHERE tenant = ?1 AND idempotency_key = ?2",
                            params![task.tenant.as_str(), task.spec.idempotency_key],
                            |row| row.get(0),
                        )
                        .optional()
                        ?;
                    match body {
                        Some(body) => existing_for_key(from_json(&body)?, &task),
                        None => Err(Error::Conflict(format!("task {} already exists", task.id))),
                    }
                }
                Err(err) if is_unique_violation(&err) => {
                    Err(Error::Conflict(format!("task {} already exists", task.id)))
                }
                Err(err) => Err(Error::internal(err)),
            }
        })
        .await
    }

    async fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        let id = id.to_string();
        self.with_conn(move |conn| select_task(conn, &id)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<TaskPage> {
        let before = page_start(query.page_token.as_ref());
        let tenant = query.tenant.as_ref().map(ToString::to_string);
        let status = query.status.map(TaskStatus::as_str);
        let prefix = query.name_prefix.as_ref().map(ToString::to_string);
        let limit = page_limit(query.limit);
        self.with_conn(move |conn| {
            // substr, not LIKE: a prefix holding % or _ means itself.
            let mut statement = conn.prepare_cached(
                "SELECT body FROM tasks
                     WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR tenant = ?2)
                       AND (?3 IS NULL OR status = ?3)
                       AND (?5 IS NULL OR substr(json_extract(body, '$.spec.name'), 1, length(?5)) = ?5)
                     ORDER BY id DESC LIMIT ?4",
            )?;
            let bodies = statement
                .query_map(
                    params![before, tenant, status, limit as i64 + 1, prefix],
                    |row| row.get::<_, String>(0),
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let tasks = bodies
                .iter()
                .map(|body| from_json(body))
                .collect::<Result<Vec<_>>>()?;
            Ok(page_of(tasks, limit))
        })
        .await
    }

    async fn transition(&self, id: &TaskId, guard: Guard, change: Change) -> Result<Task> {
        self.update(id.as_str(), move |current| {
            next_record(current, guard, change)
        })
        .await
    }

    async fn heartbeat(&self, id: &TaskId, attempt: u32, beat: Heartbeat) -> Result<Task> {
        self.update(id.as_str(), move |current| {
            next_heartbeat(current, attempt, &beat)
        })
        .await
    }

    async fn stale_running(&self, cutoff: DateTime<Utc>) -> Result<Vec<Task>> {
        self.with_conn(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT body FROM tasks WHERE status = 'running'
                     AND (heartbeat_ms IS NULL OR heartbeat_ms < ?1)",
            )?;
            let bodies = statement
                .query_map([cutoff.timestamp_millis()], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            bodies.iter().map(|body| from_json(body)).collect()
        })
        .await
    }
}
