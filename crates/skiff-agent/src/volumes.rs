//! Named volumes of the drivers whose workloads see the node's file system (the process
//! driver, `Driver::host_volumes`): a directory per environment and stack,
//! `<data>/volumes/<env>/<stack>/<volume>`, made on first use and kept across restarts,
//! releases and `down`; replicas share it, as compose shares a named volume.
//!
//! ```text
//!  launch ─▶ prepare ─▶ seed (x-skiff.seed, once per volume) ─▶ SKIFF_VOLUME_<NAME>
//!              unpack tar[.zst] into .<volume>.seeding, rename into place, .<volume>.seeded
//!  copy-data A→B ─▶ freeze (cgroup freezer) or stop the instances using each volume
//!                   ─▶ reflink (FICLONE) or copy into B's directory ─▶ thaw / start again
//! ```
//!
//! **Invariants:**
//! - A volume is seeded at most once: the marker `.<volume>.seeded` is written after the
//!   unpacked tree was renamed into place; an agent killed before that seeds again from
//!   scratch (the half-unpacked `.<volume>.seeding` is removed first). A volume that already
//!   holds data is never overwritten by a seed.
//! - No archive entry is written outside the volume (`..`, absolute paths and links out are
//!   refused), and an archive is streamed, never held in memory.
//! - A copy never writes into a directory that holds data, and frozen instances are always
//!   thawed, stopped ones always started again, whatever the copy did.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Component;

use skiff_client::{CopyMethod, VolumeCopy};
use skiff_model::{Consistency, MountSpec, SeedSpec};

use super::*;

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Agent {
    fn volumes_root(&self) -> PathBuf {
        self.cfg.data_dir.join("volumes")
    }

    /// Where the named volume `key` of `stack` lives on this node.
    pub(crate) fn volume_dir(&self, stack: &StackKey, key: &str) -> PathBuf {
        self.volumes_root()
            .join(&stack.env)
            .join(&stack.stack)
            .join(key)
    }

    /// The named volumes an instance of `spec` gets as directories: each made if missing
    /// (seeded first when `x-skiff.seed` fills it), as `(SKIFF_VOLUME_<NAME>, path)`.
    pub(crate) async fn prepare_volumes(
        &self,
        id: &InstanceId,
        spec: &ServiceSpec,
    ) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for key in host_volume_keys(spec) {
            check_key(key)?;
            let dir = self.volume_dir(&id.stack, key);
            if let Some(seed) = spec.seed.as_ref().filter(|s| s.into == key) {
                self.seed(id, key, seed).await?;
            }
            let made = dir.clone();
            tokio::task::spawn_blocking(move || fs::create_dir_all(&made))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("volume {key}: creating {}: {e}", dir.display()))?;
            out.push((
                skiff_model::volume_env_var(key),
                dir.to_string_lossy().into_owned(),
            ));
        }
        Ok(out)
    }

    /// Unpacks `seed` into the volume `key` unless it was seeded before (or holds data).
    async fn seed(&self, id: &InstanceId, key: &str, seed: &SeedSpec) -> Result<(), String> {
        let dir = self.volume_dir(&id.stack, key);
        let place = SeedPlace::new(&dir);
        if place.marker.exists() {
            return Ok(());
        }
        // Replicas starting together: one seeds, the others find the marker.
        let _one = self.seeding.lock().await;
        if place.marker.exists() {
            return Ok(());
        }
        let started = Instant::now();
        let outcome = self.seed_now(&place, seed).await;
        let _ = fs::remove_file(&place.download);
        match outcome {
            Ok(Seeded::Unpacked { entries, bytes }) => {
                self.event(
                    &id.stack,
                    Some(id),
                    "seeded",
                    format!(
                        "volume {key} seeded from {} ({entries} entries, {bytes} bytes) in {} ms",
                        seed.from,
                        started.elapsed().as_millis()
                    ),
                );
                Ok(())
            }
            Ok(Seeded::KeptData) => {
                self.event(
                    &id.stack,
                    Some(id),
                    "seed_skipped",
                    format!(
                        "volume {key} already holds data: not seeded from {}",
                        seed.from
                    ),
                );
                Ok(())
            }
            Err(why) => {
                let message = format!("seeding volume {key} from {}: {why}", seed.from);
                self.event(&id.stack, Some(id), "seed_failed", message.clone());
                Err(message)
            }
        }
    }

    async fn seed_now(&self, place: &SeedPlace, seed: &SeedSpec) -> Result<Seeded, String> {
        let clean = place.clone();
        tokio::task::spawn_blocking(move || clean.clear_leftovers())
            .await
            .map_err(|e| e.to_string())??;
        let archive = if seed.from.starts_with("http://") {
            download(&seed.from, &place.download).await?;
            place.download.clone()
        } else if seed.from.contains("://") {
            return Err("only http:// URLs and paths are supported".into());
        } else {
            PathBuf::from(&seed.from)
        };
        let place = place.clone();
        let from = seed.from.clone();
        tokio::task::spawn_blocking(move || place.seed_from(&archive, &from))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Copies this node's volumes of environment `from` into environment `to`'s directories,
    /// holding the instances that use each one still as their service's
    /// `x-skiff.seed.consistency` says (default freeze).
    pub(crate) async fn copy_env_data(
        self: &Arc<Self>,
        from: &str,
        to: &str,
    ) -> Result<Vec<VolumeCopy>, String> {
        check_env(from)?;
        check_env(to)?;
        if from == to {
            return Err(format!("cannot copy environment {from:?} onto itself"));
        }
        let volumes = self.env_volumes(from)?;
        let target_of = |stack: &StackKey, key: &str| {
            self.volume_dir(
                &StackKey {
                    env: to.to_string(),
                    stack: stack.stack.clone(),
                },
                key,
            )
        };
        // Nothing is frozen or stopped for a copy that would be refused.
        for (stack, key) in &volumes {
            let target = target_of(stack, key);
            if !dir_is_empty(&target)? {
                return Err(format!(
                    "volume {key} of {}/{}: {} already holds data (a copy only fills a new or \
                     empty volume)",
                    stack.env,
                    stack.stack,
                    target.display()
                ));
            }
        }
        let mut out = Vec::new();
        for (stack, key) in volumes {
            let source = self.volume_dir(&stack, &key);
            let target = target_of(&stack, &key);
            let users = self.volume_users(&stack, &key);
            let frozen: Vec<_> = users
                .iter()
                .filter(|(_, c, _)| *c == Consistency::Freeze)
                .map(|(id, _, h)| (id.clone(), h.clone()))
                .collect();
            let stopped: Vec<InstanceId> = users
                .iter()
                .filter(|(_, c, _)| *c == Consistency::Stop)
                .map(|(id, _, _)| id.clone())
                .collect();
            let started = Instant::now();
            let held = self.hold_still(&frozen, &stopped).await;
            let copied = match held {
                Ok(()) => {
                    let (s, t) = (source.clone(), target.clone());
                    tokio::task::spawn_blocking(move || copy_volume(&s, &t))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)
                }
                Err(e) => Err(e),
            };
            // Always: whatever froze thaws, whatever stopped starts again.
            self.let_go(&frozen, &stopped).await;
            let stats = copied.map_err(|e| {
                format!(
                    "copying volume {key} of {}/{} to {to}: {e}",
                    stack.env, stack.stack
                )
            })?;
            let ms = started.elapsed().as_millis() as u64;
            self.event(
                &stack,
                None,
                "data_copied",
                format!(
                    "volume {key} copied to environment {to} by {} ({} bytes, {} written) in \
                     {ms} ms{}",
                    stats.method,
                    stats.bytes,
                    stats.written,
                    hold_words(frozen.len(), stopped.len())
                ),
            );
            out.push(VolumeCopy {
                stack: stack.stack.clone(),
                volume: key,
                node: self.node_id.clone(),
                bytes: stats.bytes,
                written: stats.written,
                method: stats.method,
                ms,
            });
        }
        Ok(out)
    }

    /// `(stack, volume)` of every volume directory of `env` on this node.
    /// Removes this node's volumes of environment `env` (`skiff env rm`): their data is gone
    /// for good. Waits (up to a minute) for the instances of `env` that are still stopping
    /// here; refused if one still runs then.
    pub(crate) async fn remove_env_data(&self, env: &str) -> Result<(), String> {
        check_env(env)?;
        let running = || -> Vec<String> {
            self.live()
                .keys()
                .filter(|id| id.stack.env == env)
                .map(|id| id.short())
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !running().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let running = running();
        if !running.is_empty() {
            return Err(format!(
                "instances of environment {env} still run here ({}); their volumes stay",
                running.join(", ")
            ));
        }
        let root = self.volumes_root().join(env);
        tokio::task::spawn_blocking(move || match fs::remove_dir_all(&root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", root.display())),
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn env_volumes(&self, env: &str) -> Result<Vec<(StackKey, String)>, String> {
        let root = self.volumes_root().join(env);
        let mut out = Vec::new();
        let stacks = match fs::read_dir(&root) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(format!("reading {}: {e}", root.display())),
        };
        for stack in stacks.flatten() {
            if !stack.path().is_dir() {
                continue;
            }
            let stack_name = stack.file_name().to_string_lossy().into_owned();
            let vols = fs::read_dir(stack.path())
                .map_err(|e| format!("reading {}: {e}", stack.path().display()))?;
            let mut keys: Vec<String> = vols
                .flatten()
                .filter(|v| v.path().is_dir())
                .map(|v| v.file_name().to_string_lossy().into_owned())
                .filter(|k| !k.starts_with('.'))
                .collect();
            keys.sort();
            for key in keys {
                out.push((
                    StackKey {
                        env: env.to_string(),
                        stack: stack_name.clone(),
                    },
                    key,
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The running instances of `stack` that mount volume `key` as a host directory, with
    /// their service's consistency and workload.
    fn volume_users(
        &self,
        stack: &StackKey,
        key: &str,
    ) -> Vec<(InstanceId, Consistency, Arc<dyn Workload>)> {
        let live = self.live();
        let mut out: Vec<_> = live
            .iter()
            .filter(|(id, l)| id.stack == *stack && l.running())
            .filter(|(_, l)| {
                self.driver(l.spec.driver).is_ok_and(|d| d.host_volumes())
                    && host_volume_keys(&l.spec).any(|k| k == key)
            })
            .filter_map(|(id, l)| {
                let c = l
                    .spec
                    .seed
                    .as_ref()
                    .map_or(Consistency::Freeze, |s| s.consistency);
                l.handle.clone().map(|h| (id.clone(), c, h))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Freezes `frozen` and stops `stopped` (kept from starting again until [`Agent::let_go`]).
    async fn hold_still(
        self: &Arc<Self>,
        frozen: &[(InstanceId, Arc<dyn Workload>)],
        stopped: &[InstanceId],
    ) -> Result<(), String> {
        for (id, h) in frozen {
            h.freeze(true)
                .await
                .map_err(|e| format!("freezing {}: {e}", id.short()))?;
        }
        // Claim every instance to stop first (no start or stop of them in flight), or none.
        {
            let mut live = self.live();
            let busy = stopped
                .iter()
                .find(|id| live.get(*id).is_none_or(|l| l.busy));
            if let Some(id) = busy {
                return Err(format!(
                    "{} is starting or stopping; try again once it settled",
                    id.short()
                ));
            }
            for id in stopped {
                if let Some(l) = live.get_mut(id) {
                    l.busy = true;
                    l.observed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restart_at = None;
                }
            }
        }
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.extend(stopped.iter().cloned());
        }
        let mut stops = tokio::task::JoinSet::new();
        for id in stopped {
            let agent = self.clone();
            let id = id.clone();
            stops.spawn(async move { agent.stop_instance(id).await });
        }
        while stops.join_next().await.is_some() {}
        Ok(())
    }

    async fn let_go(&self, frozen: &[(InstanceId, Arc<dyn Workload>)], stopped: &[InstanceId]) {
        for (id, h) in frozen {
            if let Err(e) = h.freeze(false).await {
                self.event(
                    &id.stack,
                    Some(id),
                    "thaw_failed",
                    format!("thawing after a data copy: {e}"),
                );
            }
        }
        if !stopped.is_empty() {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            for id in stopped {
                held.remove(id);
            }
        }
        self.wake();
    }
}

fn hold_words(frozen: usize, stopped: usize) -> String {
    match (frozen, stopped) {
        (0, 0) => String::new(),
        (f, 0) => format!(", {f} instance(s) frozen"),
        (0, s) => format!(", {s} instance(s) stopped"),
        (f, s) => format!(", {f} instance(s) frozen, {s} stopped"),
    }
}

/// Keys of the named, non-external volumes of `spec`.
fn host_volume_keys(spec: &ServiceSpec) -> impl Iterator<Item = &str> {
    spec.mounts.iter().filter_map(|m| match m {
        MountSpec::Volume { key, external, .. } if !key.is_empty() && !external => {
            Some(key.as_str())
        }
        _ => None,
    })
}

/// A volume key names one directory: compose's `[a-zA-Z0-9._-]+`, not `.` or `..`.
fn check_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("volume name {key:?} cannot name a directory"))
    }
}

fn check_env(env: &str) -> Result<(), String> {
    let ok = !env.is_empty()
        && !env.starts_with('.')
        && env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{env:?} is not an environment name"))
    }
}

/// What a seed did.
#[derive(Debug, PartialEq, Eq)]
enum Seeded {
    Unpacked {
        entries: u64,
        bytes: u64,
    },
    /// The volume held data already (used before the seed was declared, or seeded by an
    /// agent that died before writing the marker): kept as it is.
    KeptData,
}

/// The files of one volume's seed, beside the volume directory.
#[derive(Clone, Debug)]
struct SeedPlace {
    dir: PathBuf,
    /// Written once the seeded tree is in place.
    marker: PathBuf,
    /// The unpacking tree, renamed to `dir` when complete.
    tmp: PathBuf,
    /// An `http://` archive, streamed to disk before unpacking.
    download: PathBuf,
}

impl SeedPlace {
    fn new(dir: &Path) -> SeedPlace {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let key = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        SeedPlace {
            dir: dir.to_path_buf(),
            marker: parent.join(format!(".{key}.seeded")),
            tmp: parent.join(format!(".{key}.seeding")),
            download: parent.join(format!(".{key}.download")),
        }
    }

    /// What an agent killed mid-seed left.
    fn clear_leftovers(&self) -> Result<(), String> {
        let parent = self.tmp.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        match fs::remove_dir_all(&self.tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {}: {e}", self.tmp.display())),
        }
        let _ = fs::remove_file(&self.download);
        Ok(())
    }

    /// Blocking: unpacks `archive` beside the volume and renames it into place, then writes
    /// the marker.
    fn seed_from(&self, archive: &Path, from: &str) -> Result<Seeded, String> {
        if !dir_is_empty(&self.dir)? {
            // Seeded by an agent that died before its marker, or used before the seed was
            // declared: the data stays.
            mark(&self.marker, from)?;
            return Ok(Seeded::KeptData);
        }
        let file = fs::File::open(archive).map_err(|e| format!("cannot read {from}: {e}"))?;
        fs::create_dir_all(&self.tmp)
            .map_err(|e| format!("creating {}: {e}", self.tmp.display()))?;
        let (entries, bytes) = match unpack(file, &self.tmp) {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_dir_all(&self.tmp);
                return Err(e);
            }
        };
        skiff_store::crash_point("seed-unpacked");
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("replacing {}: {e}", self.dir.display())),
        }
        fs::rename(&self.tmp, &self.dir)
            .map_err(|e| format!("renaming {} into place: {e}", self.tmp.display()))?;
        mark(&self.marker, from)?;
        Ok(Seeded::Unpacked { entries, bytes })
    }
}

fn mark(marker: &Path, from: &str) -> Result<(), String> {
    driver::write_atomic(marker, format!("{from}\n").as_bytes()).map_err(|e| e.to_string())
}

/// Missing counts as empty.
fn dir_is_empty(dir: &Path) -> Result<bool, String> {
    match fs::read_dir(dir) {
        Ok(mut r) => Ok(r.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("reading {}: {e}", dir.display())),
    }
}

/// Unpacks a tar archive, zstd-compressed or not (told by its first bytes), into `dir`,
/// streaming; returns the number of entries and of bytes of file data. Entries that would
/// land outside `dir` are refused, naming the entry.
fn unpack(input: impl Read, dir: &Path) -> Result<(u64, u64), String> {
    let mut input = BufReader::with_capacity(256 << 10, input);
    let head = input
        .fill_buf()
        .map_err(|e| format!("reading the archive: {e}"))?;
    if head.starts_with(&ZSTD_MAGIC) {
        let decoder = ruzstd::decoding::StreamingDecoder::new(input)
            .map_err(|e| format!("not a zstd stream: {e}"))?;
        unpack_tar(BufReader::with_capacity(256 << 10, decoder), dir)
    } else {
        unpack_tar(input, dir)
    }
}

fn unpack_tar(input: impl Read, dir: &Path) -> Result<(u64, u64), String> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    // Root keeps the archive's owners (a database's files belong to its user).
    archive.set_preserve_ownerships(rustix::process::geteuid().is_root());
    let (mut entries, mut bytes) = (0u64, 0u64);
    for entry in archive
        .entries()
        .map_err(|e| format!("reading the archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("an entry's name: {e}"))?
            .into_owned();
        if !stays_inside(&path) {
            return Err(format!(
                "entry {} would land outside the volume: refused",
                path.display()
            ));
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link()
            && let Some(target) = entry.link_name().map_err(|e| e.to_string())?
            && !stays_inside(&target)
        {
            return Err(format!(
                "entry {} links to {} outside the volume: refused",
                path.display(),
                target.display()
            ));
        }
        if kind.is_file() {
            bytes += entry.size();
        }
        let unpacked = entry
            .unpack_in(dir)
            .map_err(|e| format!("unpacking {}: {}", path.display(), chain(&e)))?;
        if !unpacked {
            return Err(format!(
                "entry {} would land outside the volume: refused",
                path.display()
            ));
        }
        entries += 1;
    }
    Ok((entries, bytes))
}

/// An error with its causes (tar's errors keep the I/O error as the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A relative path without `..`: it cannot leave the directory it is joined to.
fn stays_inside(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `GET url` (http://host[:port]/path) streamed into `to`.
async fn download(url: &str, to: &Path) -> Result<(), String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use tokio::io::AsyncWriteExt;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let host_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let connect = tokio::net::TcpStream::connect(host_port.as_str());
    let stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| format!("connecting to {host_port}: timed out after 10s"))?
        .map_err(|e| format!("connecting to {host_port}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "skiff-seed")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(|e| format!("creating {}: {e}", to.display()))?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("GET {url}: {e}"))?;
            if let Ok(data) = frame.into_data() {
                file.write_all(&data)
                    .await
                    .map_err(|e| format!("writing {}: {e}", to.display()))?;
            }
        }
        file.flush()
            .await
            .map_err(|e| format!("writing {}: {e}", to.display()))
    }
    .await;
    conn.abort();
    result
}

/// What copying one volume did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CopyStats {
    /// Bytes of file data in the volume.
    pub bytes: u64,
    /// Bytes written with write(2) (0 when every file was a reflink).
    pub written: u64,
    pub method: CopyMethod,
}

/// Blocking: copies the tree `from` to `to`, which must be missing or empty, into a temporary
/// sibling renamed into place at the end. Files are reflinked (FICLONE) while the file system
/// takes it, else copied byte for byte; modes, owners (as root) and symlinks are kept; sockets
/// and FIFOs are not copied.
pub(crate) fn copy_volume(from: &Path, to: &Path) -> Result<CopyStats, String> {
    if !dir_is_empty(to)? {
        return Err(format!(
            "{} already holds data (a copy only fills a new or empty volume)",
            to.display()
        ));
    }
    let parent = to.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.copying"));
    match fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", tmp.display())),
    }
    let mut stats = CopyStats {
        method: CopyMethod::Reflink,
        ..CopyStats::default()
    };
    let mut reflinks = true;
    let copied = copy_tree(from, &tmp, &mut reflinks, &mut stats);
    if let Err(e) = copied {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if !reflinks {
        stats.method = CopyMethod::Copy;
    }
    match fs::remove_dir(to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("replacing {}: {e}", to.display())),
    }
    fs::rename(&tmp, to).map_err(|e| format!("renaming {} into place: {e}", tmp.display()))?;
    Ok(stats)
}

fn copy_tree(
    from: &Path,
    to: &Path,
    reflinks: &mut bool,
    stats: &mut CopyStats,
) -> Result<(), String> {
    let meta = fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    fs::create_dir(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut entries: Vec<_> = fs::read_dir(from)
        .map_err(|e| format!("reading {}: {e}", from.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading {}: {e}", from.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let m = fs::symlink_metadata(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let t = m.file_type();
        if t.is_dir() {
            copy_tree(&src, &dst, reflinks, stats)?;
        } else if t.is_symlink() {
            let target =
                fs::read_link(&src).map_err(|e| format!("reading {}: {e}", src.display()))?;
            std::os::unix::fs::symlink(&target, &dst)
                .map_err(|e| format!("creating {}: {e}", dst.display()))?;
            own(&dst, &m, true)?;
        } else if t.is_file() {
            copy_file(&src, &dst, &m, reflinks, stats)?;
        }
        // Sockets and FIFOs belong to a running process, not to its data.
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| format!("setting the mode of {}: {e}", to.display()))?;
    own(to, &meta, false)
}

fn copy_file(
    src: &Path,
    dst: &Path,
    meta: &fs::Metadata,
    reflinks: &mut bool,
    stats: &mut CopyStats,
) -> Result<(), String> {
    let input = fs::File::open(src).map_err(|e| format!("opening {}: {e}", src.display()))?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| format!("creating {}: {e}", dst.display()))?;
    stats.bytes += meta.len();
    let mut cloned = false;
    if *reflinks {
        match rustix::fs::ioctl_ficlone(&output, &input) {
            Ok(()) => cloned = true,
            // The file system (or this pair of files) cannot share extents: copy from now on.
            Err(_) => *reflinks = false,
        }
    }
    if !cloned {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| format!("reading {}: {e}", src.display()))?;
            if n == 0 {
                break;
            }
            output
                .write_all(&buf[..n])
                .map_err(|e| format!("writing {}: {e}", dst.display()))?;
            stats.written += n as u64;
        }
    }
    drop(output);
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| format!("setting the mode of {}: {e}", dst.display()))?;
    own(dst, meta, false)
}

/// Root keeps each file's owner (a database's files belong to its user).
fn own(path: &Path, meta: &fs::Metadata, symlink: bool) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let (uid, gid) = (Some(meta.uid()), Some(meta.gid()));
    let r = if symlink {
        std::os::unix::fs::lchown(path, uid, gid)
    } else {
        std::os::unix::fs::chown(path, uid, gid)
    };
    r.map_err(|e| format!("setting the owner of {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o640);
            h.set_mtime(1_700_000_000);
            h.set_uid(rustix::process::geteuid().as_raw() as u64);
            h.set_gid(rustix::process::getegid().as_raw() as u64);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A tar whose one entry's name is written raw (the builder refuses `..`).
    fn tar_with_raw_name(name: &str) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(b"bad");
        out.resize(1024, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn a_plain_tar_unpacks_with_its_modes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("a/b.txt", b"hello"), ("c", b"xy")]);
        assert_eq!(unpack(&tar[..], dir.path()).unwrap(), (2, 7));
        assert_eq!(fs::read(dir.path().join("a/b.txt")).unwrap(), b"hello");
        let mode = fs::metadata(dir.path().join("c")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn a_zstd_compressed_tar_is_told_by_its_magic_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("data/ibdata1", &[7u8; 100_000])]);
        let zst = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(zst[..4], ZSTD_MAGIC);
        assert_eq!(unpack(&zst[..], dir.path()).unwrap(), (1, 100_000));
        assert_eq!(
            fs::read(dir.path().join("data/ibdata1")).unwrap(),
            vec![7u8; 100_000]
        );
    }

    #[test]
    fn entries_escaping_the_volume_are_refused_by_name() {
        for name in ["../evil", "a/../../evil", "/etc/evil"] {
            let outer = tempfile::tempdir().unwrap();
            let dir = outer.path().join("vol");
            fs::create_dir(&dir).unwrap();
            let err = unpack(&tar_with_raw_name(name)[..], &dir).unwrap_err();
            assert!(err.contains("outside the volume"), "{name}: {err}");
            assert!(!outer.path().join("evil").exists());
        }
    }

    #[test]
    fn a_truncated_archive_is_an_error_not_a_partial_success() {
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_of(&[("big", &[1u8; 10_000])]);
        let err = unpack(&tar[..2000], dir.path()).unwrap_err();
        assert!(err.contains("big") || err.contains("archive"), "{err}");
    }

    #[test]
    fn a_seed_renames_into_place_once_and_a_killed_unpack_starts_over() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("default/shop/data");
        let archive = root.path().join("snap.tar");
        fs::write(&archive, tar_of(&[("row", b"1")])).unwrap();
        let place = SeedPlace::new(&dir);
        // What an agent killed mid-unpack leaves: a half tree beside the volume.
        fs::create_dir_all(place.tmp.join("half")).unwrap();
        place.clear_leftovers().unwrap();
        assert!(!place.tmp.exists());
        let seeded = place.seed_from(&archive, "snap.tar").unwrap();
        assert_eq!(
            seeded,
            Seeded::Unpacked {
                entries: 1,
                bytes: 1
            }
        );
        assert_eq!(fs::read(dir.join("row")).unwrap(), b"1");
        assert!(place.marker.exists());
        // Data written since stays: a second seed (marker lost) keeps it.
        fs::write(dir.join("row"), b"2").unwrap();
        fs::remove_file(&place.marker).unwrap();
        assert_eq!(
            place.seed_from(&archive, "snap.tar").unwrap(),
            Seeded::KeptData
        );
        assert_eq!(fs::read(dir.join("row")).unwrap(), b"2");
    }

    #[test]
    fn a_missing_snapshot_names_the_source() {
        let root = tempfile::tempdir().unwrap();
        let place = SeedPlace::new(&root.path().join("s/data"));
        place.clear_leftovers().unwrap();
        let err = place
            .seed_from(&root.path().join("nope.tar"), "/x/nope.tar")
            .unwrap_err();
        assert!(err.starts_with("cannot read /x/nope.tar: "), "{err}");
        assert!(!place.dir.exists() && !place.marker.exists());
    }

    #[test]
    fn a_copy_keeps_contents_modes_and_symlinks_and_refuses_a_volume_with_data() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("sub/f"), b"data!").unwrap();
        fs::set_permissions(a.join("sub/f"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("sub/f", a.join("link")).unwrap();
        let b = root.path().join("envb/b");
        let stats = copy_volume(&a, &b).unwrap();
        assert_eq!(stats.bytes, 5);
        // This machine's ext4 (or tmpfs) has no reflinks: written byte for byte; a file
        // system with them writes nothing.
        match stats.method {
            CopyMethod::Copy => assert_eq!(stats.written, 5),
            CopyMethod::Reflink => assert_eq!(stats.written, 0),
        }
        assert_eq!(fs::read(b.join("sub/f")).unwrap(), b"data!");
        assert_eq!(fs::metadata(b.join("sub/f")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_link(b.join("link")).unwrap(), Path::new("sub/f"));
        assert!(!root.path().join("envb/.b.copying").exists());
        let err = copy_volume(&a, &b).unwrap_err();
        assert!(err.contains("already holds data"), "{err}");
    }

    #[test]
    fn volume_keys_and_env_names_cannot_leave_their_directory() {
        assert!(check_key("db-data_1.x").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_env("alice").is_ok());
        assert!(check_env("../x").is_err() && check_env("").is_err());
    }
}
