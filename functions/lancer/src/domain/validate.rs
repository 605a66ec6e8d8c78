//! Request validation and name resolution. Pure functions: the lake and the scripts
//! registry are consulted by the callers, never here.

use std::collections::BTreeMap;

use super::error::Invalid;
use super::path::{LakePath, Name, printable};
use super::task::{Resources, TaskSpec};

type Result<T, E = Invalid> = std::result::Result<T, E>;

/// The most bytes of a task's `params` as JSON (64 KiB); more is refused as too large.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;
/// The most bytes of a JSON request body (1 MiB); a larger one is answered 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most attempts a task's `max_attempts` may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// Upper bounds of `resources`: far above any one machine, low enough that no backend's
/// arithmetic on them can overflow.
pub const MAX_CPUS: f64 = 1024.0;
/// The most GPUs a task may reserve.
pub const MAX_GPUS: f64 = 64.0;
/// The most memory a task may reserve, in MiB (16 TiB).
pub const MAX_MEMORY_MB: u64 = 16 << 20;
/// The most custom resources one task may name.
pub const MAX_CUSTOM_RESOURCES: usize = 16;
/// Ray's own resources, which `cpus`, `gpus` and `memory_mb` already name; a custom entry
/// of the same name would reserve them twice.
const RAY_BUILTIN_RESOURCES: &[&str] = &["CPU", "GPU", "memory", "object_store_memory"];
const MAX_SCRIPT_BYTES: usize = 1024;

/// The two kinds of Lance artifact in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A Lance dataset, under `datasets/`.
    Dataset,
    /// A model, under `models/`.
    Model,
}

impl ArtifactKind {
    /// The lake folder of this kind.
    pub fn folder(self) -> LakePath {
        LakePath::parse("folder", self.folder_name()).expect("a valid folder")
    }

    fn folder_name(self) -> &'static str {
        match self {
            ArtifactKind::Dataset => "datasets",
            ArtifactKind::Model => "models",
        }
    }

    /// Lake-relative path of a named artifact: `datasets/<name>.lance`.
    pub fn path_of(self, name: &Name) -> LakePath {
        self.folder().child_with_suffix(name, ".lance")
    }
}

/// Whether a lake path names a Lance dataset or model (`….lance`), which has versions.
pub fn is_artifact(path: &LakePath) -> bool {
    path.as_str().ends_with(".lance")
}

/// What a task's `input` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// No input: `input` is empty.
    None,
    /// A bare name: the dataset of that name, else the model of that name.
    Name(Name),
    /// A lake-relative path under `datasets/`, `models/` or `raw/`.
    Path(LakePath),
}

const INPUT_FOLDERS: [&str; 3] = ["datasets", "models", "raw"];

/// Splits a pinned version off an input: `mnist_clean@3` reads version 3.
pub fn split_version(input: &str) -> Result<(&str, Option<u64>)> {
    let Some((artifact, version)) = input.rsplit_once('@') else {
        return Ok((input, None));
    };
    match version.parse::<u64>() {
        Ok(version) if version > 0 => Ok((artifact, Some(version))),
        _ => Err(Invalid::rule(format!(
            "input '{}': the version after '@' must be a number from 1",
            printable(input)
        ))),
    }
}

/// What a task's `input` names, its `@N` version already split off: nothing, a bare name,
/// or a path under `datasets/`, `models/` or `raw/`.
pub fn parse_input(input: &str) -> Result<InputRef> {
    if input.is_empty() {
        return Ok(InputRef::None);
    }
    if !input.contains('/') {
        return Ok(InputRef::Name(Name::parse("input", input)?));
    }
    let path = LakePath::parse("input", input)?;
    let folder = path.segments().next().unwrap_or_default();
    if !INPUT_FOLDERS.contains(&folder) {
        return Err(Invalid::rule(format!(
            "input '{}' must be a dataset or model name, or a path under datasets/, models/ or raw/",
            printable(input)
        )));
    }
    Ok(InputRef::Path(path))
}

/// Resolves `output` to a lake-relative path. A bare name is a dataset;
/// `datasets/<name>` and `models/<name>` (with or without `.lance`) name the kind.
pub fn resolve_output(output: &str) -> Result<Option<LakePath>> {
    if output.is_empty() {
        return Ok(None);
    }
    let (kind, name) = match output.split_once('/') {
        None => (ArtifactKind::Dataset, output),
        Some(("datasets", name)) => (ArtifactKind::Dataset, name),
        Some(("models", name)) => (ArtifactKind::Model, name),
        Some(_) => {
            return Err(Invalid::rule(format!(
                "output '{}' must be a dataset name, or datasets/<name> or models/<name>",
                printable(output)
            )));
        }
    };
    let name = name.strip_suffix(".lance").unwrap_or(name);
    Ok(Some(kind.path_of(&Name::parse("output", name)?)))
}

/// Checks the fields of a spec that need nothing but the spec itself.
pub fn check_spec(spec: &TaskSpec) -> Result<()> {
    Name::parse("task name", &spec.name)?;
    if spec.script.is_empty()
        || spec.script.len() > MAX_SCRIPT_BYTES
        || spec.script.chars().any(char::is_control)
    {
        return Err(Invalid::rule(
            "script must be 1-1024 characters naming a registered script",
        ));
    }
    let params_bytes = serde_json::to_vec(&spec.params)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if params_bytes > MAX_PARAMS_BYTES {
        return Err(Invalid::TooLarge(format!(
            "params is {params_bytes} bytes; the limit is {MAX_PARAMS_BYTES}"
        )));
    }
    check_resources(&spec.resources)?;
    if spec.max_attempts == 0 || spec.max_attempts > MAX_ATTEMPTS {
        return Err(Invalid::rule(format!(
            "max_attempts must be between 1 and {MAX_ATTEMPTS}"
        )));
    }
    if let Some(key) = &spec.idempotency_key {
        check_idempotency_key(key)?;
    }
    Ok(())
}

fn check_resources(resources: &Resources) -> Result<()> {
    if !(resources.cpus.is_finite() && resources.cpus > 0.0 && resources.cpus <= MAX_CPUS) {
        return Err(Invalid::rule(format!(
            "resources.cpus must be more than 0 and at most {MAX_CPUS}"
        )));
    }
    if !(resources.gpus.is_finite() && resources.gpus >= 0.0 && resources.gpus <= MAX_GPUS) {
        return Err(Invalid::rule(format!(
            "resources.gpus must be between 0 and {MAX_GPUS}"
        )));
    }
    if resources.memory_mb > MAX_MEMORY_MB {
        return Err(Invalid::rule(format!(
            "resources.memory_mb must be at most {MAX_MEMORY_MB} (16 TiB)"
        )));
    }
    check_custom_resources(&resources.custom)
}

fn check_custom_resources(custom: &BTreeMap<String, f64>) -> Result<()> {
    if custom.len() > MAX_CUSTOM_RESOURCES {
        return Err(Invalid::rule(format!(
            "resources.custom names at most {MAX_CUSTOM_RESOURCES} resources"
        )));
    }
    for (name, amount) in custom {
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c));
        if !well_formed || RAY_BUILTIN_RESOURCES.contains(&name.as_str()) {
            return Err(Invalid::rule(format!(
                "resources.custom: '{}' is not a custom resource name (1-64 of A-Z a-z 0-9 _ - . : /, \
                 not CPU, GPU or memory)",
                printable(name)
            )));
        }
        if !(amount.is_finite() && *amount > 0.0 && *amount <= MAX_CPUS) {
            return Err(Invalid::rule(format!(
                "resources.custom.{name} must be more than 0 and at most {MAX_CPUS}"
            )));
        }
    }
    Ok(())
}

/// Checks an idempotency key: 1-255 printable ASCII characters, no space.
pub fn check_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Invalid::rule(
            "idempotency key must be 1-255 printable ASCII characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_beyond_their_bounds_are_refused() {
        let ok = Resources::default();
        assert!(check_resources(&ok).is_ok());
        for bad in [
            Resources {
                cpus: 0.0,
                ..ok.clone()
            },
            Resources {
                cpus: f64::NAN,
                ..ok.clone()
            },
            Resources {
                cpus: 1e9,
                ..ok.clone()
            },
            Resources {
                gpus: -1.0,
                ..ok.clone()
            },
            Resources {
                gpus: 1e6,
                ..ok.clone()
            },
            Resources {
                memory_mb: u64::MAX,
                ..ok.clone()
            },
        ] {
            assert!(check_resources(&bad).is_err(), "{bad:?}");
        }
        let too_many: BTreeMap<String, f64> = (0..=MAX_CUSTOM_RESOURCES)
            .map(|i| (format!("r{i}"), 1.0))
            .collect();
        let long_name = "r".repeat(65);
        for custom in [
            too_many,
            BTreeMap::from([("CPU".to_owned(), 1.0)]),
            BTreeMap::from([("GPU".to_owned(), 1.0)]),
            BTreeMap::from([(String::new(), 1.0)]),
            BTreeMap::from([(long_name, 1.0)]),
            BTreeMap::from([("serve\n".to_owned(), 1.0)]),
            BTreeMap::from([("serve".to_owned(), 0.0)]),
            BTreeMap::from([("serve".to_owned(), f64::INFINITY)]),
        ] {
            let bad = Resources {
                custom,
                ..ok.clone()
            };
            assert!(check_resources(&bad).is_err(), "{bad:?}");
        }
        let most = Resources {
            cpus: MAX_CPUS,
            gpus: MAX_GPUS,
            memory_mb: MAX_MEMORY_MB,
            custom: (0..MAX_CUSTOM_RESOURCES)
                .map(|i| (format!("node-group/{i}"), MAX_CPUS))
                .collect(),
        };
        assert!(check_resources(&most).is_ok());
        assert!(
            most.memory_mb.checked_mul(1 << 20).is_some(),
            "bytes fit in a u64"
        );
    }

    #[test]
    fn inputs_are_names_or_lake_paths() {
        assert_eq!(parse_input("").ok(), Some(InputRef::None));
        assert_eq!(
            parse_input("mnist_clean").ok(),
            Some(InputRef::Name(
                Name::parse("n", "mnist_clean").expect("name")
            ))
        );
        assert_eq!(
            parse_input("raw/mnist/").ok(),
            Some(InputRef::Path(
                LakePath::parse("p", "raw/mnist").expect("path")
            ))
        );
        assert!(parse_input("logs/x.log").is_err());
        assert_eq!(
            split_version("mnist_clean@3").ok(),
            Some(("mnist_clean", Some(3)))
        );
        assert_eq!(
            split_version("mnist_clean").ok(),
            Some(("mnist_clean", None))
        );
        for bad in ["x@0", "x@", "x@-1", "x@v2"] {
            assert!(split_version(bad).is_err(), "{bad}");
        }
        let (twice, _) = split_version("x@1@2").expect("the last @ splits");
        assert!(parse_input(twice).is_err(), "x@1 is no name");
        assert!(parse_input("raw/../tenants/x").is_err());
        assert!(parse_input("/data/raw").is_err());
        assert!(parse_input("datasets/%2e%2e/%2e%2e/acme/datasets/secret.lance").is_err());
    }

    #[test]
    fn outputs_resolve_to_datasets_or_models() {
        let resolve_output = |output| resolve_output(output).map(|p| p.map(|p| p.to_string()));
        assert_eq!(
            resolve_output("mnist_clean").ok(),
            Some(Some("datasets/mnist_clean.lance".into()))
        );
        assert_eq!(
            resolve_output("models/cnn").ok(),
            Some(Some("models/cnn.lance".into()))
        );
        assert_eq!(
            resolve_output("models/cnn.lance").ok(),
            Some(Some("models/cnn.lance".into()))
        );
        assert_eq!(resolve_output("").ok(), Some(None));
        for bad in [
            "../x",
            "raw/x",
            "models/../x",
            "models/",
            "s3://b/x",
            "Big",
            "models/%2e%2e",
        ] {
            assert!(resolve_output(bad).is_err(), "{bad}");
        }
    }
}
