//! The in-memory Lake: a fake for tests of callers. Artifacts are real Arrow rows,
//! appended version by version as a script's writes would be, and every figure a
//! description gives (rows, schema, versions, size, a model's newest metrics) is derived
//! from them, so the Lake conformance suite holds it to the same properties as Lance.

use std::collections::BTreeMap;
use std::sync::Mutex;

use arrow_array::RecordBatch;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{NothingToTag, fields_of, model_info_of, no_such_version, projection};
use crate::domain::path::{LakePath, Name};
use crate::domain::task::TaskId;
use crate::domain::validate::ArtifactKind;
use crate::error::{Error, Result};
use crate::ports::{
    ArtifactDetail, ArtifactSummary, ByteStream, Lake, LogChunk, ObjectStat, RowSlice, RowsQuery,
    Stored, Version,
};

/// One write to an artifact: the rows it appended, and when.
struct Write {
    rows: RecordBatch,
    at: DateTime<Utc>,
    /// The task the version is tagged with.
    writer: Option<TaskId>,
}

/// The in-memory `Lake`: artifacts as appended Arrow batches, objects as bytes.
#[derive(Default)]
pub struct MemoryLake {
    /// Artifacts (their writes, oldest first) and objects by lake-relative path.
    artifacts: Mutex<BTreeMap<LakePath, Vec<Write>>>,
    objects: Mutex<BTreeMap<LakePath, Vec<u8>>>,
}

impl MemoryLake {
    /// An empty lake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `rows` to the artifact at `path` (`datasets/x.lance`, ...) as a new version,
    /// as a script writing in append mode would; the schema must match earlier versions'.
    pub fn append(&self, path: &LakePath, rows: RecordBatch) -> Result<()> {
        let mut artifacts = self.artifacts.lock().map_err(poisoned)?;
        let writes = artifacts.entry(path.clone()).or_default();
        if writes
            .first()
            .is_some_and(|w| w.rows.schema() != rows.schema())
        {
            return Err(Error::invalid(format!(
                "{path}: the schema differs from its first version's"
            )));
        }
        writes.push(Write {
            rows,
            at: Utc::now(),
            writer: None,
        });
        Ok(())
    }

    fn summary(&self, name: &Name, path: &LakePath, writes: &[Write]) -> Option<ArtifactSummary> {
        let schema = writes.first()?.rows.schema();
        Some(ArtifactSummary {
            id: name.to_string(),
            path: self.uri_of(path),
            schema: schema
                .fields()
                .iter()
                .map(|field| (field.name().clone(), field.data_type().to_string()))
                .collect(),
            num_rows: writes.iter().map(|w| w.rows.num_rows() as u64).sum(),
        })
    }

    fn detail(
        &self,
        kind: ArtifactKind,
        name: &Name,
        path: &LakePath,
        writes: &[Write],
    ) -> Option<ArtifactDetail> {
        let summary = self.summary(name, path, writes)?;
        let newest = &writes.last()?.rows;
        let fields = fields_of(&newest.schema());
        let versions: Vec<Version> = (1..)
            .zip(writes)
            .map(|(version, write)| Version {
                version,
                timestamp: write.at,
                task_id: write.writer.clone(),
                ..Version::default()
            })
            .collect();
        Some(ArtifactDetail {
            summary,
            fields,
            version: versions.len() as u64,
            versions,
            size_bytes: writes
                .iter()
                .map(|w| w.rows.get_array_memory_size() as u64)
                .sum(),
            model: (kind == ArtifactKind::Model).then(|| model_info_of(newest)),
        })
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("memory lake lock poisoned")
}

#[async_trait]
impl Lake for MemoryLake {
    async fn list(&self, root: &LakePath, kind: ArtifactKind) -> Result<Vec<ArtifactSummary>> {
        let folder = root.join(&kind.folder());
        let artifacts = self.artifacts.lock().map_err(poisoned)?;
        Ok(artifacts
            .iter()
            .filter_map(|(path, writes)| {
                let rest = path.strip_prefix(&folder)?;
                let mut segments = rest.segments();
                let file = segments.next().filter(|_| segments.next().is_none())?;
                let name = Name::parse("name", file.strip_suffix(".lance")?).ok()?;
                self.summary(&name, path, writes)
            })
            .collect())
    }

    async fn describe(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
    ) -> Result<Option<ArtifactDetail>> {
        let path = root.join(&kind.path_of(name));
        let artifacts = self.artifacts.lock().map_err(poisoned)?;
        Ok(artifacts
            .get(&path)
            .and_then(|writes| self.detail(kind, name, &path, writes)))
    }

    async fn rows(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
        query: &RowsQuery,
    ) -> Result<Option<RowSlice>> {
        let path = root.join(&kind.path_of(name));
        let artifacts = self.artifacts.lock().map_err(poisoned)?;
        let Some(writes) = artifacts.get(&path).filter(|w| !w.is_empty()) else {
            return Ok(None);
        };
        let version = query.version.unwrap_or(writes.len() as u64);
        let Some(writes) = (version as usize)
            .checked_sub(1)
            .and_then(|last| writes.get(..=last))
        else {
            return Err(no_such_version(version));
        };
        let schema = writes[0].rows.schema();
        let picked = projection(&schema, query.columns.as_deref())?;
        let mut skip = query.offset;
        let mut want = query.limit;
        let mut batches = Vec::new();
        for rows in writes.iter().map(|w| &w.rows) {
            let len = rows.num_rows() as u64;
            let start = skip.min(len);
            skip -= start;
            let take = want.min(len - start);
            if take > 0 {
                batches.push(rows.slice(start as usize, take as usize).project(&picked)?);
                want -= take;
            }
        }
        Ok(Some(RowSlice {
            version,
            total_rows: writes.iter().map(|w| w.rows.num_rows() as u64).sum(),
            fields: fields_of(&schema.project(&picked)?),
            batches,
        }))
    }

    async fn latest_version(&self, path: &LakePath) -> Result<Option<u64>> {
        let artifacts = self.artifacts.lock().map_err(poisoned)?;
        Ok(artifacts
            .get(path)
            .map(|writes| writes.len() as u64)
            .filter(|&versions| versions > 0))
    }

    async fn tag_writer(&self, path: &LakePath, version: u64, task: &TaskId) -> Result<()> {
        let mut artifacts = self.artifacts.lock().map_err(poisoned)?;
        let write = artifacts
            .get_mut(path)
            .and_then(|writes| writes.get_mut((version as usize).checked_sub(1)?))
            .ok_or_else(|| Error::internal(NothingToTag::new(path, version)))?;
        write.writer.get_or_insert_with(|| task.clone());
        Ok(())
    }

    async fn delete(&self, root: &LakePath, kind: ArtifactKind, name: &Name) -> Result<bool> {
        let path = root.join(&kind.path_of(name));
        Ok(self
            .artifacts
            .lock()
            .map_err(poisoned)?
            .remove(&path)
            .is_some())
    }

    async fn put(&self, path: &LakePath, bytes: Vec<u8>) -> Result<()> {
        self.objects
            .lock()
            .map_err(poisoned)?
            .insert(path.clone(), bytes);
        Ok(())
    }

    async fn put_stream(
        &self,
        path: &LakePath,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<Stored> {
        use futures::StreamExt;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|err| Error::invalid(format!("the upload broke off: {err}")))?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Ok(Stored::OverLimit);
            }
            bytes.extend_from_slice(&chunk);
        }
        let size = bytes.len() as u64;
        self.put(path, bytes).await?;
        Ok(Stored::Whole(size))
    }

    async fn fingerprint(&self, path: &LakePath) -> Result<Option<String>> {
        let objects = self.objects.lock().map_err(poisoned)?;
        let described =
            objects
                .iter()
                .filter(|(key, _)| key.starts_with(path))
                .map(|(key, bytes)| {
                    format!("{key} {}\n", super::digest_of([bytes]).unwrap_or_default())
                });
        Ok(super::digest_of(described))
    }

    async fn usage(&self, folder: &LakePath) -> Result<u64> {
        let objects = self.objects.lock().map_err(poisoned)?;
        Ok(objects
            .iter()
            .filter(|(path, _)| path.starts_with(folder))
            .map(|(_, bytes)| bytes.len() as u64)
            .sum())
    }

    async fn read_from(
        &self,
        path: &LakePath,
        offset: u64,
        limit: u64,
    ) -> Result<Option<LogChunk>> {
        let objects = self.objects.lock().map_err(poisoned)?;
        Ok(objects
            .get(path)
            .map(|bytes| LogChunk::slice(bytes, offset, limit)))
    }

    async fn stat(&self, path: &LakePath) -> Result<Option<ObjectStat>> {
        use std::hash::{Hash, Hasher};
        let objects = self.objects.lock().map_err(poisoned)?;
        Ok(objects.get(path).map(|bytes| {
            // Content-derived, like an ETag of a single-part upload.
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            ObjectStat {
                size: bytes.len() as u64,
                version: format!("{:016x}", hasher.finish()),
            }
        }))
    }

    fn uri_of(&self, path: &LakePath) -> String {
        format!("memory:///{path}")
    }

    fn storage_options(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}
