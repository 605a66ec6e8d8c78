//! Finds a task's script inside the scripts root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::domain::validate::check_relative_path;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// A `*.py` file with `run(input_path, output_path, params)`.
    Python,
    /// Any executable following the same contract through flags.
    Executable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub path: PathBuf,
    pub kind: ScriptKind,
}

/// Resolves `script` under `root`, refusing anything that leaves it (symlinks included).
pub fn resolve_script(root: &Path, script: &str) -> Result<Script> {
    check_relative_path("script", script)?;
    let root = std::fs::canonicalize(root)
        .map_err(|err| Error::internal(format!("scripts root {}: {err}", root.display())))?;
    let missing = || {
        Error::invalid(format!(
            "script '{script}' does not exist in the scripts folder"
        ))
    };
    let path = std::fs::canonicalize(root.join(script)).map_err(|_| missing())?;
    if !path.starts_with(&root) {
        return Err(Error::invalid(format!(
            "script '{script}' resolves outside the scripts folder"
        )));
    }
    let meta = std::fs::metadata(&path).map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(missing());
    }
    let kind = if path.extension().is_some_and(|ext| ext == "py") {
        ScriptKind::Python
    } else if meta.permissions().mode() & 0o111 != 0 {
        ScriptKind::Executable
    } else {
        return Err(Error::invalid(format!(
            "script '{script}' is neither a .py file nor executable"
        )));
    };
    Ok(Script { path, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_resolve_inside_the_root_only() {
        let outside = tempfile::tempdir().expect("tempdir");
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("job.py"), "def run(i, o, p): return {}").expect("write");
        std::fs::write(root.path().join("data.txt"), "x").expect("write");
        std::fs::write(outside.path().join("evil.py"), "").expect("write");
        std::os::unix::fs::symlink(outside.path().join("evil.py"), root.path().join("link.py"))
            .expect("symlink");

        assert_eq!(
            resolve_script(root.path(), "job.py").map(|s| s.kind).ok(),
            Some(ScriptKind::Python)
        );
        assert!(
            resolve_script(root.path(), "link.py").is_err(),
            "symlink out of the root"
        );
        assert!(resolve_script(root.path(), "../job.py").is_err());
        assert!(resolve_script(root.path(), "missing.py").is_err());
        assert!(
            resolve_script(root.path(), "data.txt").is_err(),
            "not executable"
        );
    }
}
