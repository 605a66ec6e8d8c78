//! The script registry: the operator lists, in `lancer-scripts.json` in the scripts folder,
//! the scripts tenants may submit. A script is found by its exact entry, never by looking
//! around the folder, so helper modules, hidden folders and the repository's own tooling
//! beside the scripts are never runnable. `ScriptFolder` is the `Scripts` port over such a
//! folder, `MemoryScripts` its fake.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use crate::domain::path::printable;
use crate::domain::pipeline::PipelineSpec;
use crate::error::{Error, Result};
use crate::ports::Scripts;

/// The registry's file name inside the scripts folder.
pub const REGISTRY_FILE: &str = "lancer-scripts.json";

/// How a registered script is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// A `*.py` file with `run(input_path, output_path, params)`.
    Python,
    /// Any executable following the same contract through flags.
    Executable,
}

/// A registered script, found and checked: what a runner starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The entry as the registry and the task name it.
    pub name: String,
    /// The file, canonical, inside the scripts folder.
    pub path: PathBuf,
    /// Whether it runs under the Python interpreter or as an executable.
    pub kind: ScriptKind,
}

/// What reading the scripts folder can fail with. A task naming a script the registry does
/// not hold, or holds but cannot run, is the client's 400; the rest are the operator's: a
/// `ConfigError` at start-up, an internal error (logged whole) on a request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The task names a script the registry does not list: the client's 400.
    #[error("script '{}' is not registered: the operator lists the runnable scripts in {REGISTRY_FILE}", printable(.0))]
    NotRegistered(String),
    /// The registry lists the script but its entry names nothing runnable: the client's
    /// 400, with the reason in the server log only.
    #[error("script '{}' is registered but cannot be run; the server log says why", printable(.0))]
    Unrunnable(String),
    /// The scripts folder itself cannot be found or resolved.
    #[error("scripts folder {}", .path.display())]
    Folder {
        /// The folder as configured.
        path: PathBuf,
        /// Why it could not be resolved.
        #[source]
        source: std::io::Error,
    },
    /// A file in the folder (the registry, a script, a pipeline file) cannot be read.
    #[error("{}", .path.display())]
    Unreadable {
        /// The file that could not be read.
        path: PathBuf,
        /// What reading it failed with.
        #[source]
        source: std::io::Error,
    },
    /// The registry or a pipeline file is not the JSON it should be.
    #[error("{}", .path.display())]
    Malformed {
        /// The file that could not be parsed.
        path: PathBuf,
        /// What parsing it failed with.
        #[source]
        source: serde_json::Error,
    },
    /// A registry entry that names no runnable file in the folder: not a plain relative
    /// path, missing, outside the folder, not a regular file, or neither Python nor
    /// executable.
    #[error("{REGISTRY_FILE} entry '{entry}' {why}")]
    BadEntry {
        /// The entry as the registry spells it.
        entry: String,
        /// What is wrong with it, worded to follow the entry ("is not a file").
        why: &'static str,
        /// The filesystem's error, where one was the reason.
        #[source]
        source: Option<std::io::Error>,
    },
}

impl From<RegistryError> for Error {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::NotRegistered(_) | RegistryError::Unrunnable(_) => {
                Error::invalid(err.to_string())
            }
            other => Error::internal(other),
        }
    }
}

/// `lancer-scripts.json`: `{"scripts": ["mnist/bin/mnist-clean", "jobs/train.py"]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    scripts: Vec<String>,
}

/// The scripts an operator registered, under one canonical scripts folder.
#[derive(Debug, Clone)]
pub struct ScriptRegistry {
    root: PathBuf,
    entries: Vec<String>,
}

impl ScriptRegistry {
    /// Reads the registry of the scripts folder `root`. A folder without one registers
    /// nothing: every submission is refused until the operator writes it.
    pub fn load(root: &Path) -> Result<Self, RegistryError> {
        let root = std::fs::canonicalize(root).map_err(|source| RegistryError::Folder {
            path: root.to_owned(),
            source,
        })?;
        let path = root.join(REGISTRY_FILE);
        let manifest = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes)
                .map_err(|source| RegistryError::Malformed { path, source })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(source) => return Err(RegistryError::Unreadable { path, source }),
        };
        Ok(Self {
            root,
            entries: manifest.scripts,
        })
    }

    /// Whether the registry lists no script, so that every submission is refused.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks every entry, so an operator's mistake stops the server at start-up.
    pub fn check_all(&self) -> Result<(), RegistryError> {
        self.entries
            .iter()
            .try_for_each(|entry| self.locate(entry).map(|_| ()))
    }

    /// The registered script a task names. Anything else, however it is spelled, is
    /// refused with the same message, which says nothing of the server's folders.
    pub fn resolve(&self, script: &str) -> Result<Script, RegistryError> {
        if !self.entries.iter().any(|entry| entry == script) {
            return Err(RegistryError::NotRegistered(script.to_owned()));
        }
        self.locate(script).map_err(|err| {
            tracing::error!(err = %crate::error::chain(&err), script, "a registered script cannot be run");
            RegistryError::Unrunnable(script.to_owned())
        })
    }

    /// The file of an entry: a plain relative path, inside the folder after symlinks, a
    /// regular file, and Python or executable.
    fn locate(&self, entry: &str) -> Result<Script, RegistryError> {
        let bad = |why: &'static str, source: Option<std::io::Error>| RegistryError::BadEntry {
            entry: entry.to_owned(),
            why,
            source,
        };
        if entry.is_empty() || entry.starts_with('/') || entry.contains(['\\', '\0']) {
            return Err(bad("must be a relative path", None));
        }
        if entry
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
        {
            return Err(bad("must not hold '.', '..', hidden or empty parts", None));
        }
        let path = std::fs::canonicalize(self.root.join(entry))
            .map_err(|err| bad("cannot be found", Some(err)))?;
        if !path.starts_with(&self.root) {
            return Err(bad("resolves outside the scripts folder", None));
        }
        let meta = std::fs::metadata(&path).map_err(|err| bad("cannot be read", Some(err)))?;
        if !meta.is_file() {
            return Err(bad("is not a file", None));
        }
        let kind = if path.extension().is_some_and(|ext| ext == "py") {
            ScriptKind::Python
        } else if meta.permissions().mode() & 0o111 != 0 {
            ScriptKind::Executable
        } else {
            return Err(bad("is neither a .py file nor executable", None));
        };
        Ok(Script {
            name: entry.to_owned(),
            path,
            kind,
        })
    }
}

/// The `Scripts` port over a scripts folder, read again on each call: an operator's edit
/// to the registry or a script takes effect on the next submission.
#[derive(Debug, Clone)]
pub struct ScriptFolder {
    root: PathBuf,
}

impl ScriptFolder {
    /// The port over the scripts folder `root`; nothing is read until a call.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn resolve(&self, script: &str) -> Result<Script, RegistryError> {
        ScriptRegistry::load(&self.root)?.resolve(script)
    }
}

#[async_trait]
impl Scripts for ScriptFolder {
    async fn check(&self, script: &str) -> Result<()> {
        Ok(self.resolve(script).map(|_| ())?)
    }

    async fn content(&self, script: &str) -> Result<Vec<u8>> {
        let script = self.resolve(script)?;
        tokio::fs::read(&script.path).await.map_err(|source| {
            Error::from(RegistryError::Unreadable {
                path: script.path,
                source,
            })
        })
    }

    async fn pipeline(&self, file: &str) -> Result<PipelineSpec> {
        let path = self.root.join(file);
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(source) => return Err(Error::from(RegistryError::Unreadable { path, source })),
        };
        serde_json::from_slice(&text)
            .map_err(|source| Error::from(RegistryError::Malformed { path, source }))
    }
}

/// The `Scripts` fake: scripts and pipeline files held in memory, every one registered.
#[derive(Debug, Clone, Default)]
pub struct MemoryScripts {
    scripts: BTreeMap<String, Vec<u8>>,
    pipelines: BTreeMap<String, PipelineSpec>,
}

impl MemoryScripts {
    /// Registers `name` holding `content`.
    pub fn with_script(mut self, name: &str, content: &[u8]) -> Self {
        self.scripts.insert(name.to_owned(), content.to_vec());
        self
    }

    /// Keeps `spec` as the pipeline file `file`.
    pub fn with_pipeline(mut self, file: &str, spec: PipelineSpec) -> Self {
        self.pipelines.insert(file.to_owned(), spec);
        self
    }
}

#[async_trait]
impl Scripts for MemoryScripts {
    async fn check(&self, script: &str) -> Result<()> {
        self.content(script).await.map(|_| ())
    }

    async fn content(&self, script: &str) -> Result<Vec<u8>> {
        self.scripts
            .get(script)
            .cloned()
            .ok_or_else(|| RegistryError::NotRegistered(script.to_owned()).into())
    }

    async fn pipeline(&self, file: &str) -> Result<PipelineSpec> {
        self.pipelines.get(file).cloned().ok_or_else(|| {
            Error::from(RegistryError::Unreadable {
                path: file.into(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_with(registry: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for (name, body) in [
            ("job.py", "def run(i, o, p): return {}"),
            ("lib.py", "open('ran', 'w')"),
            ("data.txt", "x"),
        ] {
            std::fs::write(root.path().join(name), body).expect("write");
        }
        std::fs::create_dir(root.path().join(".git")).expect("mkdir");
        std::fs::write(root.path().join(".git/hook.py"), "").expect("write");
        std::fs::write(root.path().join(REGISTRY_FILE), registry).expect("write");
        root
    }

    #[test]
    fn only_registered_scripts_resolve() {
        let root = folder_with(r#"{"scripts": ["job.py"]}"#);
        let registry = ScriptRegistry::load(root.path()).expect("registry");
        assert_eq!(
            registry.resolve("job.py").map(|s| s.kind).ok(),
            Some(ScriptKind::Python)
        );
        for unregistered in [
            "lib.py",
            "./job.py",
            ".git/hook.py",
            "../job.py",
            "data.txt",
        ] {
            let err = registry.resolve(unregistered).expect_err(unregistered);
            assert!(err.to_string().contains("is not registered"), "{err}");
            assert!(
                !err.to_string()
                    .contains(root.path().to_str().expect("utf-8"))
            );
        }
        assert!(!root.path().join("ran").exists(), "lib.py never ran");
    }

    #[test]
    fn a_folder_without_a_registry_runs_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("job.py"), "").expect("write");
        let registry = ScriptRegistry::load(root.path()).expect("registry");
        assert!(registry.is_empty());
        assert!(registry.resolve("job.py").is_err());
    }

    #[test]
    fn bad_entries_are_found_at_start_up() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("evil.py"), "").expect("write");
        for entries in [
            r#"["missing.py"]"#,
            r#"["data.txt"]"#,
            r#"[".git/hook.py"]"#,
            r#"["../x.py"]"#,
            r#"["link.py"]"#,
        ] {
            let root = folder_with(&format!(r#"{{"scripts": {entries}}}"#));
            std::os::unix::fs::symlink(outside.path().join("evil.py"), root.path().join("link.py"))
                .expect("symlink");
            let registry = ScriptRegistry::load(root.path()).expect("registry");
            assert!(registry.check_all().is_err(), "{entries}");
            let only = entries.trim_matches(['[', ']', '"']);
            assert!(registry.resolve(only).is_err(), "{entries}");
        }
    }
}
