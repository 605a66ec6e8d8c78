//! `mnist-clean`: IDX files in, a Lance dataset out, streamed in record batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::idx::{ImageReader, PIXELS, SIDE, read_labels};

/// `mnist-clean`'s params, with their defaults.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanOptions {
    /// Pixels as [0, 1] floats, else 0-255.
    pub normalize: bool,
    /// `image` as 784 floats, else 28 lists of 28.
    pub flatten: bool,
    /// A deterministic split by this share of test rows instead of the files' own.
    pub test_ratio: Option<f64>,
    /// Rows per record batch written (4096).
    pub batch_rows: usize,
}

impl Default for CleanOptions {
    fn default() -> Self {
        Self {
            normalize: true,
            flatten: true,
            test_ratio: None,
            batch_rows: 4096,
        }
    }
}

/// What a cleaning run wrote: `mnist-clean`'s result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanReport {
    /// Rows written.
    pub total_records: u64,
    /// Rows in the train split.
    pub train: u64,
    /// Rows in the test split.
    pub test: u64,
    /// Images dropped for a label outside 0-9.
    pub dropped: u64,
}

/// One IDX image file with its labels, and the split its name gives it.
pub struct Part {
    /// The image file.
    pub images: PathBuf,
    /// The label file.
    pub labels: PathBuf,
    /// `train` for `train-*` files, `test` for `t10k-*`.
    pub split: &'static str,
}

/// Finds `train-*` and `t10k-*` image and label files (plain or `.gz`) in a folder.
pub fn find_parts(dir: &Path) -> Result<Vec<Part>> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the input folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    let find = |prefix: &str, kind: &str| {
        entries.iter().find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| name.starts_with(prefix) && name.contains(kind))
        })
    };
    let mut parts = Vec::new();
    for (prefix, split) in [("train", "train"), ("t10k", "test")] {
        match (find(prefix, "images"), find(prefix, "labels")) {
            (Some(images), Some(labels)) => parts.push(Part {
                images: images.clone(),
                labels: labels.clone(),
                split,
            }),
            (None, None) => {}
            _ => bail!(
                "{} has {prefix} images or labels but not both",
                dir.display()
            ),
        }
    }
    if parts.is_empty() {
        bail!(
            "no MNIST IDX files in {}: expected train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] (and t10k-*)",
            dir.display()
        );
    }
    Ok(parts)
}

/// The cleaned dataset's columns: `index`, `image` (784 floats, or 28 lists of 28),
/// `label` and `split`.
pub fn schema(options: &CleanOptions) -> SchemaRef {
    let pixel = Arc::new(Field::new("item", DataType::Float32, false));
    let image_type = if options.flatten {
        DataType::FixedSizeList(pixel, PIXELS as i32)
    } else {
        let row = Arc::new(Field::new(
            "item",
            DataType::FixedSizeList(pixel, SIDE as i32),
            false,
        ));
        DataType::FixedSizeList(row, SIDE as i32)
    };
    Arc::new(Schema::new(vec![
        Field::new("index", DataType::Int64, false),
        // Marks the column as pictures for lancer's console, whichever layout it has.
        Field::new("image", image_type, false)
            .with_metadata([("lancer:image".to_owned(), format!("{SIDE}x{SIDE}"))].into()),
        Field::new("label", DataType::Int64, false),
        Field::new("split", DataType::Utf8, false),
    ]))
}

/// Whether a row goes to test under `test_ratio`: a hash of its index, so reruns agree.
fn in_test(index: u64, ratio: f64) -> bool {
    let mut x = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x as f64 / u64::MAX as f64) < ratio
}

/// One chunk of images cleaned: the columns of its rows.
struct Rows {
    index: Vec<i64>,
    label: Vec<i64>,
    split: Vec<&'static str>,
    pixels: Vec<f32>,
}

impl Rows {
    /// The rows of `images` (`labels` theirs), numbered from `first`, in the file's
    /// `split` unless `options` give a test ratio: a label over 9 is dropped, the pixels
    /// scaled as `options` say, and each row counted in `report`.
    fn clean(
        images: &[u8],
        labels: &[u8],
        (first, split): (u64, &'static str),
        options: &CleanOptions,
        report: &mut CleanReport,
    ) -> Self {
        let n = labels.len();
        let scale = if options.normalize { 1.0 / 255.0 } else { 1.0 };
        let mut rows = Self {
            index: Vec::with_capacity(n),
            label: Vec::with_capacity(n),
            split: Vec::with_capacity(n),
            pixels: Vec::with_capacity(n * PIXELS),
        };
        for ((image, &value), row_index) in images.chunks_exact(PIXELS).zip(labels).zip(first..) {
            if value > 9 {
                report.dropped += 1;
                continue;
            }
            let row_split = match options.test_ratio {
                Some(ratio) if in_test(row_index, ratio) => "test",
                Some(_) => "train",
                None => split,
            };
            if row_split == "test" {
                report.test += 1
            } else {
                report.train += 1
            }
            report.total_records += 1;
            rows.index.push(row_index as i64);
            rows.label.push(i64::from(value));
            rows.split.push(row_split);
            // A plain extend vectorises; a builder's per-value append did not (perf: 12%).
            rows.pixels
                .extend(image.iter().map(|&byte| f32::from(byte) * scale));
        }
        rows
    }
}

/// Pulls batches from the IDX files one at a time, so memory stays at one batch.
pub struct CleanBatches {
    parts: std::vec::IntoIter<Part>,
    current: Option<(ImageReader, Vec<u8>, usize, &'static str)>,
    options: CleanOptions,
    schema: SchemaRef,
    next_index: u64,
    /// The counts so far, shared with whoever reads the batches.
    pub report: Arc<std::sync::Mutex<CleanReport>>,
    raw: Vec<u8>,
}

impl CleanBatches {
    /// Batches of `parts`, in order; an error for a test ratio outside [0, 1].
    pub fn new(parts: Vec<Part>, options: CleanOptions) -> Result<Self> {
        if let Some(ratio) = options.test_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            bail!("test_ratio must be between 0 and 1, not {ratio}");
        }
        Ok(Self {
            parts: parts.into_iter(),
            current: None,
            schema: schema(&options),
            options,
            next_index: 0,
            report: Default::default(),
            raw: Vec::new(),
        })
    }

    fn open_next_part(&mut self) -> Result<bool> {
        let Some(part) = self.parts.next() else {
            return Ok(false);
        };
        let reader = ImageReader::open(&part.images)?;
        let labels = read_labels(&part.labels)?;
        if labels.len() != reader.count {
            bail!(
                "{} holds {} images but {} holds {} labels",
                part.images.display(),
                reader.count,
                part.labels.display(),
                labels.len()
            );
        }
        self.current = Some((reader, labels, 0, part.split));
        Ok(true)
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.current.is_none() && !self.open_next_part()? {
                return Ok(None);
            }
            let Some((reader, labels, position, split)) = self.current.as_mut() else {
                continue;
            };
            self.raw.clear();
            let n = reader.read_chunk(self.options.batch_rows, &mut self.raw)?;
            if n == 0 {
                self.current = None;
                continue;
            }
            let mut report = self
                .report
                .lock()
                .map_err(|_| anyhow::anyhow!("report lock poisoned"))?;
            let rows = Rows::clean(
                &self.raw,
                &labels[*position..*position + n],
                (self.next_index, split),
                &self.options,
                &mut report,
            );
            drop(report);
            self.next_index += n as u64;
            *position += n;
            if !rows.index.is_empty() {
                return Ok(Some(self.batch(rows)?));
            }
        }
    }

    /// The record batch of `rows`.
    fn batch(&self, rows: Rows) -> Result<RecordBatch> {
        let image = self.image_array(rows.pixels)?;
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(Int64Array::from(rows.index)),
                image,
                Arc::new(Int64Array::from(rows.label)),
                Arc::new(StringArray::from(rows.split)),
            ],
        )?)
    }

    fn image_array(&self, pixels: Vec<f32>) -> Result<ArrayRef> {
        // The vector becomes the array's buffer without a copy.
        let values = Arc::new(arrow_array::Float32Array::from(pixels));
        let pixel = Arc::new(Field::new("item", DataType::Float32, false));
        if self.options.flatten {
            return Ok(Arc::new(arrow_array::FixedSizeListArray::try_new(
                pixel,
                PIXELS as i32,
                values,
                None,
            )?));
        }
        let rows =
            arrow_array::FixedSizeListArray::try_new(pixel.clone(), SIDE as i32, values, None)?;
        let row_field = Arc::new(Field::new(
            "item",
            DataType::FixedSizeList(pixel, SIDE as i32),
            false,
        ));
        Ok(Arc::new(arrow_array::FixedSizeListArray::try_new(
            row_field,
            SIDE as i32,
            Arc::new(rows),
            None,
        )?))
    }
}

impl Iterator for CleanBatches {
    type Item = std::result::Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_batch() {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => None,
            Err(err) => {
                // A broken file ends the stream: reading on would repeat the error.
                self.current = None;
                self.parts = Vec::new().into_iter();
                Some(Err(ArrowError::ExternalError(err.into())))
            }
        }
    }
}

impl arrow_array::RecordBatchReader for CleanBatches {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Batches cleaned ahead on a thread of their own.
///
/// Inflating gzip and converting pixels took a third of a 70,000-row clean (perf), and
/// Lance's encoder waited for them; here both run beside the writer on the other core. The
/// channel holds [`IN_FLIGHT`] batches, so memory stays at a few batches.
pub struct Background {
    batches: Receiver<std::result::Result<RecordBatch, ArrowError>>,
    worker: Option<JoinHandle<()>>,
    schema: SchemaRef,
}

/// Batches cleaned ahead of the writer.
const IN_FLIGHT: usize = 2;

impl CleanBatches {
    /// The same batches, cleaned ahead on a thread of their own.
    pub fn in_background(self) -> Result<Background> {
        let schema = self.schema.clone();
        let (sender, batches) = sync_channel(IN_FLIGHT);
        let worker = std::thread::Builder::new()
            .name("mnist-clean-read".into())
            .spawn(move || {
                for batch in self {
                    // The writer has gone (it failed): stop reading.
                    if sender.send(batch).is_err() {
                        return;
                    }
                }
            })
            .context("starting the reading thread")?;
        Ok(Background {
            batches,
            worker: Some(worker),
            schema,
        })
    }
}

impl Iterator for Background {
    type Item = std::result::Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Ok(batch) = self.batches.recv() {
            return Some(batch);
        }
        // The sender is gone: the reader either finished or panicked, and a panic must not
        // pass for the end of the data.
        let worker = self.worker.take()?;
        match worker.join() {
            Ok(()) => None,
            Err(_) => Some(Err(ArrowError::ExternalError(
                "the reading thread panicked".into(),
            ))),
        }
    }
}

impl arrow_array::RecordBatchReader for Background {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::CleanOptions;
    use crate::contract::parse_params;

    fn parse(params: serde_json::Value) -> anyhow::Result<CleanOptions> {
        parse_params(params.as_object().expect("an object"))
    }

    #[test]
    fn the_params_default_as_documented_and_refuse_what_they_lack() {
        let defaults = CleanOptions {
            normalize: true,
            flatten: true,
            test_ratio: None,
            batch_rows: 4096,
        };
        assert_eq!(parse(json!({})).expect("no params"), defaults);
        assert_eq!(CleanOptions::default(), defaults);
        // As pipeline.json, the READMEs and the tests give them.
        let given = parse(json!({"normalize": true, "flatten": true})).expect("given");
        assert_eq!(given, defaults);
        let all =
            json!({"normalize": false, "flatten": false, "test_ratio": 0.2, "batch_rows": 10});
        assert_eq!(parse(all).expect("all").test_ratio, Some(0.2));
        let err = parse(json!({"normalise": false}))
            .expect_err("a typo")
            .to_string();
        assert!(err.contains("unknown field `normalise`"), "{err}");
        let err = parse(json!({"flatten": "yes"}))
            .expect_err("not a bool")
            .to_string();
        assert!(err.starts_with("param flatten:"), "{err}");
    }
}
