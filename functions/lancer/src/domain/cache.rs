//! Cache keys: what a task's result depends on, part by part, so two tasks with the same
//! key would write the same output, and two keys that differ say why.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The parts of a task's cache key, and their digest. Every task carries one, so a cache
/// miss is explained by comparing two tasks' parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CacheKey {
    pub script: String,
    /// SHA-256 of the registered script file's content.
    pub script_sha256: String,
    /// SHA-256 of the params as JSON with sorted keys (the params are in the task's spec).
    pub params_sha256: String,
    /// The lake path the task reads, and which version of it: a Lance version, or for
    /// other inputs (`raw/` files) a digest of their objects' names, sizes and ETags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_version: Option<String>,
    /// The lake path it writes: a cached result is that path's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// SHA-256 over all the parts above.
    pub digest: String,
}

impl CacheKey {
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
            digest: String::new(),
        };
        // serde_json's maps are sorted, so equal parts serialize to equal bytes.
        let parts = serde_json::to_vec(&key).unwrap_or_default();
        key.digest = hex(&Sha256::digest(&parts));
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
        assert_eq!(base.digest.len(), 64);
        assert_eq!(
            base.script_sha256,
            "3bfc269594ef649228e9a74bab00f042efc91d5acc6fbee31a382e80d42388fe"
        );
    }
}
