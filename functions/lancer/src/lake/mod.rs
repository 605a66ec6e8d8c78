//! Lake adapters: Lance on any object store (local disk, S3), and an in-memory fake.

use std::fmt;
use std::path::PathBuf;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use url::Url;

use crate::ports::{Field, ModelInfo};

pub mod lance;
pub mod memory;

/// Where a lake lives: a local folder, or an object-store URL (`s3://bucket/prefix`). The
/// one place that decides which a configured root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeRoot {
    Local(PathBuf),
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
        })
        .collect()
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
