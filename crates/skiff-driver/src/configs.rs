//! Config files on the node: where an instance's compose `configs` are written, where the
//! workload reads them, and how a change is written so that the workload sees it.
//!
//! The agent writes every file before the workload starts and again on a reload
//! (`x-skiff.reload`), always through [`write`]. A file is replaced atomically (a temporary
//! file beside it, fsync, rename) unless its [`ConfigPlace::in_place`] says the workload
//! holds the inode itself (a container's single-file bind mount would keep the old file
//! after a rename): then its content is rewritten in place, before the reload signal.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use skiff_model::ConfigFile;

/// The directory under an instance directory that holds its config files.
pub const CONFIG_DIR: &str = "configs";

/// Compose's default permission bits of a config file.
pub const DEFAULT_MODE: u32 = 0o444;

/// Where a config file of one instance lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigPlace {
    /// Where the agent writes it on the node.
    pub host: PathBuf,
    /// The path the workload reads it at (given as `SKIFF_CONFIG_<NAME>`).
    pub seen: String,
    /// Rewrite the file's content in place on a change instead of replacing the file.
    pub in_place: bool,
}

/// `<dir>/configs/<target without its leading />`: where a config of the instance whose
/// directory is `dir` is written. `None` for a target that names no file or leaves the
/// directory (validation rejects those).
pub fn host_path(dir: &Path, c: &ConfigFile) -> Option<PathBuf> {
    Some(dir.join(CONFIG_DIR).join(c.relative_target()?))
}

/// A config a process reads where it is written; replaced atomically.
pub fn in_instance_dir(dir: &Path, c: &ConfigFile) -> Option<ConfigPlace> {
    let host = host_path(dir, c)?;
    Some(ConfigPlace {
        seen: host.display().to_string(),
        host,
        in_place: false,
    })
}

/// Writes `c` at `place.host` with its mode (default 0444), creating directories: a new
/// file, or one not [`ConfigPlace::in_place`], through a temporary file, fsync and rename;
/// an existing in-place one by truncating and rewriting it, then fsync.
pub fn write(place: &ConfigPlace, c: &ConfigFile) -> std::io::Result<()> {
    let at = |op: &str, p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{op} {}: {e}", p.display()))
    };
    let path = &place.host;
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| at("creating", parent, e))?;
    let mode = c.mode.unwrap_or(DEFAULT_MODE) & 0o7777;
    if place.in_place && path.exists() {
        // Writable for the owner while it is rewritten (the mode may be read-only).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o200))
            .map_err(|e| at("changing the mode of", path, e))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| at("opening", path, e))?;
        f.write_all(c.content.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| at("writing", path, e))?;
        return std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| at("changing the mode of", path, e));
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.skiff-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| at("creating", &tmp, e))?;
    f.write_all(c.content.as_bytes())
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all())
        .map_err(|e| at("writing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| at("renaming to", path, e))?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn config(target: &str, content: &str) -> ConfigFile {
        ConfigFile {
            name: "app".into(),
            target: target.into(),
            content: content.into(),
            mode: None,
            ..Default::default()
        }
    }

    #[test]
    fn configs_go_under_the_instance_directory_and_never_above_it() {
        let dir = Path::new("/data/instances/default/shop/web-1");
        let place = in_instance_dir(dir, &config("/etc/app/app.conf", "")).unwrap();
        assert_eq!(
            place.host,
            Path::new("/data/instances/default/shop/web-1/configs/etc/app/app.conf")
        );
        assert_eq!(place.seen, place.host.display().to_string());
        assert!(in_instance_dir(dir, &config("/../../etc/passwd", "")).is_none());
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_an_in_place_one_keeps_its_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let mut place = in_instance_dir(tmp.path(), &config("/a/b.conf", "")).unwrap();
        write(&place, &config("/a/b.conf", "one")).unwrap();
        let first = std::fs::metadata(&place.host).unwrap();
        assert_eq!(first.mode() & 0o7777, DEFAULT_MODE);
        write(&place, &config("/a/b.conf", "two")).unwrap();
        let second = std::fs::metadata(&place.host).unwrap();
        assert_eq!(std::fs::read_to_string(&place.host).unwrap(), "two");
        assert_ne!(first.ino(), second.ino(), "a rename makes a new inode");
        place.in_place = true;
        let mut c = config("/a/b.conf", "three, longer than before");
        c.mode = Some(0o440);
        write(&place, &c).unwrap();
        let third = std::fs::metadata(&place.host).unwrap();
        assert_eq!(
            std::fs::read_to_string(&place.host).unwrap(),
            "three, longer than before"
        );
        assert_eq!(third.ino(), second.ino(), "rewritten in place");
        assert_eq!(third.mode() & 0o7777, 0o440);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("configs/a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["b.conf"]);
    }
}
