//! Cache keys: what a task's result depends on, part by part, so two tasks with the same
//! key would write the same output, and two keys that differ say why.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

/// A cache key's SHA-256, as lowercase hex: what a tenant's cache is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex(&Sha256::digest(bytes)))
    }

    /// The digest as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    /// A stored digest: 64 lowercase hex digits, as `of` writes them.
    fn try_from(text: String) -> Result<Self, String> {
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if text.len() == 64 && text.chars().all(hex) {
            Ok(Self(text))
        } else {
            Err("a cache digest is 64 lowercase hex digits".into())
        }
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parts of a task's cache key, and their digest. Every task carries one, so a cache
/// miss is explained by comparing two tasks' parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CacheKey {
    /// The registered script the task runs, by its name in the spec.
    pub script: String,
    /// SHA-256 of the registered script file's content.
    pub script_sha256: String,
    /// SHA-256 of the params as JSON with sorted keys (the params are in the task's spec).
    pub params_sha256: String,
    /// The lake path the task reads, and which version of it: a Lance version, or for
    /// other inputs (`raw/` files) a digest of their objects' names, sizes and ETags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Which version of `input` the task reads (see `input`); `None` when there is no
    /// input, or it has no version to name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_version: Option<String>,
    /// The lake path it writes: a cached result is that path's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// SHA-256 over all the parts above.
    #[schema(value_type = String)]
    pub digest: Digest,
}

impl CacheKey {
    /// The key of a task running `script` (whose file holds `script_content`) with
    /// `params`, reading `input` (a path and its version) and writing `output`.
    pub fn new(
        script: &str,
        script_content: &[u8],
        params: &Map<String, Value>,
        input: Option<(String, Option<String>)>,
        output: Option<String>,
    ) -> Self {
        let (input, input_version) = match input {
            Some((path, version)) => (Some(path), version),
            None => (None, None),
        };
        let mut key = Self {
            script: script.to_owned(),
            script_sha256: hex(&Sha256::digest(script_content)),
            params_sha256: hex(&Sha256::digest(
                serde_json::to_vec(params).unwrap_or_default(),
            )),
            input,
            input_version,
            output,
            // Hashed as the empty string, then replaced by the digest of the parts.
            digest: Digest(String::new()),
        };
        // serde_json's maps are sorted, so equal parts serialize to equal bytes.
        let parts = serde_json::to_vec(&key).unwrap_or_default();
        key.digest = Digest::of(&parts);
        key
    }
}

/// Bytes as lowercase hex, as SHA-256 digests are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(script: &[u8], params: Value, version: Option<u64>) -> CacheKey {
        let params = params.as_object().cloned().unwrap_or_default();
        let input = Some((
            "datasets/digits.lance".to_owned(),
            version.map(|v| v.to_string()),
        ));
        CacheKey::new(
            "train.py",
            script,
            &params,
            input,
            Some("models/cnn.lance".into()),
        )
    }

    #[test]
    fn the_digest_changes_with_each_part_and_only_with_them() {
        let base = key(b"v1", json!({"epochs": 2, "lr": 1.0}), Some(3));
        let same = key(b"v1", json!({"lr": 1.0, "epochs": 2}), Some(3));
        assert_eq!(base.digest, same.digest, "param order does not matter");
        for other in [
            key(b"v2", json!({"epochs": 2, "lr": 1.0}), Some(3)),
            key(b"v1", json!({"epochs": 3, "lr": 1.0}), Some(3)),
            key(b"v1", json!({"epochs": 2, "lr": 1.0}), Some(4)),
        ] {
            assert_ne!(base.digest, other.digest, "{other:?}");
        }
        assert_eq!(base.digest.as_str().len(), 64);
        assert_eq!(
            base.script_sha256,
            "3bfc269594ef649228e9a74bab00f042efc91d5acc6fbee31a382e80d42388fe"
        );
    }
}
