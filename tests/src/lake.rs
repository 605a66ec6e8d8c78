//! The Lake conformance suite, and real Lance datasets to run it on.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use crate::task_store::task_id;
use arrow_array::{BinaryArray, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema};
use lancer::domain::path::{LakePath, Name};
use lancer::domain::validate::ArtifactKind;
use lancer::ports::Lake;
use serde_json::json;

/// A lake under test, how to put artifacts into it, and what keeps it alive.
pub struct LakeFixture {
    pub lake: Arc<dyn Lake>,
    pub seed: Box<dyn Seeder>,
    pub keep: Box<dyn Any + Send>,
}

/// Writes artifacts the way a task's script would.
#[async_trait::async_trait]
pub trait Seeder: Send + Sync {
    /// A dataset of `rows` rows with columns index (int64), label (int64), split (string).
    async fn dataset(&self, prefix: &str, name: &str, rows: usize);
    /// A model with one row per `accuracies` entry, newest last.
    async fn model(&self, prefix: &str, name: &str, accuracies: &[f64]);
}

/// A tenant folder as the suite spells it: `""` or `tenants/acme/`.
fn root(prefix: &str) -> LakePath {
    if prefix.is_empty() {
        LakePath::root()
    } else {
        LakePath::parse("root", prefix).expect("a tenant folder")
    }
}

fn name(text: &str) -> Name {
    Name::parse("name", text).expect("a name")
}

fn path(text: &str) -> LakePath {
    LakePath::parse("path", text).expect("a lake path")
}

/// The lake path of an artifact in a tenant folder.
fn artifact(prefix: &str, kind: ArtifactKind, id: &str) -> LakePath {
    root(prefix).join(&kind.path_of(&name(id)))
}

pub fn dataset_batch(rows: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("index", DataType::Int64, false),
        Field::new("label", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
    ]));
    let index: Vec<i64> = (0..rows as i64).collect();
    let label: Vec<i64> = index.iter().map(|i| i % 10).collect();
    let split: Vec<&str> = index
        .iter()
        .map(|i| if i % 7 == 0 { "test" } else { "train" })
        .collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(index)),
            Arc::new(Int64Array::from(label)),
            Arc::new(StringArray::from(split)),
        ],
    )
    .expect("a valid batch")
}

fn model_batch(accuracy: f64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("weights", DataType::Binary, false),
        Field::new("metrics", DataType::Utf8, false),
        Field::new("params", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
    ]));
    let metrics = json!({"accuracy": accuracy}).to_string();
    let params = json!({"epochs": 3}).to_string();
    let created_at = chrono::Utc::now().to_rfc3339();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(BinaryArray::from_vec(vec![&[1u8, 2, 3, 4][..]])),
            Arc::new(StringArray::from(vec![metrics])),
            Arc::new(StringArray::from(vec![params])),
            Arc::new(StringArray::from(vec![created_at])),
        ],
    )
    .expect("a valid batch")
}

/// Writes (or appends to) a real Lance dataset at `uri`.
pub async fn write_lance(uri: &str, batch: RecordBatch, storage_options: &HashMap<String, String>) {
    use lance::dataset::{WriteMode, WriteParams};
    use lance::io::ObjectStoreParams;
    let schema = batch.schema();
    let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
    let store_params = ObjectStoreParams {
        storage_options_accessor: Some(Arc::new(
            lance::io::StorageOptionsAccessor::with_static_options(storage_options.clone()),
        )),
        ..Default::default()
    };
    let params = WriteParams {
        mode: WriteMode::Append,
        store_params: Some(store_params),
        ..Default::default()
    };
    lance::Dataset::write(reader, uri, Some(params))
        .await
        .expect("write a Lance dataset");
}

/// Seeds a LanceLake through the lake's own URIs.
pub struct LanceSeeder {
    pub lake: Arc<dyn Lake>,
}

#[async_trait::async_trait]
impl Seeder for LanceSeeder {
    async fn dataset(&self, prefix: &str, name: &str, rows: usize) {
        let uri = self
            .lake
            .uri_of(&artifact(prefix, ArtifactKind::Dataset, name));
        let options = self.lake.storage_options().into_iter().collect();
        write_lance(&uri, dataset_batch(rows), &options).await;
    }

    async fn model(&self, prefix: &str, name: &str, accuracies: &[f64]) {
        let uri = self
            .lake
            .uri_of(&artifact(prefix, ArtifactKind::Model, name));
        let options = self.lake.storage_options().into_iter().collect();
        for accuracy in accuracies {
            write_lance(&uri, model_batch(*accuracy), &options).await;
        }
    }
}

/// Seeds a MemoryLake with the rows the Lance seeder writes, version by version.
pub struct MemorySeeder {
    pub lake: Arc<lancer::lake::memory::MemoryLake>,
}

#[async_trait::async_trait]
impl Seeder for MemorySeeder {
    async fn dataset(&self, prefix: &str, name: &str, rows: usize) {
        let path = artifact(prefix, ArtifactKind::Dataset, name);
        self.lake
            .append(&path, dataset_batch(rows))
            .expect("append");
    }

    async fn model(&self, prefix: &str, name: &str, accuracies: &[f64]) {
        let path = artifact(prefix, ArtifactKind::Model, name);
        for accuracy in accuracies {
            self.lake
                .append(&path, model_batch(*accuracy))
                .expect("append");
        }
    }
}

pub async fn a_written_dataset_is_listed_with_schema_and_row_count(f: LakeFixture) {
    f.seed.dataset("", "digits", 42).await;
    let listed = f
        .lake
        .list(&root(""), ArtifactKind::Dataset)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, "digits");
    assert_eq!(listed[0].num_rows, 42);
    assert_eq!(
        listed[0].schema.get("label").map(String::as_str),
        Some("Int64")
    );
    assert_eq!(
        listed[0].schema.get("split").map(String::as_str),
        Some("Utf8")
    );
    assert!(
        f.lake
            .list(&root(""), ArtifactKind::Model)
            .await
            .expect("list")
            .is_empty(),
        "a dataset is no model"
    );
}

pub async fn describe_gives_fields_versions_and_size(f: LakeFixture) {
    f.seed.dataset("", "digits", 10).await;
    let detail = f
        .lake
        .describe(&root(""), ArtifactKind::Dataset, &name("digits"))
        .await
        .expect("describe")
        .expect("exists");
    let names: Vec<&str> = detail.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["index", "label", "split"]);
    assert!(!detail.versions.is_empty());
    assert_eq!(
        detail.version,
        detail
            .versions
            .last()
            .map(|v| v.version)
            .unwrap_or_default()
    );
    assert!(detail.model.is_none());
    let listed = f
        .lake
        .list(&root(""), ArtifactKind::Dataset)
        .await
        .expect("list");
    assert_eq!(
        listed,
        std::slice::from_ref(&detail.summary),
        "describe and list agree"
    );
    assert!(
        detail
            .versions
            .iter()
            .all(|v| v.timestamp <= chrono::Utc::now())
    );
    // The size is the data's: more rows take more bytes.
    f.seed.dataset("", "more_digits", 5000).await;
    let larger = f
        .lake
        .describe(&root(""), ArtifactKind::Dataset, &name("more_digits"))
        .await
        .expect("describe")
        .expect("exists");
    assert!(
        detail.size_bytes > 0 && larger.size_bytes > detail.size_bytes,
        "10 rows take {} bytes, 5,000 take {}",
        detail.size_bytes,
        larger.size_bytes
    );
    assert_eq!(
        f.lake
            .describe(&root(""), ArtifactKind::Dataset, &name("absent"))
            .await
            .expect("describe"),
        None
    );
}

/// The labels, then the indices, of a page of rows read with `columns: label,index`.
fn labels_and_indices(slice: &lancer::ports::RowSlice) -> (Vec<i64>, Vec<i64>) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let column = |i: usize| -> Vec<i64> {
        slice
            .batches
            .iter()
            .flat_map(|b| b.column(i).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    };
    (column(0), column(1))
}

pub async fn rows_are_read_by_page_column_and_version(f: LakeFixture) {
    use lancer::error::Error;
    use lancer::ports::RowsQuery;
    f.seed.dataset("", "digits", 10).await;
    f.seed.dataset("", "digits", 5).await;
    let digits = name("digits");
    let rows = |query: RowsQuery| {
        let lake = f.lake.clone();
        let digits = digits.clone();
        async move {
            lake.rows(&root(""), ArtifactKind::Dataset, &digits, &query)
                .await
        }
    };
    let columns = Some(vec!["label".to_owned(), "index".to_owned()]);
    let page = RowsQuery {
        offset: 8,
        limit: 5,
        columns: columns.clone(),
        version: None,
    };
    let latest = rows(page.clone()).await.expect("rows").expect("exists");
    assert_eq!(latest.total_rows, 15);
    let names: Vec<&str> = latest.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["label", "index"],
        "the columns asked for, in that order"
    );
    assert_eq!(
        labels_and_indices(&latest),
        (vec![8, 9, 0, 1, 2], vec![8, 9, 0, 1, 2])
    );
    let first = f
        .lake
        .describe(&root(""), ArtifactKind::Dataset, &digits)
        .await
        .expect("describe")
        .expect("exists")
        .versions[0]
        .version;
    let old = rows(RowsQuery {
        version: Some(first),
        ..page.clone()
    })
    .await
    .expect("rows")
    .expect("exists");
    assert_eq!((old.version, old.total_rows), (first, 10));
    assert_eq!(
        labels_and_indices(&old),
        (vec![8, 9], vec![8, 9]),
        "the version as it was"
    );
    let past_the_end = rows(RowsQuery {
        offset: 40,
        ..page.clone()
    })
    .await
    .expect("rows");
    assert_eq!(
        past_the_end.map(|s| s.batches.iter().map(|b| b.num_rows()).sum::<usize>()),
        Some(0)
    );
    let unknown_column = RowsQuery {
        columns: Some(vec!["secret".into()]),
        ..page.clone()
    };
    assert!(matches!(
        rows(unknown_column).await,
        Err(Error::InvalidRequest(_))
    ));
    let unknown_version = RowsQuery {
        version: Some(first + 99),
        ..page.clone()
    };
    assert!(matches!(
        rows(unknown_version).await,
        Err(Error::InvalidRequest(_))
    ));
    let absent = f
        .lake
        .rows(&root(""), ArtifactKind::Dataset, &name("absent"), &page)
        .await
        .expect("rows");
    assert!(absent.is_none());
}

pub async fn a_version_tagged_with_its_writer_names_it_and_only_it(f: LakeFixture) {
    let path = artifact("", ArtifactKind::Model, "cnn");
    assert_eq!(f.lake.latest_version(&path).await.expect("latest"), None);
    f.seed.model("", "cnn", &[0.5, 0.9]).await;
    assert_eq!(f.lake.latest_version(&path).await.expect("latest"), Some(2));
    f.lake
        .tag_writer(&path, 2, &task_id("task-b"))
        .await
        .expect("tag");
    f.lake
        .tag_writer(&path, 2, &task_id("task-b"))
        .await
        .expect("tagging again is a no-op");
    f.lake
        .tag_writer(&path, 1, &task_id("task-a"))
        .await
        .expect("tag");
    let detail = f
        .lake
        .describe(&root(""), ArtifactKind::Model, &name("cnn"))
        .await
        .expect("describe")
        .expect("exists");
    let writers: Vec<(u64, Option<&str>)> = detail
        .versions
        .iter()
        .map(|v| (v.version, v.task_id.as_ref().map(|id| id.as_str())))
        .collect();
    assert_eq!(writers, [(1, Some("task-a")), (2, Some("task-b"))]);
}

pub async fn a_model_reports_its_newest_metrics(f: LakeFixture) {
    f.seed.model("", "cnn", &[0.91, 0.98]).await;
    let detail = f
        .lake
        .describe(&root(""), ArtifactKind::Model, &name("cnn"))
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(detail.summary.num_rows, 2);
    assert_eq!(detail.versions.len(), 2, "one version per saved row");
    assert!(
        detail.versions[0].version < detail.versions[1].version
            && detail.versions[0].timestamp <= detail.versions[1].timestamp,
        "versions count up in time: {:?}",
        detail.versions
    );
    assert_eq!(detail.version, detail.versions[1].version);
    let model = detail.model.expect("model info");
    assert_eq!(model.metrics, Some(json!({"accuracy": 0.98})));
    assert_eq!(model.params, Some(json!({"epochs": 3})));
    assert!(model.created_at.is_some());
}

pub async fn delete_removes_an_artifact_once(f: LakeFixture) {
    f.seed.dataset("", "doomed", 3).await;
    assert!(
        f.lake
            .delete(&root(""), ArtifactKind::Dataset, &name("doomed"))
            .await
            .expect("delete")
    );
    assert_eq!(
        f.lake
            .describe(&root(""), ArtifactKind::Dataset, &name("doomed"))
            .await
            .expect("describe"),
        None
    );
    assert!(
        f.lake
            .list(&root(""), ArtifactKind::Dataset)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        !f.lake
            .delete(&root(""), ArtifactKind::Dataset, &name("doomed"))
            .await
            .expect("delete again")
    );
}

pub async fn tenants_see_only_their_own_prefix(f: LakeFixture) {
    f.seed.dataset("tenants/acme/", "mine", 5).await;
    f.seed.dataset("tenants/globex/", "theirs", 6).await;
    let acme = f
        .lake
        .list(&root("tenants/acme/"), ArtifactKind::Dataset)
        .await
        .expect("list");
    assert_eq!(
        acme.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["mine"]
    );
    assert_eq!(
        f.lake
            .describe(
                &root("tenants/acme/"),
                ArtifactKind::Dataset,
                &name("theirs")
            )
            .await
            .expect("describe"),
        None
    );
    assert!(
        !f.lake
            .delete(
                &root("tenants/acme/"),
                ArtifactKind::Dataset,
                &name("theirs")
            )
            .await
            .expect("delete")
    );
    assert!(
        f.lake
            .describe(
                &root("tenants/globex/"),
                ArtifactKind::Dataset,
                &name("theirs")
            )
            .await
            .expect("d")
            .is_some()
    );
}

pub async fn objects_are_read_back_from_any_offset(f: LakeFixture) {
    assert_eq!(
        f.lake
            .read_from(&path("logs/none.log"), 0, 100)
            .await
            .expect("read"),
        None
    );
    f.lake
        .put(&path("logs/t.log"), b"hello ".to_vec())
        .await
        .expect("put");
    f.lake
        .put(&path("logs/t.log"), b"hello world\n".to_vec())
        .await
        .expect("put");
    let all = f
        .lake
        .read_from(&path("logs/t.log"), 0, 100)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(all.bytes, b"hello world\n");
    assert_eq!((all.next_offset, all.size), (12, 12));
    let tail = f
        .lake
        .read_from(&path("logs/t.log"), 6, 100)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(tail.bytes, b"world\n");
    let limited = f
        .lake
        .read_from(&path("logs/t.log"), 2, 4)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(limited.bytes, b"llo ");
    assert_eq!((limited.next_offset, limited.size), (6, 12));
    let past = f
        .lake
        .read_from(&path("logs/t.log"), 99, 100)
        .await
        .expect("read")
        .expect("exists");
    assert!(past.bytes.is_empty());
    assert_eq!(past.next_offset, 12);
}

pub async fn stat_gives_size_and_a_version_that_changes_with_the_content(f: LakeFixture) {
    assert_eq!(
        f.lake.stat(&path("raw/none.csv")).await.expect("stat"),
        None
    );
    f.lake
        .put(&path("raw/a.csv"), b"x,y\n".to_vec())
        .await
        .expect("put");
    let first = f
        .lake
        .stat(&path("raw/a.csv"))
        .await
        .expect("stat")
        .expect("exists");
    assert_eq!(first.size, 4);
    assert_eq!(
        f.lake.stat(&path("raw/a.csv")).await.expect("stat"),
        Some(first.clone()),
        "an unchanged object keeps its version"
    );
    // Local files version by modification time: let the clock move on.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    f.lake
        .put(&path("raw/a.csv"), b"x,y\n1,2\n".to_vec())
        .await
        .expect("put");
    let second = f
        .lake
        .stat(&path("raw/a.csv"))
        .await
        .expect("stat")
        .expect("exists");
    assert_eq!(second.size, 8);
    assert_ne!(second.version, first.version);
}

/// `parts` chunks of `size` bytes each, as an upload arrives.
fn chunks(parts: usize, size: usize) -> lancer::ports::ByteStream {
    let chunks = (0..parts).map(move |n| Ok(bytes::Bytes::from(vec![b'a' + (n % 26) as u8; size])));
    Box::pin(futures::stream::iter(chunks))
}

pub async fn a_streamed_object_is_stored_whole_or_not_at_all(f: LakeFixture) {
    use lancer::ports::Stored;
    let target = path("raw/big.bin");
    // Past a 5 MiB part, so multipart stores really write parts.
    let stored = f
        .lake
        .put_stream(&target, chunks(12, 1 << 20), 64 << 20)
        .await;
    assert_eq!(stored.expect("stored"), Stored::Whole(12 << 20));
    let head = f
        .lake
        .read_from(&target, 0, 2)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(head.bytes, b"aa");
    let tail = f
        .lake
        .read_from(&target, (12 << 20) - 1, 1)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(tail.bytes, b"l", "the last part is the twelfth chunk");
    let refused = f
        .lake
        .put_stream(&target, chunks(8, 1 << 20), 6 << 20)
        .await;
    assert_eq!(refused.expect("refused"), Stored::OverLimit);
    let kept = f
        .lake
        .stat(&target)
        .await
        .expect("stat")
        .expect("still there");
    assert_eq!(
        kept.size,
        12 << 20,
        "a refused upload leaves the old object as it was"
    );
    let fresh = path("raw/refused.bin");
    let refused = f.lake.put_stream(&fresh, chunks(3, 1 << 20), 1 << 20).await;
    assert_eq!(refused.expect("refused"), Stored::OverLimit);
    assert_eq!(
        f.lake.stat(&fresh).await.expect("stat"),
        None,
        "nothing half-written"
    );
    let usage = f.lake.usage(&path("raw")).await.expect("usage");
    assert_eq!(usage, 12 << 20);
}

#[macro_export]
macro_rules! lake_conformance {
    ($make:path) => {
        $crate::lake_conformance!(@tests $make;
            a_written_dataset_is_listed_with_schema_and_row_count,
            describe_gives_fields_versions_and_size,
            rows_are_read_by_page_column_and_version,
            a_model_reports_its_newest_metrics,
            a_version_tagged_with_its_writer_names_it_and_only_it,
            delete_removes_an_artifact_once,
            tenants_see_only_their_own_prefix,
            objects_are_read_back_from_any_offset,
            stat_gives_size_and_a_version_that_changes_with_the_content,
            a_streamed_object_is_stored_whole_or_not_at_all,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::lake::$name($make().await).await;
            }
        )*
    };
}
