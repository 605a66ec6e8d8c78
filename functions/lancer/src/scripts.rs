//! The script registry: the operator lists, in `lancer-scripts.json` in the scripts folder,
//! the scripts tenants may submit. A script is found by its exact entry, never by looking
//! around the folder, so helper modules, hidden folders and the repository's own tooling
//! beside the scripts are never runnable.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::path::printable;
use crate::error::{Error, Result};

/// The registry's file name inside the scripts folder.
pub const REGISTRY_FILE: &str = "lancer-scripts.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// A `*.py` file with `run(input_path, output_path, params)`.
    Python,
    /// Any executable following the same contract through flags.
    Executable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The entry as the registry and the task name it.
    pub name: String,
    /// The file, canonical, inside the scripts folder.
    pub path: PathBuf,
    pub kind: ScriptKind,
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
    pub fn load(root: &Path) -> Result<Self> {
        let root = std::fs::canonicalize(root)
            .map_err(|err| Error::internal(format!("scripts folder {}: {err}", root.display())))?;
        let manifest = match std::fs::read(root.join(REGISTRY_FILE)) {
            Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).map_err(|err| {
                Error::internal(format!("{}: {err}", root.join(REGISTRY_FILE).display()))
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(err) => return Err(Error::internal(format!("{REGISTRY_FILE}: {err}"))),
        };
        Ok(Self {
            root,
            entries: manifest.scripts,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks every entry, so an operator's mistake stops the server at start-up.
    pub fn check_all(&self) -> Result<()> {
        self.entries
            .iter()
            .try_for_each(|entry| self.locate(entry).map(|_| ()))
    }

    /// The registered script a task names. Anything else, however it is spelled, is
    /// refused with the same message, which says nothing of the server's folders.
    pub fn resolve(&self, script: &str) -> Result<Script> {
        if !self.entries.iter().any(|entry| entry == script) {
            return Err(Error::invalid(format!(
                "script '{}' is not registered: the operator lists the runnable scripts in {REGISTRY_FILE}",
                printable(script)
            )));
        }
        self.locate(script).map_err(|err| {
            tracing::error!(%err, script, "a registered script cannot be run");
            Error::invalid(format!(
                "script '{}' is registered but cannot be run; the server log says why",
                printable(script)
            ))
        })
    }

    /// The file of an entry: a plain relative path, inside the folder after symlinks, a
    /// regular file, and Python or executable.
    fn locate(&self, entry: &str) -> Result<Script> {
        let bad = |why: &str| Error::internal(format!("{REGISTRY_FILE} entry '{entry}' {why}"));
        if entry.is_empty() || entry.starts_with('/') || entry.contains(['\\', '\0']) {
            return Err(bad("must be a relative path"));
        }
        if entry
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
        {
            return Err(bad("must not hold '.', '..', hidden or empty parts"));
        }
        let path = std::fs::canonicalize(self.root.join(entry))
            .map_err(|err| bad(&format!("cannot be found: {err}")))?;
        if !path.starts_with(&self.root) {
            return Err(bad("resolves outside the scripts folder"));
        }
        let meta = std::fs::metadata(&path).map_err(|err| bad(&err.to_string()))?;
        if !meta.is_file() {
            return Err(bad("is not a file"));
        }
        let kind = if path.extension().is_some_and(|ext| ext == "py") {
            ScriptKind::Python
        } else if meta.permissions().mode() & 0o111 != 0 {
            ScriptKind::Executable
        } else {
            return Err(bad("is neither a .py file nor executable"));
        };
        Ok(Script {
            name: entry.to_owned(),
            path,
            kind,
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
