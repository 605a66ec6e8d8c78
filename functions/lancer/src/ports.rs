//! The ports: small async traits the domain talks through. Each has an in-memory fake
//! and real adapters, and one conformance suite (in `tests/`) runs against all of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::cache::Digest;
use crate::domain::endpoint::Reported;
use crate::domain::error::Invalid;
use crate::domain::model::{ModelName, ModelRecord};
use crate::domain::path::{LakePath, Name};
use crate::domain::pipeline::{Pipeline, PipelineId, PipelineSpec};
use crate::domain::task::{Change, Guard, Heartbeat, Task, TaskId, TaskStatus};
use crate::domain::tenant::TenantName;
use crate::domain::validate::ArtifactKind;
use crate::error::Result;

/// The outcome of `TaskStore::create` and `PipelineStore::create_pipeline`.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T = Task> {
    /// No record held its idempotency key (or it had none): this one was stored.
    New(T),
    /// A record with the same tenant and idempotency key already existed.
    Existing(T),
}

impl<T> Created<T> {
    /// The record, whether stored now or found under the key.
    pub fn into_inner(self) -> T {
        match self {
            Created::New(record) | Created::Existing(record) => record,
        }
    }
}

/// The most records one page of a listing holds.
pub const MAX_PAGE: usize = 1000;

/// Where a listing continues: the id of the previous page's last record, opaque to
/// clients (URL-safe base64). A store issues it; a request's is parsed, once, at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    last_id: String,
}

/// The longest page token a request may carry: a record id, encoded.
const MAX_PAGE_TOKEN: usize = 512;

impl PageToken {
    /// The token of a page that ended at `last_id`.
    pub fn after(last_id: &str) -> Self {
        Self {
            last_id: last_id.to_owned(),
        }
    }

    /// A client's token, refused unless this server could have issued it.
    pub fn parse(token: &str) -> std::result::Result<Self, Invalid> {
        use base64::Engine as _;
        let refused = || Invalid::rule("page_token is not a token this server issued");
        if token.len() > MAX_PAGE_TOKEN {
            return Err(refused());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| refused())?;
        let last_id = String::from_utf8(bytes).map_err(|_| refused())?;
        Ok(Self { last_id })
    }

    /// The id the listing continues below (or above, for oldest-first listings).
    pub fn last_id(&self) -> &str {
        &self.last_id
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.last_id))
    }
}

impl Serialize for PageToken {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which tasks `TaskStore::list` returns, a page at a time: those all given filters admit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// `None` lists every tenant's tasks (dispatchers and sweepers only).
    pub tenant: Option<TenantName>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks whose name starts with this.
    pub name_prefix: Option<Name>,
    /// The most tasks on a page; a store clamps it to 1-`MAX_PAGE`.
    pub limit: usize,
    /// From a previous page.
    pub page_token: Option<PageToken>,
}

/// One page of `TaskStore::list`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    /// Newest first.
    pub tasks: Vec<Task>,
    /// Where the next page starts; `None` on the last page.
    pub next_page_token: Option<PageToken>,
}

/// Where task records live. Every state change is a compare-and-set on `Guard`,
/// so of two writers racing from the same state exactly one wins.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores a new pending task; with an idempotency key taken by the same tenant,
    /// returns the task that holds it instead.
    async fn create(&self, task: Task) -> Result<Created>;

    /// The task `id` as last written; `None` if the store holds no such task, which
    /// includes a finished task DynamoDB has expired.
    async fn get(&self, id: &TaskId) -> Result<Option<Task>>;

    /// One page of the tasks `query` admits, newest first (by id, which orders by
    /// creation), with a token for the next page while more remain.
    async fn list(&self, query: &ListQuery) -> Result<TaskPage>;

    /// Applies `change` if the record still matches `guard`; `Error::Stale` if it
    /// moved on, `Error::NotFound` if there is no such task.
    async fn transition(&self, id: &TaskId, guard: Guard, change: Change) -> Result<Task>;

    /// Records a heartbeat (and progress or endpoint) of a running attempt;
    /// `Error::Stale` once the task is no longer running that attempt.
    async fn heartbeat(&self, id: &TaskId, attempt: u32, beat: Heartbeat) -> Result<Task>;

    /// Running tasks whose last heartbeat is older than `cutoff`, across tenants.
    async fn stale_running(&self, cutoff: DateTime<Utc>) -> Result<Vec<Task>>;
}

/// One page of `PipelineStore::list_pipelines`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelinePage {
    /// Newest first.
    pub pipelines: Vec<Pipeline>,
    /// Where the next page starts; `None` on the last page.
    pub next_page_token: Option<PageToken>,
}

/// Where pipeline records live. A record changes only by `update_pipeline`, a
/// compare-and-set on its `revision`, so of two processes advancing the same pipeline
/// exactly one writes each step.
#[async_trait]
pub trait PipelineStore: Send + Sync {
    /// Stores a new pipeline; with an idempotency key taken by the same tenant, returns the
    /// pipeline that holds it (a different spec under the key is `Error::Conflict`).
    async fn create_pipeline(&self, pipeline: Pipeline) -> Result<Created<Pipeline>>;

    /// The pipeline `id` as last written; `None` if the store holds no such pipeline.
    async fn pipeline(&self, id: &PipelineId) -> Result<Option<Pipeline>>;

    /// A tenant's pipelines, newest first, `limit` (1-1000) at a time.
    async fn list_pipelines(
        &self,
        tenant: &TenantName,
        limit: usize,
        page_token: Option<&PageToken>,
    ) -> Result<PipelinePage>;

    /// Every running pipeline and every schedule across tenants, oldest first: what
    /// reconcile advances or fires.
    async fn active_pipelines(&self) -> Result<Vec<Pipeline>>;

    /// Stores `next` if the stored record's revision is still `next.revision`, and returns
    /// it with the revision bumped; `Error::Stale` if another write came first.
    async fn update_pipeline(&self, next: Pipeline) -> Result<Pipeline>;

    /// The task a tenant's cache remembers under a cache key's digest.
    async fn cached_task(&self, tenant: &TenantName, digest: &Digest) -> Result<Option<TaskId>>;

    /// Remembers `task`, completed, under the digest (replacing an older one).
    async fn remember_task(
        &self,
        tenant: &TenantName,
        digest: &Digest,
        task: &TaskId,
    ) -> Result<()>;
}

/// Where model records live: each model's aliases and their histories. A record changes
/// only by `update_model`, a compare-and-set on its `revision`, so of two processes moving
/// the same alias at once one writes and the other re-reads.
#[async_trait]
pub trait ModelStore: Send + Sync {
    /// The record of `model` in `tenant`'s lake; `None` if none was ever stored.
    async fn model_record(
        &self,
        tenant: &TenantName,
        model: &ModelName,
    ) -> Result<Option<ModelRecord>>;

    /// Stores `next` if the stored record's revision is still `next.revision` (0: no
    /// record is stored yet), and returns it with the revision bumped; `Error::Stale` if
    /// another write came first.
    async fn update_model(&self, next: ModelRecord) -> Result<ModelRecord>;

    /// Removes the record of `model`, if there is one (the model itself was deleted).
    async fn delete_model_record(&self, tenant: &TenantName, model: &ModelName) -> Result<()>;

    /// Every tenant's records that declare serving or still hold replicas: what serving
    /// reconcile looks after. Read through an index of those alone, not a scan.
    async fn serving_models(&self) -> Result<Vec<ModelRecord>>;
}

/// One field of an artifact's Arrow schema.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Field {
    /// The column name, as `RowsQuery::columns` names it.
    pub name: String,
    /// Arrow data type, e.g. `Int64` or `FixedSizeList(784 x Float32)`.
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether the column may hold nulls.
    pub nullable: bool,
    /// The picture shape, `[height, width]` or `[height, width, channels]`, of a column
    /// whose Arrow field metadata says `lancer:image` = `28x28` (or `32x32x3`): its
    /// values are drawn as pictures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Vec<u32>>,
}

/// Which rows of an artifact to read: parsed and bounded by the use case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowsQuery {
    /// The first row to return, counting from 0 in that version.
    pub offset: u64,
    /// The most rows to return.
    pub limit: u64,
    /// Only these columns, in this order; every column when `None`.
    pub columns: Option<Vec<String>>,
    /// The latest version when `None`.
    pub version: Option<u64>,
}

/// Rows of one version of an artifact.
#[derive(Debug, Clone)]
pub struct RowSlice {
    /// The version read: the one asked for, or the latest.
    pub version: u64,
    /// Rows in that version.
    pub total_rows: u64,
    /// The fields of the columns returned, in the order asked for, as the schema declares
    /// them (even where `batches` carries a binary column as its sizes).
    pub fields: Vec<Field>,
    /// The rows asked for, in order (possibly fewer, at the end).
    pub batches: Vec<arrow_array::RecordBatch>,
}

/// One version of a dataset or model, and what made it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Version {
    /// The Lance version number (a dataset's first write is 1).
    pub version: u64,
    /// When the version was committed.
    pub timestamp: DateTime<Utc>,
    /// The task that wrote it (the version's `lancer-task-<id>` tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub task_id: Option<TaskId>,
    /// That task's pipeline and step.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pipeline_id: Option<PipelineId>,
    /// The name of the pipeline step that task ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What that task read: a model version names the dataset version it was trained on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_path: Option<String>,
    /// The version of `input_path` that task read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_version: Option<u64>,
}

/// The field metadata of a column in a `RowSlice` that holds a binary column's value
/// sizes instead of its values: a lake may drop big cells as it reads a page, and the
/// page shows them as `{"bytes": n}` either way.
pub const SIZES_OF_BINARY: &str = "lancer:bytes";

/// The tag that marks the version a task wrote.
pub fn writer_tag(task: &TaskId) -> String {
    format!("{WRITER_TAG_PREFIX}{task}")
}

/// What every writer tag starts with; the task id follows.
pub const WRITER_TAG_PREFIX: &str = "lancer-task-";

/// A dataset or model as `GET /datasets` and `GET /models` list it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactSummary {
    /// The artifact's name: its folder is `<id>.lance`, and `/datasets/{id}` or
    /// `/models/{id}` names it.
    pub id: String,
    /// The lake URI of the Lance dataset.
    pub path: String,
    /// Column name -> Arrow type.
    #[schema(value_type = Object)]
    pub schema: BTreeMap<String, String>,
    /// Rows in the latest version.
    pub num_rows: u64,
}

/// The newest row of a model: what it scored and how it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ModelInfo {
    /// The newest row's `metrics` column, parsed as JSON (kept as a string if it is not);
    /// `None` if the row has none.
    #[schema(value_type = Object)]
    pub metrics: Option<Value>,
    /// The newest row's `params` column, read as `metrics` is.
    #[schema(value_type = Object)]
    pub params: Option<Value>,
    /// The newest row's `created_at` column, as the script wrote it.
    pub created_at: Option<String>,
}

/// A dataset or model as `GET /datasets/{id}` and `GET /models/{id}` describe it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ArtifactDetail {
    /// What a listing shows of it, flattened into the same JSON object.
    #[serde(flatten)]
    pub summary: ArtifactSummary,
    /// The latest version's schema, column by column.
    pub fields: Vec<Field>,
    /// The latest version.
    pub version: u64,
    /// Every version the artifact holds, oldest first.
    pub versions: Vec<Version>,
    /// The bytes it takes in the lake, every version's files together.
    pub size_bytes: u64,
    /// What a model's newest row records; `None` for a dataset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
}

/// A slice of a task's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogChunk {
    /// The bytes read, starting at the offset asked for.
    pub bytes: Vec<u8>,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// The whole object's size: more is there to read while `next_offset` is below it.
    pub size: u64,
}

impl LogChunk {
    /// The bytes of an object of `size` that a read of at most `limit` from `offset` covers.
    pub fn range(offset: u64, limit: u64, size: u64) -> std::ops::Range<u64> {
        let start = offset.min(size);
        start..start.saturating_add(limit).min(size)
    }

    /// At most `limit` bytes of `all` from `offset`.
    pub fn slice(all: &[u8], offset: u64, limit: u64) -> Self {
        let size = all.len() as u64;
        let range = Self::range(offset, limit, size);
        Self {
            bytes: all[range.start as usize..range.end as usize].to_vec(),
            next_offset: range.end,
            size,
        }
    }

    /// Ends a chunk that stops short of the log's end after its last whole line or, in a
    /// line longer than the chunk, after its last whole UTF-8 character, so that no reader
    /// sees a line or a character split across two calls. A chunk with neither is kept
    /// whole, so every call still moves the reader on.
    pub fn at_a_line_end(mut self) -> Self {
        if self.next_offset >= self.size {
            return self;
        }
        let keep = match self.bytes.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None => match std::str::from_utf8(&self.bytes) {
                Err(err) if err.error_len().is_none() => err.valid_up_to(),
                _ => self.bytes.len(),
            },
        };
        if keep > 0 {
            self.next_offset -= (self.bytes.len() - keep) as u64;
            self.bytes.truncate(keep);
        }
        self
    }
}

/// The bytes of an upload as they arrive.
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// What became of a streamed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored whole: its size.
    Whole(u64),
    /// Refused past the limit; nothing was kept.
    OverLimit,
}

/// An object's size and version: its ETag where the store keeps one, so a rewritten
/// object has a new version.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStat {
    /// The object's size in bytes.
    pub size: u64,
    /// Opaque; it changes when the object is rewritten with other content.
    pub version: String,
}

/// The data lake: Lance datasets and models, and task logs, under one root.
/// `root` is the tenant's folder in the lake (the lake's root in single-tenant mode);
/// every path is a `LakePath`, so no key or URI is built from unchecked text.
#[async_trait]
pub trait Lake: Send + Sync {
    /// The datasets or models (`kind`) under `root`; a folder there that is no Lance
    /// dataset is skipped, not an error.
    async fn list(&self, root: &LakePath, kind: ArtifactKind) -> Result<Vec<ArtifactSummary>>;

    /// The artifact `name` of `kind` under `root`: its schema, versions (each naming only
    /// the task that wrote it), size and, for a model, its newest row; `None` if there is
    /// no such artifact.
    async fn describe(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
    ) -> Result<Option<ArtifactDetail>>;

    /// The latest version of the Lance dataset at `path`; `None` if there is none.
    async fn latest_version(&self, path: &LakePath) -> Result<Option<u64>>;

    /// Marks `version` of the dataset at `path` as written by `task` (the Lance tag
    /// `writer_tag(task)`), so its version listing names the writer. Marking it again is a
    /// no-op.
    async fn tag_writer(&self, path: &LakePath, version: u64, task: &TaskId) -> Result<()>;

    /// A digest of the object at `path`, or of every object under it: names, sizes and
    /// versions. What stands for the version of an input that is no Lance dataset (a
    /// `raw/` folder) in a cache key; `None` if nothing is there.
    async fn fingerprint(&self, path: &LakePath) -> Result<Option<String>>;

    /// At most `query.limit` rows from `query.offset` of one version of an artifact (the
    /// latest unless asked), with only the columns asked for; `None` if there is no such
    /// artifact. A column or version it does not have is `Error::InvalidRequest`.
    async fn rows(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
        query: &RowsQuery,
    ) -> Result<Option<RowSlice>>;

    /// Removes the artifact; false if it did not exist.
    async fn delete(&self, root: &LakePath, kind: ArtifactKind, name: &Name) -> Result<bool>;

    /// Replaces the object at `path` (logs are rewritten whole as they grow).
    async fn put(&self, path: &LakePath, bytes: Vec<u8>) -> Result<()>;

    /// Streams an object to `path`, holding no more than a small buffer of it in memory,
    /// and refuses it once it passes `limit` bytes. A refused or broken upload leaves
    /// nothing behind, and the object at `path` is replaced only by a whole new one.
    async fn put_stream(&self, path: &LakePath, body: ByteStream, limit: u64) -> Result<Stored>;

    /// The bytes of all objects under `folder`.
    async fn usage(&self, folder: &LakePath) -> Result<u64>;

    /// At most `limit` bytes of the object at `path` from `offset`; `None` if it does not
    /// exist.
    async fn read_from(&self, path: &LakePath, offset: u64, limit: u64)
    -> Result<Option<LogChunk>>;

    /// Size and version of the object at `path`; `None` if it does not exist.
    async fn stat(&self, path: &LakePath) -> Result<Option<ObjectStat>>;

    /// The URI a script receives for a path (a local path or `s3://...`).
    fn uri_of(&self, path: &LakePath) -> String;

    /// Storage options a script needs to open `uri_of` paths with Lance (empty on local disk).
    fn storage_options(&self) -> BTreeMap<String, String>;
}

/// The operator's scripts, as the use cases see them: which scripts a task may name, what
/// they hold now (a cache key covers it), and the pipeline files ingestion rules start.
/// The real adapter reads the scripts folder on each call, so an operator's edit takes
/// effect without a restart (`scripts::ScriptFolder`); `scripts::MemoryScripts` is the fake.
#[async_trait]
pub trait Scripts: Send + Sync {
    /// Whether a task may name `script`: registered and runnable. A refusal is a 400 that
    /// says nothing of the server's folders.
    async fn check(&self, script: &str) -> Result<()>;

    /// The content of the registered script `script`, refused as `check` refuses.
    async fn content(&self, script: &str) -> Result<Vec<u8>>;

    /// A pipeline file beside the scripts, named by an ingestion rule. It is the
    /// operator's: a missing or broken one is an internal error, not the uploader's.
    async fn pipeline(&self, file: &str) -> Result<PipelineSpec>;
}

/// Runs tasks somewhere: local subprocesses, Ray jobs. A backend implements `submit` and
/// `cancel`; reconcile (`application::reconcile`), which brings it in line with the store,
/// is the same for every backend, with hooks here where one needs to look at its own side
/// (a Ray job's state).
#[async_trait]
pub trait Dispatcher: Send + Sync {
    /// The backend name recorded on tasks it runs.
    fn backend(&self) -> &'static str;

    /// Queues a pending task for a runner. Submitting a task twice runs it once.
    async fn submit(&self, task: &Task) -> Result<()>;

    /// Stops the runner of a task the store already marked cancelled.
    async fn cancel(&self, task: &Task) -> Result<()>;

    /// Where a running serving task's process really listens, given what its script
    /// reported: the backend confirms the address from what it knows itself (the local
    /// runner's process group owns the socket; Ray's record of the job's node), or answers
    /// `None`. A backend that cannot confirm an endpoint never has one proxied.
    async fn endpoint_of(&self, _task: &Task, _reported: Reported) -> Result<Option<SocketAddr>> {
        Ok(None)
    }

    /// Backend logs of a task, for when the lake has none.
    async fn logs(&self, _task: &Task) -> Result<Option<String>> {
        Ok(None)
    }

    /// Reconcile's hook for a pending task (found in the store, or requeued after its lease
    /// expired): by default it is submitted, which is idempotent.
    async fn look_after_pending(&self, task: &Task) -> Result<()> {
        self.submit(task).await
    }

    /// Reconcile's hook for a running task this backend started, when `watches_running`:
    /// by default nothing, since its lease decides.
    async fn look_after_running(&self, _task: &Task) -> Result<()> {
        Ok(())
    }

    /// Whether `look_after_running` wants the running tasks (listing them costs a scan).
    fn watches_running(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{LogChunk, PageToken};

    #[test]
    fn a_page_token_reads_back_the_id_it_was_issued_after_and_refuses_any_other_text() {
        let token = PageToken::after("0193e9a0-7c1f-7000-8000-000000000001");
        let again = PageToken::parse(&token.to_string()).expect("an issued token");
        assert_eq!(again.last_id(), "0193e9a0-7c1f-7000-8000-000000000001");
        for forged in ["not base64!", "//8", &"A".repeat(513)] {
            let err = PageToken::parse(forged).expect_err(forged);
            assert!(
                err.to_string().contains("not a token this server issued"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_slice_stops_at_the_limit_or_the_end() {
        let log = b"one\ntwo\n";
        let head = LogChunk::slice(log, 0, 5);
        assert_eq!(
            (head.bytes.as_slice(), head.next_offset, head.size),
            (&b"one\nt"[..], 5, 8)
        );
        let tail = LogChunk::slice(log, 5, 100);
        assert_eq!((tail.bytes.as_slice(), tail.next_offset), (&b"wo\n"[..], 8));
        let past = LogChunk::slice(log, 99, 100);
        assert_eq!((past.bytes.len(), past.next_offset), (0, 8));
    }

    #[test]
    fn a_chunk_short_of_the_end_ends_after_its_last_whole_line() {
        let chunk = LogChunk::slice(b"one\ntwo\nthr", 0, 10).at_a_line_end();
        assert_eq!(chunk.bytes, b"one\ntwo\n");
        assert_eq!(chunk.next_offset, 8);
        let last = LogChunk::slice(b"one\ntwo\nthr", 0, 100).at_a_line_end();
        assert_eq!(
            last.bytes, b"one\ntwo\nthr",
            "the end of the log is served as it is"
        );
    }

    #[test]
    fn a_line_longer_than_the_chunk_is_split_between_characters() {
        let log = "ab\u{e9}\u{e9}".as_bytes(); // a, b, then two 2-byte characters
        let chunk = LogChunk::slice(log, 0, 5).at_a_line_end();
        assert_eq!(chunk.bytes, "ab\u{e9}".as_bytes());
        assert_eq!(chunk.next_offset, 4);
        let tiny = LogChunk::slice(log, 2, 1).at_a_line_end();
        assert_eq!(tiny.next_offset, 3, "a reader always moves on");
    }
}
