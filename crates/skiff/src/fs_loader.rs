//! The file-system side of `skiff_spec::loader::Loader`.

use std::io::Read;
use std::path::Path;

use skiff_spec::loader::{Loader, ReadError};

/// Reads files from disk, never more than `max_bytes` + 1 of one file, so a huge or endless
/// file (`/dev/zero`) fails on the spec crate's size check instead of exhausting memory.
pub struct FsLoader {
    pub max_bytes: usize,
}

impl Loader for FsLoader {
    fn read(&self, path: &Path) -> Result<String, ReadError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Other(e.to_string()),
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(ReadError::Other("is a directory".into()));
        }
        let mut bytes = Vec::new();
        file.take(self.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ReadError::Other(e.to_string()))?;
        String::from_utf8(bytes).map_err(|e| {
            ReadError::Other(format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Files kept by the control plane (an environment's override files) under names of their
/// own, `env:<env>/<name>` relative to the working directory, so that errors in them name
/// them; every other path is read from disk.
pub struct WithStored {
    pub stored: std::collections::BTreeMap<std::path::PathBuf, String>,
    pub disk: FsLoader,
}

impl Loader for WithStored {
    fn read(&self, path: &Path) -> Result<String, ReadError> {
        match self.stored.get(&skiff_spec::loader::normalize(path)) {
            Some(text) => Ok(text.clone()),
            None => self.disk.read(path),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        self.stored
            .contains_key(&skiff_spec::loader::normalize(path))
            || self.disk.exists(path)
    }
}
