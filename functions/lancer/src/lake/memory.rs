//! The in-memory Lake: a fake for tests of callers that need no real Lance data.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::path::{LakePath, Name};
use crate::domain::validate::ArtifactKind;
use crate::error::{Error, Result};
use crate::ports::{
    ArtifactDetail, ArtifactSummary, ByteStream, Lake, LogChunk, ObjectStat, Stored,
};

#[derive(Default)]
pub struct MemoryLake {
    /// Artifacts and objects by lake-relative path.
    artifacts: Mutex<BTreeMap<LakePath, ArtifactDetail>>,
    objects: Mutex<BTreeMap<LakePath, Vec<u8>>>,
}

impl MemoryLake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an artifact as a script would have written it.
    pub fn insert(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        detail: ArtifactDetail,
    ) -> Result<()> {
        let name = Name::parse("id", &detail.summary.id)?;
        let path = root.join(&kind.path_of(&name));
        self.artifacts
            .lock()
            .map_err(poisoned)?
            .insert(path, detail);
        Ok(())
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("memory lake lock poisoned")
}

#[async_trait]
impl Lake for MemoryLake {
    async fn list(&self, root: &LakePath, kind: ArtifactKind) -> Result<Vec<ArtifactSummary>> {
        let folder = root.join(&kind.folder());
        Ok(self
            .artifacts
            .lock()
            .map_err(poisoned)?
            .iter()
            .filter(|(path, _)| {
                path.strip_prefix(&folder)
                    .is_some_and(|rest| rest.segments().count() == 1)
            })
            .map(|(_, detail)| detail.summary.clone())
            .collect())
    }

    async fn describe(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
    ) -> Result<Option<ArtifactDetail>> {
        let path = root.join(&kind.path_of(name));
        Ok(self.artifacts.lock().map_err(poisoned)?.get(&path).cloned())
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
