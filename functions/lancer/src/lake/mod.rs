//! Lake adapters: Lance on any object store (local disk, S3), and an in-memory fake.

use std::fmt;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use url::Url;

use crate::domain::path::printable;
use crate::error::{Error, Result};
use crate::ports::{Field, ModelInfo, SIZES_OF_BINARY};

pub mod confine;
pub mod lance;
pub mod memory;

/// A writer asked to tag a version its path does not hold: the runner's write-back and the
/// lake disagree, which is the platform's fault, never the tenant's.
#[derive(Debug, thiserror::Error)]
#[error("no version {version} at {path} to tag")]
pub struct NothingToTag {
    path: String,
    version: u64,
}

impl NothingToTag {
    /// The error for tagging `version` of the dataset at `path`.
    pub fn new(path: &crate::domain::path::LakePath, version: u64) -> Self {
        Self {
            path: path.to_string(),
            version,
        }
    }
}

/// Where a lake lives: a local folder, or an object-store URL (`s3://bucket/prefix`). The
/// one place that decides which a configured root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeRoot {
    /// A folder on this machine (a plain path, or a `file://` URL).
    Local(PathBuf),
    /// An object store by URL: `s3://bucket/prefix`, or any scheme `object_store` opens.
    Url(Url),
}

impl LakeRoot {
    /// `s3://...` and other URLs are object stores; `file://x` and plain paths are local.
    /// A one-letter scheme is a Windows drive, not a URL.
    pub fn parse(text: &str) -> Self {
        match Url::parse(text) {
            Ok(url) if url.scheme().len() > 1 && url.scheme() != "file" => Self::Url(url),
            _ => Self::Local(PathBuf::from(text.strip_prefix("file://").unwrap_or(text))),
        }
    }

    /// The root as scripts and Lance see it: an absolute path, or the URL without a
    /// trailing slash.
    pub fn uri(&self) -> String {
        match self {
            Self::Local(path) => absolute(path),
            Self::Url(url) => url.as_str().trim_end_matches('/').to_owned(),
        }
    }
}

/// The SHA-256 (hex) of the parts in order; `None` when there are none.
pub fn digest_of<T: AsRef<[u8]>>(parts: impl IntoIterator<Item = T>) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut any = false;
    for part in parts {
        hasher.update(part.as_ref());
        any = true;
    }
    any.then(|| crate::domain::cache::hex(&hasher.finalize()))
}

/// A local path made absolute against the current directory, as a child process that
/// runs elsewhere must be given it; unchanged if that cannot be done.
pub fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

impl fmt::Display for LakeRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Url(url) => f.write_str(url.as_str().trim_end_matches('/')),
        }
    }
}

/// An artifact's fields as the API describes them.
pub(crate) fn fields_of(schema: &arrow_schema::Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .map(|field| Field {
            name: field.name().clone(),
            data_type: field.data_type().to_string(),
            nullable: field.is_nullable(),
            image: field
                .metadata()
                .get(IMAGE_METADATA)
                .and_then(|shape| image_shape(shape)),
        })
        .collect()
}

/// The Arrow field metadata key that marks a column of pictures, with their shape.
pub const IMAGE_METADATA: &str = "lancer:image";

/// `28x28` or `32x32x3` as dimensions: two or three, each 1 to 4096, channels 1, 3 or 4.
fn image_shape(text: &str) -> Option<Vec<u32>> {
    let dims: Vec<u32> = text
        .split('x')
        .map(|d| d.trim().parse().ok().filter(|d| (1..=4096).contains(d)))
        .collect::<Option<_>>()?;
    match dims.as_slice() {
        [_, _] => Some(dims),
        [_, _, channels] if [1, 3, 4].contains(channels) => Some(dims),
        _ => None,
    }
}

/// The indices of `columns` in `schema`, in their order (all when `None`); a name the
/// schema lacks is the caller's mistake.
pub(crate) fn projection(
    schema: &arrow_schema::Schema,
    columns: Option<&[String]>,
) -> Result<Vec<usize>> {
    let Some(columns) = columns else {
        return Ok((0..schema.fields().len()).collect());
    };
    columns
        .iter()
        .map(|column| {
            schema
                .index_of(column)
                .map_err(|_| Error::invalid(format!("there is no column '{}'", printable(column))))
        })
        .collect()
}

/// Whether a column holds binary values, which a page of rows shows as their sizes.
pub(crate) fn is_binary(data_type: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType;
    matches!(
        data_type,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// The batch with each top-level binary column replaced by its values' sizes, read from
/// the column's offsets: the values themselves are dropped. The other columns are copied
/// then, since a reader may decode them as views into the same buffer as the values,
/// which would keep every dropped value alive.
pub(crate) fn binary_as_sizes(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow_array::{ArrayRef, Int64Array};
    use arrow_schema::DataType;
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| is_binary(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let sizes = |len: &dyn Fn(usize) -> i64| -> ArrayRef {
            let values = (0..column.len()).map(|row| (!column.is_null(row)).then(|| len(row)));
            std::sync::Arc::new(values.collect::<Int64Array>())
        };
        let sized = match column.data_type() {
            DataType::Binary => Some(sizes(&|row| {
                column.as_binary::<i32>().value_length(row) as i64
            })),
            DataType::LargeBinary => {
                Some(sizes(&|row| column.as_binary::<i64>().value_length(row)))
            }
            DataType::BinaryView => Some(sizes(&|row| {
                column.as_binary_view().value(row).len() as i64
            })),
            _ => None,
        };
        match sized {
            Some(sized) => {
                let metadata = [(SIZES_OF_BINARY.to_owned(), "size".to_owned())].into();
                fields.push(
                    arrow_schema::Field::new(field.name(), DataType::Int64, true)
                        .with_metadata(metadata),
                );
                columns.push(sized);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(
                    arrow_select::concat::concat(&[column.as_ref()]).map_err(Error::internal)?,
                );
            }
        }
    }
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(Error::internal)
}

/// The error for a version an artifact does not have.
pub(crate) fn no_such_version(version: u64) -> Error {
    Error::invalid(format!("there is no version {version}"))
}

/// A model's metrics, params and created_at: its newest row's (a model appends one row
/// per saved version), with JSON text read as JSON.
pub(crate) fn model_info_of(rows: &RecordBatch) -> ModelInfo {
    let last_row = rows.num_rows().checked_sub(1);
    let text = |column: &str| last_row.and_then(|row| string_at(rows, column, row));
    let json = |column: &str| {
        text(column).map(|raw| serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw)))
    };
    ModelInfo {
        metrics: json("metrics"),
        params: json("params"),
        created_at: text("created_at"),
    }
}

/// A row of a Utf8 or LargeUtf8 column as text.
fn string_at(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let array = batch.column_by_name(column)?;
    if !array.is_valid(row) {
        return None;
    }
    if let Some(strings) = array.as_string_opt::<i32>() {
        return Some(strings.value(row).to_owned());
    }
    array
        .as_string_opt::<i64>()
        .map(|strings| strings.value(row).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_column_names_its_shape_in_its_metadata() {
        assert_eq!(image_shape("28x28"), Some(vec![28, 28]));
        assert_eq!(image_shape("32x32x3"), Some(vec![32, 32, 3]));
        for bad in [
            "28", "28x", "0x28", "28x28x2", "5000x1", "1x2x3x4", "axb", "",
        ] {
            assert_eq!(image_shape(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_are_object_stores_and_paths_and_drives_are_local() {
        assert!(matches!(
            LakeRoot::parse("s3://bucket/lake"),
            LakeRoot::Url(_)
        ));
        assert!(matches!(LakeRoot::parse("gs://bucket"), LakeRoot::Url(_)));
        for local in ["./lance_storage", "/data/lake", "C:\\lake", "relative/lake"] {
            assert!(
                matches!(LakeRoot::parse(local), LakeRoot::Local(_)),
                "{local}"
            );
        }
        assert_eq!(
            LakeRoot::parse("file:///data/lake"),
            LakeRoot::Local("/data/lake".into())
        );
        assert_eq!(
            LakeRoot::parse("s3://bucket/lake/").uri(),
            "s3://bucket/lake"
        );
    }
}
