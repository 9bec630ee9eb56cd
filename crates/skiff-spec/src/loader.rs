//! How the spec crate reads files without doing I/O itself.
//!
//! The binary passes a loader backed by the file system; tests pass [`MemLoader`]. Paths are
//! handled as plain strings joined with `/`, so the crate never touches the host.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Why a file could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no such file")]
    NotFound,
    #[error("{0}")]
    Other(String),
}

/// Source of file contents for the spec crate.
pub trait Loader {
    /// Reads a whole text file. `path` is absolute, or relative to the working directory.
    fn read(&self, path: &Path) -> Result<String, ReadError>;

    /// Whether anything exists at `path` (used for discovery and for warnings about bind
    /// mounts whose host path is missing).
    fn exists(&self, path: &Path) -> bool;
}

/// Files held in memory, for tests and fuzzing.
#[derive(Clone, Debug, Default)]
pub struct MemLoader {
    files: BTreeMap<PathBuf, String>,
}

impl MemLoader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.insert(path, text);
        self
    }

    pub fn insert(&mut self, path: impl Into<PathBuf>, text: impl Into<String>) {
        self.files.insert(normalize(&path.into()), text.into());
    }
}

impl Loader for MemLoader {
    fn read(&self, path: &Path) -> Result<String, ReadError> {
        self.files
            .get(&normalize(path))
            .cloned()
            .ok_or(ReadError::NotFound)
    }

    fn exists(&self, path: &Path) -> bool {
        let p = normalize(path);
        self.files.keys().any(|k| k == &p || k.starts_with(&p))
    }
}

/// `base/rel` with `.` and `..` folded away lexically; an absolute `rel` stands alone.
pub fn resolve(base: &Path, rel: &str) -> PathBuf {
    normalize(&base.join(rel))
}

/// Folds `.` and `..` without touching the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The directory holding `file` (`.` for a bare file name).
pub fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fold_dot_segments_lexically() {
        assert_eq!(
            resolve(Path::new("/a/b"), "../c/./d"),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(resolve(Path::new("/a"), "/etc/x"), PathBuf::from("/etc/x"));
        assert_eq!(resolve(Path::new("."), "x.yaml"), PathBuf::from("x.yaml"));
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
    }

    #[test]
    fn mem_loader_finds_files_and_directories() {
        let l = MemLoader::new().with("/p/compose.yaml", "services: {}");
        assert!(l.exists(Path::new("/p")));
        assert!(l.exists(Path::new("/p/./compose.yaml")));
        assert_eq!(l.read(Path::new("/p/x")), Err(ReadError::NotFound));
    }
}
