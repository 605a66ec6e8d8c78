//! The Lance lake: datasets and models are Lance datasets under one object-store root,
//! logs and raw uploads are plain objects beside them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::confine::{self, Reach};
use super::{
    LakeRoot, NothingToTag, binary_as_sizes, fields_of, is_binary, model_info_of, no_such_version,
    projection,
};
use crate::config::ConfigError;
use ::lance::Dataset;
use ::lance::dataset::builder::DatasetBuilder;
use arrow_schema::Schema as ArrowSchema;
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tracing::warn;

use crate::domain::path::{LakePath, Name};
use crate::domain::task::TaskId;
use crate::domain::validate::ArtifactKind;
use crate::error::{Error, Result};
use crate::ports::{
    ArtifactDetail, ArtifactSummary, ByteStream, Lake, LogChunk, ModelInfo, ObjectStat, RowSlice,
    RowsQuery, Stored, Version,
};
use crate::ports::{WRITER_TAG_PREFIX, writer_tag};

/// The metadata cache of a dataset opened to read a page of rows.
const ROWS_METADATA_CACHE_BYTES: usize = 4 << 20;

/// Columns of a model row that `describe` reports (weights stay unread).
const MODEL_INFO_COLUMNS: [&str; 3] = ["metrics", "params", "created_at"];

/// The `Lake` over Lance: datasets, models and objects under one root on local disk, S3 or
/// another object store.
pub struct LanceLake {
    /// The root as scripts and Lance see it: an absolute local path or an `s3://` URL.
    root: String,
    store: Arc<dyn ObjectStore>,
    base: Path,
    storage_options: BTreeMap<String, String>,
}

impl LanceLake {
    /// Opens the lake at a local path (created if missing) or an object-store URL.
    pub fn open(
        root: &str,
        storage_options: BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::at(&LakeRoot::parse(root), storage_options)
    }

    /// Opens the lake at `root`; what can go wrong is the configuration's.
    pub fn at(
        root: &LakeRoot,
        storage_options: BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let unusable = |err: &dyn std::fmt::Display| ConfigError(format!("lake '{root}': {err}"));
        let (store, base): (Arc<dyn ObjectStore>, Path) = match root {
            LakeRoot::Url(url) if url.scheme() == "s3" => {
                // The environment first (AWS_* keys, region, endpoint, web identity), then
                // the configured options on top, as Lance and pylance resolve them too.
                let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
                for (key, value) in &storage_options {
                    let key: AmazonS3ConfigKey = key.parse().map_err(|err| {
                        ConfigError(format!("LANCER_STORAGE_OPTIONS key '{key}': {err}"))
                    })?;
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|err| unusable(&err))?;
                (Arc::new(store), Path::from(url.path()))
            }
            LakeRoot::Url(url) => {
                let (store, base) = object_store::parse_url_opts(url, storage_options.iter())
                    .map_err(|err| unusable(&err))?;
                (Arc::from(store), base)
            }
            LakeRoot::Local(local) => {
                std::fs::create_dir_all(local).map_err(|err| unusable(&err))?;
                let absolute = std::fs::canonicalize(local).map_err(|err| unusable(&err))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&absolute)
                    .map_err(|err| unusable(&err))?;
                (Arc::new(store), Path::default())
            }
        };
        let root = match root {
            LakeRoot::Local(local) => std::fs::canonicalize(local)
                .map_err(|err| unusable(&err))?
                .to_string_lossy()
                .into_owned(),
            LakeRoot::Url(_) => root.uri(),
        };
        Ok(Self {
            root,
            store,
            base,
            storage_options,
        })
    }

    /// The object key of a lake path. Its segments need no escaping, so the key and the
    /// URI `uri_of` gives name the same object.
    fn object_path(&self, path: &LakePath) -> Path {
        self.base
            .parts()
            .chain(path.segments().map(object_store::path::PathPart::from))
            .collect()
    }

    /// On a local lake, refuses a path a planted link could redirect (`confine`).
    fn confine(&self, relative: &LakePath, reach: Reach) -> Result<()> {
        match self.local_root() {
            Some(root) => confine::check(&root, relative, reach),
            None => Ok(()),
        }
    }

    async fn open_dataset(&self, relative: &LakePath) -> Result<Option<Dataset>> {
        self.confine(relative, Reach::Tree)?;
        self.load_dataset(relative).await
    }

    /// Opens a dataset whose folder was already checked.
    async fn load_dataset(&self, relative: &LakePath) -> Result<Option<Dataset>> {
        self.load_with(DatasetBuilder::from_uri(self.uri_of(relative)))
            .await
    }

    async fn load_with(&self, builder: DatasetBuilder) -> Result<Option<Dataset>> {
        let storage_options: HashMap<String, String> =
            self.storage_options.clone().into_iter().collect();
        let opened = builder.with_storage_options(storage_options).load().await;
        match opened {
            Ok(dataset) => Ok(Some(dataset)),
            // No dataset there, or (Lance's own test) a missing object under it.
            Err(::lance::Error::DatasetNotFound { .. }) => Ok(None),
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn summarize(
        &self,
        name: &Name,
        relative: &LakePath,
        dataset: &Dataset,
    ) -> Result<ArtifactSummary> {
        let schema = ArrowSchema::from(dataset.schema());
        let num_rows = dataset.count_rows(None).await? as u64;
        Ok(ArtifactSummary {
            id: name.to_string(),
            path: self.uri_of(relative),
            schema: schema
                .fields()
                .iter()
                .map(|field| (field.name().clone(), field.data_type().to_string()))
                .collect(),
            num_rows,
        })
    }

    async fn size_of(&self, relative: &LakePath) -> Result<u64> {
        self.confine(relative, Reach::Tree)?;
        let prefix = self.object_path(relative);
        self.store
            .list(Some(&prefix))
            .try_fold(0u64, |total, meta| async move { Ok(total + meta.size) })
            .await
            .map_err(Error::internal)
    }

    /// The newest row's metrics, params and created_at (rows are appended per version).
    async fn model_info(&self, dataset: &Dataset) -> Result<ModelInfo> {
        let present: Vec<&str> = MODEL_INFO_COLUMNS
            .into_iter()
            .filter(|column| dataset.schema().field(column).is_some())
            .collect();
        if present.is_empty() {
            return Ok(ModelInfo {
                metrics: None,
                params: None,
                created_at: None,
            });
        }
        let mut scan = dataset.scan();
        scan.project(&present)?;
        Ok(model_info_of(&scan.try_into_batch().await?))
    }
}

#[async_trait]
impl Lake for LanceLake {
    async fn list(&self, root: &LakePath, kind: ArtifactKind) -> Result<Vec<ArtifactSummary>> {
        let folder = self.object_path(&root.join(&kind.folder()));
        let listing = self.store.list_with_delimiter(Some(&folder)).await?;
        let mut names: Vec<Name> = listing
            .common_prefixes
            .iter()
            .filter_map(|path| path.filename()?.strip_suffix(".lance"))
            .filter_map(|name| Name::parse("name", name).ok())
            .collect();
        names.sort();
        let mut summaries = Vec::with_capacity(names.len());
        for name in names {
            let relative = root.join(&kind.path_of(&name));
            if let Err(err) = self.confine(&relative, Reach::Tree) {
                warn!(%relative, %err, "listing skips an artifact that holds a link");
                continue;
            }
            // A folder that is not (or no longer) a Lance dataset is skipped, not an error.
            if let Some(dataset) = self.load_dataset(&relative).await? {
                summaries.push(self.summarize(&name, &relative, &dataset).await?);
            }
        }
        Ok(summaries)
    }

    async fn describe(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
    ) -> Result<Option<ArtifactDetail>> {
        let relative = root.join(&kind.path_of(name));
        let Some(dataset) = self.open_dataset(&relative).await? else {
            return Ok(None);
        };
        let summary = self.summarize(name, &relative, &dataset).await?;
        let fields = fields_of(&ArrowSchema::from(dataset.schema()));
        // A tag that names no task id (a script may tag its own dataset) names no writer.
        let writers: HashMap<u64, TaskId> = dataset
            .tags()
            .list()
            .await?
            .into_iter()
            .filter_map(|(tag, contents)| {
                let task = tag.strip_prefix(WRITER_TAG_PREFIX)?;
                Some((contents.version, TaskId::parse(task).ok()?))
            })
            .collect();
        let versions = dataset
            .versions()
            .await?
            .into_iter()
            .map(|version| Version {
                version: version.version,
                timestamp: version.timestamp,
                task_id: writers.get(&version.version).cloned(),
                ..Version::default()
            })
            .collect();
        let model = match kind {
            ArtifactKind::Model => Some(self.model_info(&dataset).await?),
            ArtifactKind::Dataset => None,
        };
        Ok(Some(ArtifactDetail {
            summary,
            fields,
            version: dataset.version().version,
            versions,
            size_bytes: self.size_of(&relative).await?,
            model,
        }))
    }

    async fn rows(
        &self,
        root: &LakePath,
        kind: ArtifactKind,
        name: &Name,
        query: &RowsQuery,
    ) -> Result<Option<RowSlice>> {
        let relative = root.join(&kind.path_of(name));
        self.confine(&relative, Reach::Tree)?;
        // Lance's metadata cache keeps what it decodes of a file's pages, a big binary
        // cell included, for the life of the dataset: a page's read keeps it small.
        let builder = DatasetBuilder::from_uri(self.uri_of(&relative))
            .with_metadata_cache_size_bytes(ROWS_METADATA_CACHE_BYTES);
        let Some(latest) = self.load_with(builder).await? else {
            return Ok(None);
        };
        let dataset = match query.version {
            Some(version) if version != latest.version().version => {
                if !latest
                    .versions()
                    .await?
                    .iter()
                    .any(|v| v.version == version)
                {
                    return Err(no_such_version(version));
                }
                latest.checkout_version(version).await?
            }
            _ => latest,
        };
        let schema = ArrowSchema::from(dataset.schema());
        let picked = projection(&schema, query.columns.as_deref())?;
        let columns: Vec<&str> = picked
            .iter()
            .map(|&i| schema.field(i).name().as_str())
            .collect();
        let total_rows = dataset.count_rows(None).await? as u64;
        // A binary cell may be any size, and a page shows only its size: such a page is
        // read a row at a time, each row's values dropped for their sizes before the next
        // is read, so the page never holds more than one row of cells. (Lance reads a
        // multi-row scan's ranges ahead whatever its batch size.)
        let with_binary = picked
            .iter()
            .any(|&i| is_binary(schema.field(i).data_type()));
        let batches = if with_binary {
            let in_page = query.limit.min(total_rows.saturating_sub(query.offset));
            let mut batches = Vec::new();
            for row in query.offset..query.offset + in_page {
                batches.extend(read_rows(&dataset, &columns, row, 1).await?);
            }
            batches
        } else {
            read_rows(&dataset, &columns, query.offset, query.limit).await?
        };
        Ok(Some(RowSlice {
            version: dataset.version().version,
            total_rows,
            fields: fields_of(&schema.project(&picked)?),
            batches,
        }))
    }

    async fn latest_version(&self, path: &LakePath) -> Result<Option<u64>> {
        Ok(self
            .open_dataset(path)
            .await?
            .map(|dataset| dataset.version().version))
    }

    async fn tag_writer(&self, path: &LakePath, version: u64, task: &TaskId) -> Result<()> {
        let dataset = self
            .open_dataset(path)
            .await?
            .ok_or_else(|| Error::internal(NothingToTag::new(path, version)))?;
        match dataset.tags().create(&writer_tag(task), version).await {
            // A runner retrying its write-back tags the same version again.
            Ok(()) | Err(::lance::Error::RefConflict { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(&self, root: &LakePath, kind: ArtifactKind, name: &Name) -> Result<bool> {
        let relative = root.join(&kind.path_of(name));
        if let Some(local_root) = self.local_root() {
            // On disk the folder goes as a whole: `remove_dir_all` removes the links in it
            // and follows none, where listing through the store would delete their targets.
            confine::check(&local_root, &relative, Reach::Path)?;
            let dir = local_root.join(relative.as_str());
            return match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(true),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(err) => Err(Error::internal(err)),
            };
        }
        let folder = self.object_path(&relative);
        let locations = self
            .store
            .list(Some(&folder))
            .map_ok(|meta| meta.location)
            .boxed();
        let deleted: Vec<Path> = self.store.delete_stream(locations).try_collect().await?;
        Ok(!deleted.is_empty())
    }

    async fn put(&self, path: &LakePath, bytes: Vec<u8>) -> Result<()> {
        self.confine(path, Reach::Path)?;
        self.store
            .put(&self.object_path(path), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(Error::internal)
    }

    async fn put_stream(
        &self,
        path: &LakePath,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<Stored> {
        self.confine(path, Reach::Path)?;
        let upload = self.store.put_multipart(&self.object_path(path)).await?;
        // Parts of 5 MiB, two in flight at most: memory stays flat whatever the size.
        let mut writer = WriteMultipart::new(upload);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    let _ = writer.abort().await;
                    return Err(Error::invalid(format!("the upload broke off: {err}")));
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                let _ = writer.abort().await;
                return Ok(Stored::OverLimit);
            }
            writer.wait_for_capacity(2).await?;
            writer.put(chunk);
        }
        writer.finish().await?;
        Ok(Stored::Whole(size))
    }

    async fn usage(&self, folder: &LakePath) -> Result<u64> {
        self.size_of(folder).await
    }

    async fn read_from(
        &self,
        path: &LakePath,
        offset: u64,
        limit: u64,
    ) -> Result<Option<LogChunk>> {
        self.confine(path, Reach::Tree)?;
        let location = self.object_path(path);
        let size = match self.store.head(&location).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(Error::internal(err)),
        };
        let range = LogChunk::range(offset, limit, size);
        let next_offset = range.end;
        let bytes = if range.is_empty() {
            Vec::new()
        } else {
            self.store.get_range(&location, range).await?.to_vec()
        };
        Ok(Some(LogChunk {
            bytes,
            next_offset,
            size,
        }))
    }

    async fn stat(&self, path: &LakePath) -> Result<Option<ObjectStat>> {
        self.confine(path, Reach::Tree)?;
        match self.store.head(&self.object_path(path)).await {
            Ok(meta) => Ok(Some(ObjectStat {
                size: meta.size,
                version: object_version(&meta),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(Error::internal(err)),
        }
    }

    async fn fingerprint(&self, path: &LakePath) -> Result<Option<String>> {
        self.confine(path, Reach::Tree)?;
        let location = self.object_path(path);
        let mut objects: Vec<object_store::ObjectMeta> = match self.store.head(&location).await {
            Ok(meta) => vec![meta],
            Err(object_store::Error::NotFound { .. }) => self
                .store
                .list(Some(&location))
                .try_collect()
                .await
                .map_err(Error::internal)?,
            Err(err) => return Err(Error::internal(err)),
        };
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        let described = objects.iter().map(|meta| {
            let version = object_version(meta);
            format!("{} {} {version}\n", meta.location, meta.size)
        });
        Ok(super::digest_of(described))
    }

    fn uri_of(&self, path: &LakePath) -> String {
        if path.is_root() {
            self.root.clone()
        } else {
            format!("{}/{path}", self.root)
        }
    }

    fn storage_options(&self) -> BTreeMap<String, String> {
        self.storage_options.clone()
    }
}

/// `limit` rows of `columns` from `offset` (both bounded by the use case, so they fit an
/// i64), binary values given as their sizes.
async fn read_rows(
    dataset: &Dataset,
    columns: &[&str],
    offset: u64,
    limit: u64,
) -> Result<Vec<arrow_array::RecordBatch>> {
    let mut scan = dataset.scan();
    scan.project(columns)?;
    scan.limit(Some(limit as i64), Some(offset as i64))?;
    scan.batch_readahead(1).fragment_readahead(1);
    scan.try_into_stream()
        .await?
        .map(|batch| binary_as_sizes(&batch?))
        .try_collect()
        .await
}

impl LanceLake {
    fn local_root(&self) -> Option<std::path::PathBuf> {
        self.root
            .starts_with('/')
            .then(|| std::path::PathBuf::from(&self.root))
    }
}

/// An object's version: its ETag where the store keeps one; local files have none, so
/// size and modification time stand in.
fn object_version(meta: &object_store::ObjectMeta) -> String {
    meta.e_tag
        .clone()
        .or(meta.version.clone())
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                meta.size,
                meta.last_modified.timestamp_nanos_opt().unwrap_or_default()
            )
        })
}
