//! Reading and writing the Lance datasets of the MNIST jobs.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type};
use arrow_array::{
    Array, BinaryArray, RecordBatch, RecordBatchIterator, RecordBatchReader, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{WriteMode, WriteParams};
use lance::io::{ObjectStoreParams, StorageOptionsAccessor};
use lance_file::writer::FileWriterOptions;

use crate::idx::PIXELS;

fn write_params(mode: WriteMode, storage_options: &HashMap<String, String>) -> WriteParams {
    WriteParams {
        mode,
        store_params: Some(ObjectStoreParams {
            storage_options_accessor: Some(Arc::new(StorageOptionsAccessor::with_static_options(
                storage_options.clone(),
            ))),
            ..Default::default()
        }),
        // Lance copies each batch's slices into its own buffer unless told to keep them.
        // The arrays here are Rust's own, not views through the C data interface, so
        // keeping them costs no memory the batch did not already hold (perf: the copy
        // and its page faults were a fifth of a 70,000-row clean).
        file_writer_options: Some(FileWriterOptions {
            keep_original_array: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Lance dataset at `uri`, its newest version.
pub async fn open(uri: &str, storage_options: &HashMap<String, String>) -> Result<Dataset> {
    DatasetBuilder::from_uri(uri)
        .with_storage_options(storage_options.clone())
        .load()
        .await
        .with_context(|| format!("opening the Lance dataset {uri}"))
}

/// Writes a new version of the dataset at `uri`, replacing its rows.
pub async fn overwrite(
    reader: impl RecordBatchReader + Send + 'static,
    uri: &str,
    storage_options: &HashMap<String, String>,
) -> Result<Dataset> {
    Dataset::write(
        reader,
        uri,
        Some(write_params(WriteMode::Overwrite, storage_options)),
    )
    .await
    .with_context(|| format!("writing the Lance dataset {uri}"))
}

/// Images and labels of one split, images flattened to 784 floats in [0, 1].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Split {
    /// Every image's 784 pixels, one image after another.
    pub images: Vec<f32>,
    /// Each image's digit.
    pub labels: Vec<u8>,
}

impl Split {
    /// The images in the split.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The train and test rows of a cleaned dataset (the newest version, or `version`), and
/// the version read.
pub async fn read_splits(
    uri: &str,
    version: Option<u64>,
    storage_options: &HashMap<String, String>,
) -> Result<(Split, Split, u64)> {
    let mut dataset = open(uri, storage_options).await?;
    if let Some(version) = version {
        dataset = dataset
            .checkout_version(version)
            .await
            .with_context(|| format!("dataset version {version}"))?;
    }
    let version = dataset.version().version;
    let mut scan = dataset.scan();
    scan.project(&["image", "label", "split"])
        .context("the dataset needs image, label and split columns")?;
    let mut stream = scan.try_into_stream().await?;
    let (mut train, mut test) = (Split::default(), Split::default());
    let mut max_pixel = 0f32;
    while let Some(batch) = stream.try_next().await? {
        let pixels = flat_pixels(
            batch
                .column_by_name("image")
                .context("no image column")?
                .as_ref(),
        )?;
        let labels = batch
            .column_by_name("label")
            .context("no label column")?
            .as_primitive_opt::<Int64Type>()
            .context("label must be int64")?;
        let splits = batch
            .column_by_name("split")
            .context("no split column")?
            .as_string_opt::<i32>()
            .context("split must be a string")?;
        for row in 0..batch.num_rows() {
            let target = if splits.value(row) == "test" {
                &mut test
            } else {
                &mut train
            };
            let image = &pixels[row * PIXELS..(row + 1) * PIXELS];
            max_pixel = image.iter().fold(max_pixel, |m, &p| m.max(p));
            target.images.extend_from_slice(image);
            let label = labels.value(row);
            if !(0..=9).contains(&label) {
                bail!("row {row} has label {label}, outside 0..9");
            }
            target.labels.push(label as u8);
        }
    }
    // A dataset cleaned with normalize=false holds 0-255; the network wants [0, 1].
    if max_pixel > 1.5 {
        for split in [&mut train, &mut test] {
            split.images.iter_mut().for_each(|p| *p /= 255.0);
        }
    }
    Ok((train, test, version))
}

/// The pixel values of an `image` column, flat or 28x28 nested, row after row.
fn flat_pixels(column: &dyn Array) -> Result<Vec<f32>> {
    let mut pixels = Vec::with_capacity(column.len() * PIXELS);
    push_pixels(column, &mut pixels)?;
    if pixels.len() != column.len() * PIXELS {
        bail!(
            "image rows must hold 784 pixels, not {}",
            pixels.len() / column.len().max(1)
        );
    }
    Ok(pixels)
}

fn push_pixels(array: &dyn Array, out: &mut Vec<f32>) -> Result<()> {
    match array.data_type() {
        DataType::Float32 => out.extend_from_slice(array.as_primitive::<Float32Type>().values()),
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            for row in 0..list.len() {
                push_pixels(list.value(row).as_ref(), out)?;
            }
        }
        other => {
            bail!("image must be fixed_size_list<float32, 784> or 28x28 nested lists, not {other}")
        }
    }
    Ok(())
}

/// One saved model version, as a row of `models/<name>.lance`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    /// The net's weights, as safetensors keyed by PyTorch's names (`Net::to_safetensors`).
    pub weights: Vec<u8>,
    /// The net they fit ([`crate::model::ARCHITECTURE`]).
    pub architecture: String,
    /// The final accuracy and loss, the row counts and every epoch's figures.
    pub metrics: serde_json::Value,
    /// The training params, the learning rate resolved.
    pub params: serde_json::Value,
    /// The dataset trained on and its version.
    pub dataset: serde_json::Value,
    /// When it was saved, RFC 3339.
    pub created_at: String,
}

fn model_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("weights", DataType::Binary, false),
        Field::new("architecture", DataType::Utf8, false),
        Field::new("metrics", DataType::Utf8, false),
        Field::new("params", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
    ]))
}

/// Appends a model version (creating the dataset on the first save).
pub async fn append_model(
    uri: &str,
    row: &ModelRow,
    storage_options: &HashMap<String, String>,
) -> Result<u64> {
    let schema = model_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(BinaryArray::from_vec(vec![row.weights.as_slice()])),
            Arc::new(StringArray::from(vec![row.architecture.clone()])),
            Arc::new(StringArray::from(vec![row.metrics.to_string()])),
            Arc::new(StringArray::from(vec![row.params.to_string()])),
            Arc::new(StringArray::from(vec![row.dataset.to_string()])),
            Arc::new(StringArray::from(vec![row.created_at.clone()])),
        ],
    )?;
    let reader = RecordBatchIterator::new(vec![Ok(batch)], schema);
    let dataset = Dataset::write(
        reader,
        uri,
        Some(write_params(WriteMode::Append, storage_options)),
    )
    .await
    .with_context(|| format!("saving the model to {uri}"))?;
    Ok(dataset.version().version)
}

/// The newest model row, or the newest as of Lance `version`.
pub async fn load_model(
    uri: &str,
    version: Option<u64>,
    storage_options: &HashMap<String, String>,
) -> Result<(ModelRow, u64)> {
    let mut dataset = open(uri, storage_options).await?;
    if let Some(version) = version {
        dataset = dataset
            .checkout_version(version)
            .await
            .with_context(|| format!("model version {version}"))?;
    }
    let version = dataset.version().version;
    let batch = dataset.scan().try_into_batch().await?;
    let last = batch
        .num_rows()
        .checked_sub(1)
        .with_context(|| format!("{uri} holds no model"))?;
    let text = |name: &str| -> Result<String> {
        let column = batch
            .column_by_name(name)
            .with_context(|| format!("model has no {name} column"))?;
        Ok(column
            .as_string_opt::<i32>()
            .with_context(|| format!("{name} must be a string"))?
            .value(last)
            .to_owned())
    };
    let json =
        |name: &str| -> Result<serde_json::Value> { Ok(serde_json::from_str(&text(name)?)?) };
    let weights = batch
        .column_by_name("weights")
        .context("model has no weights")?
        .as_binary_opt::<i32>()
        .context("weights must be binary")?
        .value(last)
        .to_vec();
    Ok((
        ModelRow {
            weights,
            architecture: text("architecture")?,
            metrics: json("metrics")?,
            params: json("params")?,
            dataset: json("dataset")?,
            created_at: text("created_at")?,
        },
        version,
    ))
}

/// Copies the objects directly under an `s3://bucket/prefix/` into `into`, streaming each to
/// disk; credentials, region and endpoint come from the environment, then `storage_options`.
/// Returns how many files it wrote.
pub async fn fetch_folder(
    uri: &str,
    storage_options: &HashMap<String, String>,
    into: &std::path::Path,
) -> Result<usize> {
    use futures::StreamExt;
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    use object_store::{ObjectStore, ObjectStoreExt};
    use tokio::io::AsyncWriteExt;

    let url = url::Url::parse(uri)?;
    let mut builder = AmazonS3Builder::from_env().with_url(uri);
    for (key, value) in storage_options {
        builder = builder.with_config(key.parse::<AmazonS3ConfigKey>()?, value);
    }
    let store = builder.build()?;
    let prefix = object_store::path::Path::from(url.path());
    let listing = store.list_with_delimiter(Some(&prefix)).await?;
    let mut fetched = 0;
    for object in listing.objects {
        let Some(name) = object.location.filename() else {
            continue;
        };
        let mut file = tokio::fs::File::create(into.join(name)).await?;
        let mut body = store.get(&object.location).await?.into_stream();
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        fetched += 1;
    }
    Ok(fetched)
}
