//! Request validation and name resolution. Pure functions: the lake and the scripts
//! folder are consulted by the callers, never here.

use std::sync::LazyLock;

use regex::Regex;

use super::task::TaskSpec;
use crate::error::{Error, Result};

pub const MAX_PARAMS_BYTES: usize = 64 * 1024;
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const MAX_ATTEMPTS: u32 = 10;
const MAX_PATH_BYTES: usize = 1024;

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9][a-z0-9_.-]{0,127}$").expect("the name pattern is a valid regex")
});

/// Dataset, model, task and tenant names share one shape: `^[a-z0-9][a-z0-9_.-]{0,127}$`.
pub fn is_valid_name(name: &str) -> bool {
    NAME.is_match(name)
}

pub fn check_name(what: &str, name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} '{}' is not a valid name: use 1-128 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
            printable(name)
        )))
    }
}

/// Shortens and de-controls user input before it is echoed back in an error message.
fn printable(text: &str) -> String {
    text.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A relative path made of plain components: no `..`, `.`, empty segment, absolute root,
/// backslash or URL scheme, so that joining it under a root can never leave that root.
pub fn check_relative_path(what: &str, path: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(Error::invalid(format!(
            "{what} '{}' {why}",
            printable(path)
        )))
    };
    if path.is_empty() {
        return refuse("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return refuse("is too long");
    }
    if path.starts_with('/') {
        return refuse("must be relative, not absolute");
    }
    if path.contains(':') {
        return refuse("must be a path inside the lake, not a URL");
    }
    if path.contains('\\') || path.chars().any(char::is_control) {
        return refuse("contains a forbidden character");
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return refuse("must not contain '.', '..' or empty segments");
    }
    Ok(())
}

/// The two kinds of Lance artifact in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    Dataset,
    Model,
}

impl ArtifactKind {
    /// The lake folder of this kind.
    pub fn folder(self) -> &'static str {
        match self {
            ArtifactKind::Dataset => "datasets",
            ArtifactKind::Model => "models",
        }
    }

    /// Lake-relative path of a named artifact: `datasets/<name>.lance`.
    pub fn path_of(self, name: &str) -> String {
        format!("{}/{name}.lance", self.folder())
    }
}

/// What a task's `input` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    None,
    /// A bare name: the dataset of that name, else the model of that name.
    Name(String),
    /// A lake-relative path under `datasets/`, `models/` or `raw/`.
    Path(String),
}

const INPUT_FOLDERS: [&str; 3] = ["datasets/", "models/", "raw/"];

pub fn parse_input(input: &str) -> Result<InputRef> {
    if input.is_empty() {
        return Ok(InputRef::None);
    }
    if !input.contains('/') {
        check_name("input", input)?;
        return Ok(InputRef::Name(input.to_owned()));
    }
    check_relative_path("input", input)?;
    if !INPUT_FOLDERS.iter().any(|folder| input.starts_with(folder)) {
        return Err(Error::invalid(format!(
            "input '{}' must be a dataset or model name, or a path under datasets/, models/ or raw/",
            printable(input)
        )));
    }
    Ok(InputRef::Path(input.to_owned()))
}

/// Resolves `output` to a lake-relative path. A bare name is a dataset;
/// `datasets/<name>` and `models/<name>` (with or without `.lance`) name the kind.
pub fn resolve_output(output: &str) -> Result<String> {
    if output.is_empty() {
        return Ok(String::new());
    }
    let (kind, name) = match output.split_once('/') {
        None => (ArtifactKind::Dataset, output),
        Some(("datasets", name)) => (ArtifactKind::Dataset, name),
        Some(("models", name)) => (ArtifactKind::Model, name),
        Some(_) => {
            return Err(Error::invalid(format!(
                "output '{}' must be a dataset name, or datasets/<name> or models/<name>",
                printable(output)
            )));
        }
    };
    let name = name.strip_suffix(".lance").unwrap_or(name);
    check_name("output", name)?;
    Ok(kind.path_of(name))
}

/// Checks the fields of a spec that need nothing but the spec itself.
pub fn check_spec(spec: &TaskSpec) -> Result<()> {
    check_name("task name", &spec.name)?;
    check_relative_path("script", &spec.script)?;
    let params_bytes = serde_json::to_vec(&spec.params)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if params_bytes > MAX_PARAMS_BYTES {
        return Err(Error::PayloadTooLarge(format!(
            "params is {params_bytes} bytes; the limit is {MAX_PARAMS_BYTES}"
        )));
    }
    let resources = &spec.resources;
    if !(resources.cpus.is_finite() && resources.cpus > 0.0) {
        return Err(Error::invalid("resources.cpus must be a positive number"));
    }
    if !(resources.gpus.is_finite() && resources.gpus >= 0.0) {
        return Err(Error::invalid("resources.gpus must be zero or more"));
    }
    if spec.max_attempts == 0 || spec.max_attempts > MAX_ATTEMPTS {
        return Err(Error::invalid(format!(
            "max_attempts must be between 1 and {MAX_ATTEMPTS}"
        )));
    }
    if let Some(key) = &spec.idempotency_key {
        check_idempotency_key(key)?;
    }
    Ok(())
}

pub fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid(
            "idempotency key must be 1-255 printable ASCII characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for good in ["mnist_clean", "a", "0", "v1.2-rc_3", &"a".repeat(128)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "Mnist",
            "_x",
            ".hidden",
            "a/b",
            "..",
            "a b",
            &"a".repeat(129),
            "ä",
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn relative_paths_cannot_escape_their_root() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "s3://bucket/x",
            "file:///etc",
            "a//b",
            "./a",
            "a\\..\\b",
            "a\nb",
            "",
        ] {
            assert!(check_relative_path("p", bad).is_err(), "{bad:?}");
        }
        for good in ["a", "raw/mnist/", "mnist/train.py", "a.b/c-d_e"] {
            assert!(check_relative_path("p", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn inputs_are_names_or_lake_paths() {
        assert_eq!(parse_input("").ok(), Some(InputRef::None));
        assert_eq!(
            parse_input("mnist_clean").ok(),
            Some(InputRef::Name("mnist_clean".into()))
        );
        assert_eq!(
            parse_input("raw/mnist/").ok(),
            Some(InputRef::Path("raw/mnist/".into()))
        );
        assert!(parse_input("logs/x.log").is_err());
        assert!(parse_input("raw/../tenants/x").is_err());
        assert!(parse_input("/data/raw").is_err());
    }

    #[test]
    fn outputs_resolve_to_datasets_or_models() {
        assert_eq!(
            resolve_output("mnist_clean").ok().as_deref(),
            Some("datasets/mnist_clean.lance")
        );
        assert_eq!(
            resolve_output("models/cnn").ok().as_deref(),
            Some("models/cnn.lance")
        );
        assert_eq!(
            resolve_output("models/cnn.lance").ok().as_deref(),
            Some("models/cnn.lance")
        );
        assert_eq!(resolve_output("").ok().as_deref(), Some(""));
        for bad in ["../x", "raw/x", "models/../x", "models/", "s3://b/x", "Big"] {
            assert!(resolve_output(bad).is_err(), "{bad}");
        }
    }
}
