//! On a local lake, scripts write the files the server later reads, lists and deletes, so
//! a link a script planted would send the server into another tenant's folder, the task
//! table or anywhere on the machine. The server follows none: before it touches a path it
//! checks, without following anything, that no folder on the way from the lake's root is
//! a symbolic link, and (for what it reads) that everything under it is a plain folder or
//! a regular file with a single name, so a hard link to a file elsewhere is refused too.
//!
//! The sandbox is the first wall (a sandboxed script cannot create a link in the lake:
//! `sandbox.rs`); this check holds where it is off, and for files planted before.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::domain::path::LakePath;
use crate::error::{Error, Result};

/// The most entries a folder's check walks: a dataset with more is refused rather than
/// costing the server an unbounded walk per request.
const MAX_ENTRIES: usize = 1_000_000;

/// How much of a path to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The folders on the way and the path itself: enough to write or delete there, since
    /// deleting a folder removes the links in it and follows none.
    Path,
    /// Also everything under it: what the server reads.
    Tree,
}

/// Why a path was refused, for the client: it names the lake path, never a disk path.
fn refused(relative: &LakePath, what: &str) -> Error {
    Error::Conflict(format!(
        "{relative} holds {what}, which lancer never follows; delete it and write it again"
    ))
}

/// Checks `relative` under the local lake `root` (canonical) as `reach` says. A path
/// that does not exist passes: there is nothing to follow.
pub fn check(root: &Path, relative: &LakePath, reach: Reach) -> Result<()> {
    let mut at = root.to_path_buf();
    let mut last = None;
    for segment in relative.segments() {
        at.push(segment);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(Error::internal(err)),
        };
        if meta.file_type().is_symlink() {
            return Err(refused(relative, "a symbolic link"));
        }
        last = Some(meta);
    }
    let Some(meta) = last else {
        return Ok(());
    };
    match reach {
        Reach::Path if meta.is_dir() || meta.is_file() => Ok(()),
        Reach::Path => Err(refused(relative, "a special file")),
        Reach::Tree => check_tree(&at, &meta, relative),
    }
}

/// Everything under `top` is a plain folder or a regular file with one name.
fn check_tree(top: &Path, meta: &std::fs::Metadata, relative: &LakePath) -> Result<()> {
    check_entry(meta, relative)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mut folders: Vec<PathBuf> = vec![top.to_path_buf()];
    let mut seen = 0usize;
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            // Removed meanwhile (a commit's staging file, a deleted version): nothing to follow.
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::internal(err)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::internal)?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(refused(relative, "more files than lancer checks"));
            }
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(meta) => meta,
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => return Err(Error::internal(err)),
            };
            check_entry(&meta, relative)?;
            if meta.is_dir() {
                folders.push(entry.path());
            }
        }
    }
    Ok(())
}

fn check_entry(meta: &std::fs::Metadata, relative: &LakePath) -> Result<()> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        Err(refused(relative, "a symbolic link"))
    } else if kind.is_file() && meta.nlink() > 1 {
        Err(refused(relative, "a hard link"))
    } else if kind.is_file() || kind.is_dir() {
        Ok(())
    } else {
        Err(refused(relative, "a special file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lake_path(text: &str) -> LakePath {
        LakePath::parse("path", text).expect("a lake path")
    }

    #[test]
    fn plain_folders_and_files_pass_and_a_missing_path_has_nothing_to_follow() {
        let root = tempfile::tempdir().expect("tempdir");
        let dataset = root.path().join("t/datasets/x.lance/data");
        std::fs::create_dir_all(&dataset).expect("mkdir");
        std::fs::write(dataset.join("a.lance"), "rows").expect("write");
        for reach in [Reach::Path, Reach::Tree] {
            check(root.path(), &lake_path("t/datasets/x.lance"), reach).expect("plain");
            check(root.path(), &lake_path("t/datasets/none.lance"), reach).expect("missing");
        }
    }

    #[test]
    fn a_link_on_the_way_in_the_tree_or_as_a_second_name_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let secret = elsewhere.path().join("secret");
        std::fs::write(&secret, "theirs").expect("write");
        let logs = root.path().join("t/logs");
        std::fs::create_dir_all(&logs).expect("mkdir");
        std::os::unix::fs::symlink(elsewhere.path(), logs.join("id")).expect("symlink");
        let via_link = lake_path("t/logs/id/1.log");
        let err = check(root.path(), &via_link, Reach::Path).expect_err("a linked folder");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(
            !err.to_string()
                .contains(&*elsewhere.path().to_string_lossy())
        );

        let dataset = root.path().join("t/datasets/x.lance");
        std::fs::create_dir_all(&dataset).expect("mkdir");
        std::os::unix::fs::symlink(&secret, dataset.join("data.lance")).expect("symlink");
        let x = lake_path("t/datasets/x.lance");
        check(root.path(), &x, Reach::Path).expect("the folder itself is plain");
        assert!(
            check(root.path(), &x, Reach::Tree).is_err(),
            "a link inside"
        );

        std::fs::remove_file(dataset.join("data.lance")).expect("rm");
        std::fs::hard_link(&secret, dataset.join("data.lance")).expect("hard link");
        let err = check(root.path(), &x, Reach::Tree).expect_err("a second name");
        assert!(err.to_string().contains("hard link"), "{err}");
        assert_eq!(std::fs::read_to_string(&secret).expect("read"), "theirs");
    }
}
