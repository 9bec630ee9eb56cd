//! Resource limits for workloads through cgroupfs: cgroup v1 and v2 behind one interface.
//!
//! ```text
//!  Cgroups::detect("skiff")            reads /proc/self/mountinfo and /proc/self/cgroup once
//!     │
//!     ├─ create("dev/shop/api-1", limits) ─▶ Group   mkdir + limit files, before the start
//!     │        └─ procs_files()  the workload joins these (written from the shim's pre_exec)
//!     └─ open("dev/shop/api-1")            ─▶ Group   oom_kills(), stats(), kill_all(), remove()
//! ```
//!
//! Layout: groups live under `<skiff's own cgroup>/<parent>/<name>` in every hierarchy, so
//! a supervisor that is itself limited (a container, a systemd unit) keeps its workloads
//! inside its own budget.
//!
//! - **v1** (also the "hybrid" layout, where the v1 controllers are mounted next to a cgroup2
//!   mount that has none of them): one directory per controller (`memory`, `cpu`, `pids`).
//!   Memory without swap is `memory.limit_in_bytes` = `memory.memsw.limit_in_bytes` (when the
//!   kernel accounts swap) and `memory.swappiness` = 0.
//! - **v2**: one directory; controllers are enabled in `cgroup.subtree_control` of every
//!   level above the group. Memory without swap is `memory.max` + `memory.swap.max` = 0.
//!
//! **Invariants:**
//! - Nothing here creates files: limits are written to the files the kernel made (a fake
//!   cgroupfs in tests is pre-populated like the kernel does), so a typo can never create a
//!   stray file that silently limits nothing.
//! - Every error names the file and the value.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// CFS period used for CPU quotas (the kernel's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// What a workload may use; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU time as a number of CPUs (0.5 = half of one CPU).
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cgroups unavailable: {0}")]
    Unavailable(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid cgroup name {0:?}")]
    Name(String),
    #[error("{0}")]
    Limit(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// A v1 controller skiff uses, or the single v2 hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
    /// v1 only, for usage figures (often co-mounted with `cpu`); v2's `cpu` has them.
    CpuAcct,
    /// v1 only, to hold a group still (`freezer.state`); v2 has `cgroup.freeze` in every group.
    Freezer,
    Unified,
}

impl Controller {
    const V1: [Controller; 5] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Pids,
        Controller::CpuAcct,
        Controller::Freezer,
    ];

    fn v1_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
            Controller::CpuAcct => "cpuacct",
            Controller::Freezer => "freezer",
            Controller::Unified => "",
        }
    }
}

/// Where skiff's groups live on this machine.
#[derive(Clone, Debug)]
pub struct Cgroups {
    version: Version,
    /// v1: one base directory per mounted controller; v2: one `Unified` entry.
    bases: Vec<(Controller, PathBuf)>,
    /// v2: the controllers to enable below the base (`memory cpu pids`, those available).
    v2_controllers: Vec<String>,
    /// v2: the directories between the hierarchy's root and the base whose
    /// `cgroup.subtree_control` must enable the controllers (skiff's own cgroup first).
    v2_levels: Vec<PathBuf>,
    /// False for a fake cgroupfs on a regular file system (tests).
    kernel: bool,
    /// Path components of the parent name (`skiff/<cluster>` is 2).
    parent_levels: usize,
}

/// In a fake cgroupfs, a directory holding only the kernel's files counts as empty.
fn remove_fake(dir: &Path) -> bool {
    let only_files = fs::read_dir(dir)
        .map(|r| r.flatten().all(|e| e.path().is_file()))
        .unwrap_or(false);
    only_files && fs::remove_dir_all(dir).is_ok()
}

impl Cgroups {
    /// Finds the cgroup hierarchies of this process; groups go under `<own cgroup>/<parent>`.
    pub fn detect(parent: &str) -> Result<Cgroups> {
        let read = |p: &str| {
            fs::read_to_string(p).map_err(|e| Error::Unavailable(format!("reading {p}: {e}")))
        };
        Cgroups::from_system(
            &read("/proc/self/mountinfo")?,
            &read("/proc/self/cgroup")?,
            Path::new("/"),
            parent,
        )
    }

    /// [`Cgroups::detect`] from given texts of `/proc/self/mountinfo` and `/proc/self/cgroup`;
    /// mount points are taken relative to `root` (a fake cgroupfs in tests, `/` otherwise).
    pub fn from_system(
        mountinfo: &str,
        self_cgroup: &str,
        root: &Path,
        parent: &str,
    ) -> Result<Cgroups> {
        check_name(parent)?;
        let mounts = parse_mountinfo(mountinfo);
        let own = parse_self_cgroup(self_cgroup);
        let under_root = |p: &str| root.join(p.trim_start_matches('/'));

        // v1 (or hybrid): any of skiff's controllers mounted as a v1 hierarchy.
        let mut bases = Vec::new();
        for c in Controller::V1 {
            let name = c.v1_name();
            let Some(m) = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == name))
            else {
                continue;
            };
            let own_path = own
                .iter()
                .find(|(ctrls, _)| ctrls.iter().any(|x| x == name))
                .map_or("/", |(_, p)| p.as_str());
            let dir = under_root(&m.mount_point).join(relative_to(own_path, &m.root));
            bases.push((c, dir.join(parent)));
        }
        if !bases.is_empty() {
            return Ok(Cgroups {
                version: Version::V1,
                bases,
                v2_controllers: Vec::new(),
                v2_levels: Vec::new(),
                kernel: root == Path::new("/"),
                parent_levels: parent.split('/').count(),
            });
        }

        let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
            return Err(Error::Unavailable(
                "no cgroup v1 memory/cpu/pids hierarchy and no cgroup2 mount".into(),
            ));
        };
        let mount = under_root(&m.mount_point);
        let available = fs::read_to_string(mount.join("cgroup.controllers")).map_err(|e| {
            Error::Unavailable(format!(
                "reading {}: {e}",
                mount.join("cgroup.controllers").display()
            ))
        })?;
        let v2_controllers: Vec<String> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| available.split_whitespace().any(|a| a == *c))
            .map(String::from)
            .collect();
        if v2_controllers.is_empty() {
            return Err(Error::Unavailable(format!(
                "cgroup2 at {} offers none of memory, cpu, pids",
                mount.display()
            )));
        }
        let own_path = own
            .iter()
            .find(|(ctrls, _)| ctrls.iter().all(String::is_empty))
            .map_or("/", |(_, p)| p.as_str());
        let own_dir = mount.join(relative_to(own_path, &m.root));
        let base = own_dir.join(parent);
        Ok(Cgroups {
            version: Version::V2,
            bases: vec![(Controller::Unified, base.clone())],
            v2_controllers,
            v2_levels: vec![own_dir, base],
            kernel: root == Path::new("/"),
            parent_levels: parent.split('/').count(),
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The base directories (one per v1 controller, or the v2 one).
    pub fn bases(&self) -> impl Iterator<Item = (Controller, &Path)> {
        self.bases.iter().map(|(c, p)| (*c, p.as_path()))
    }

    /// Removes the base directories (and the parent name's levels) when no group is left
    /// in them; a base that still has groups stays. For a supervisor shutting down cleanly.
    pub fn remove_base_if_empty(&self) {
        for (_, base) in &self.bases {
            let mut dir = Some(base.as_path());
            for _ in 0..self.parent_levels {
                match dir {
                    Some(d) if fs::remove_dir(d).is_ok() || !self.kernel && remove_fake(d) => {
                        dir = d.parent();
                    }
                    _ => break,
                }
            }
        }
    }

    /// Does this machine enforce every limit set in `limits`?
    pub fn supports(&self, limits: &Limits) -> Result<()> {
        let need = [
            (limits.memory_bytes.is_some(), Controller::Memory, "memory"),
            (limits.cpus.is_some(), Controller::Cpu, "cpu"),
            (limits.pids.is_some(), Controller::Pids, "pids"),
        ];
        for (wanted, c, name) in need {
            if !wanted {
                continue;
            }
            let present = match self.version {
                Version::V1 => self.bases.iter().any(|(b, _)| *b == c),
                Version::V2 => self.v2_controllers.iter().any(|x| x == name),
            };
            if !present {
                return Err(Error::Unavailable(format!(
                    "the {name} controller is not available (cgroup {})",
                    self.version
                )));
            }
        }
        Ok(())
    }

    /// The group `name` (e.g. `dev/shop/api-1`), without touching the file system.
    pub fn open(&self, name: &str) -> Result<Group> {
        check_name(name)?;
        Ok(Group {
            version: self.version,
            dirs: self.bases.iter().map(|(c, b)| (*c, b.join(name))).collect(),
            bases: self.bases.iter().map(|(_, b)| b.clone()).collect(),
            kernel: self.kernel,
        })
    }

    /// Creates the group `name` with `limits` applied, ready for a workload to join.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Group> {
        self.supports(limits)?;
        let group = self.open(name)?;
        match self.version {
            Version::V1 => {
                for (c, dir) in &group.dirs {
                    mkdir_all(dir)?;
                    apply_v1(*c, dir, limits)?;
                }
            }
            Version::V2 => {
                let (_, leaf) = &group.dirs[0];
                self.prepare_v2(leaf)?;
                apply_v2(leaf, limits)?;
            }
        }
        Ok(group)
    }

    /// v2: creates the levels down to `leaf` and enables the controllers at each level
    /// above it (the "no internal processes" rule: none of those levels may hold a process,
    /// which is why groups live below skiff's own cgroup, never in it).
    fn prepare_v2(&self, leaf: &Path) -> Result<()> {
        let enable: String = self
            .v2_controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        let base = &self.v2_levels[1];
        mkdir_all(leaf)?;
        let mut levels: Vec<PathBuf> = vec![self.v2_levels[0].clone()];
        let mut dir = base.clone();
        levels.push(dir.clone());
        if let Ok(rest) = leaf.strip_prefix(base) {
            let comps: Vec<_> = rest.components().collect();
            for comp in comps.iter().take(comps.len().saturating_sub(1)) {
                dir = dir.join(comp);
                levels.push(dir.clone());
            }
        }
        for level in levels {
            let file = level.join("cgroup.subtree_control");
            let current = fs::read_to_string(&file).unwrap_or_default();
            if self
                .v2_controllers
                .iter()
                .all(|c| current.split_whitespace().any(|x| x == c))
            {
                continue;
            }
            write_file(&file, &enable).map_err(|e| match e {
                Error::Io { source, .. } if source.raw_os_error() == Some(16) => {
                    Error::Unavailable(format!(
                        "cannot enable {enable} in {}: it holds processes; run skiff in a \
                         delegated cgroup of its own (e.g. systemd Delegate=yes)",
                        file.display()
                    ))
                }
                other => other,
            })?;
        }
        Ok(())
    }
}

/// One workload's cgroup (a directory per v1 controller, or one v2 directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    version: Version,
    dirs: Vec<(Controller, PathBuf)>,
    bases: Vec<PathBuf>,
    kernel: bool,
}

/// Usage figures of a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: u64,
    /// CPU time used by the group's processes so far, in nanoseconds.
    pub cpu_ns: Option<u64>,
}

impl Group {
    /// The `cgroup.procs` files a process writes `0` to (itself) to join the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The group's directories, each once (co-mounted v1 controllers share one).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs
            .iter()
            .enumerate()
            .filter(|(i, (_, d))| !self.dirs[..*i].iter().any(|(_, e)| e == d))
            .map(|(_, (_, d))| d.as_path())
    }

    fn dir(&self, c: Controller) -> Option<&Path> {
        let want = match self.version {
            Version::V1 => c,
            Version::V2 => Controller::Unified,
        };
        self.dirs
            .iter()
            .find(|(x, _)| *x == want)
            .map(|(_, d)| d.as_path())
    }

    /// Processes in the group (every hierarchy), sorted, without duplicates.
    pub fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self
            .procs_files()
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .flat_map(|t| {
                t.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// How many times the kernel's OOM killer killed a process of this group.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir(Controller::Memory) else {
            return 0;
        };
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| keyed_value(&t, "oom_kill"))
            .unwrap_or(0)
    }

    pub fn stats(&self) -> Stats {
        let read = |c: Controller, file: &str| -> Option<String> {
            fs::read_to_string(self.dir(c)?.join(file)).ok()
        };
        let number = |s: Option<String>| s.and_then(|t| t.trim().parse::<u64>().ok());
        let (usage, limit, pids) = match self.version {
            Version::V1 => (
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                "pids.current",
            ),
            Version::V2 => ("memory.current", "memory.max", "pids.current"),
        };
        Stats {
            memory_bytes: number(read(Controller::Memory, usage)),
            // v1 reports "unlimited" as a huge page-aligned number.
            memory_limit_bytes: number(read(Controller::Memory, limit))
                .filter(|l| *l < i64::MAX as u64 / 2),
            pids: number(read(Controller::Pids, pids)),
            oom_kills: self.oom_kills(),
            cpu_ns: match self.version {
                Version::V1 => number(read(Controller::CpuAcct, "cpuacct.usage")),
                Version::V2 => read(Controller::Cpu, "cpu.stat")
                    .and_then(|t| keyed_value(&t, "usage_usec"))
                    .map(|us| us * 1000),
            },
        }
    }

    /// Freezes every process of the group (v1 `freezer.state` = `FROZEN`, v2 `cgroup.freeze`
    /// = 1) and waits until the kernel says it is frozen (at most `timeout`; on a timeout the
    /// group is thawed again). Frozen processes keep their pids and memory but run no
    /// instruction, so files they write are still while they are.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        let (file, value, done) = self.freezer(true)?;
        write_file(&file, value)?;
        if let Err(e) = self.wait_freezer(&done, timeout) {
            let _ = self.thaw(timeout);
            return Err(e);
        }
        Ok(())
    }

    /// Lets a frozen group run again (a group that is not frozen stays as it is).
    pub fn thaw(&self, timeout: Duration) -> Result<()> {
        let (file, value, done) = self.freezer(false)?;
        write_file(&file, value)?;
        self.wait_freezer(&done, timeout)
    }

    /// Is the group frozen now?
    pub fn frozen(&self) -> Result<bool> {
        let (_, _, done) = self.freezer(true)?;
        Ok(fs::read_to_string(&done.0)
            .map_err(io("reading", &done.0))?
            .lines()
            .any(|l| l.trim() == done.1))
    }

    /// The file to write, the value, and the file and line that say it took effect.
    #[allow(clippy::type_complexity)]
    fn freezer(&self, freeze: bool) -> Result<(PathBuf, &'static str, (PathBuf, &'static str))> {
        match self.version {
            Version::V1 => {
                let dir = self.dir(Controller::Freezer).ok_or_else(|| {
                    Error::Unavailable("the freezer controller is not mounted (cgroup v1)".into())
                })?;
                let state = dir.join("freezer.state");
                let value = if freeze { "FROZEN" } else { "THAWED" };
                Ok((state.clone(), value, (state, value)))
            }
            Version::V2 => {
                let dir = self.dir(Controller::Unified).ok_or_else(|| {
                    Error::Unavailable("the group has no cgroup2 directory".into())
                })?;
                let (value, done) = if freeze {
                    ("1", "frozen 1")
                } else {
                    ("0", "frozen 0")
                };
                Ok((
                    dir.join("cgroup.freeze"),
                    value,
                    (dir.join("cgroup.events"), done),
                ))
            }
        }
    }

    fn wait_freezer(&self, done: &(PathBuf, &'static str), timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&done.0).map_err(io("reading", &done.0))?;
            if text.lines().any(|l| l.trim() == done.1) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Limit(format!(
                    "{} did not say {:?} within {timeout:?} (it says {:?})",
                    done.0.display(),
                    done.1,
                    text.trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs every process in the group until it is empty (at most `timeout`).
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Limit(format!(
                    "processes {pids:?} of {} survived SIGKILL for {timeout:?}",
                    self.dirs[0].1.display()
                )));
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left in the group and removes its directories (and empty parents up to
    /// the base). A group that does not exist is already removed.
    pub fn remove(&self) -> Result<()> {
        self.kill_all(Duration::from_secs(5))?;
        for dir in self.dirs() {
            rmdir_retrying(dir, self.kernel)?;
            let mut parent = dir.parent();
            while let Some(p) = parent {
                if self.bases.iter().any(|b| b == p) || fs::remove_dir(p).is_err() {
                    break;
                }
                parent = p.parent();
            }
        }
        Ok(())
    }
}

/// rmdir of a cgroup fails with EBUSY for a moment after its last process died.
fn rmdir_retrying(dir: &Path, kernel: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // A fake cgroupfs holds the kernel's files; the kernel's rmdir ignores them.
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && !kernel => {
                return fs::remove_dir_all(dir).map_err(io("removing", dir));
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(io("removing", dir)(e)),
        }
    }
}

fn apply_v1(c: Controller, dir: &Path, limits: &Limits) -> Result<()> {
    match c {
        Controller::Memory => {
            if let Some(bytes) = limits.memory_bytes {
                write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // No swap: the memory+swap limit equals the memory limit (when the kernel
                // accounts swap at all), and the group does not prefer swapping.
                write_optional(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string())?;
                write_optional(&dir.join("memory.swappiness"), "0")?;
            }
        }
        Controller::Cpu => {
            if let Some(cpus) = limits.cpus {
                write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&dir.join("cpu.cfs_quota_us"), &quota_us(cpus)?.to_string())?;
            }
        }
        Controller::Pids => {
            if let Some(n) = limits.pids {
                write_file(&dir.join("pids.max"), &n.to_string())?;
            }
        }
        Controller::CpuAcct | Controller::Freezer | Controller::Unified => {}
    }
    Ok(())
}

fn apply_v2(dir: &Path, limits: &Limits) -> Result<()> {
    if let Some(bytes) = limits.memory_bytes {
        write_file(&dir.join("memory.max"), &bytes.to_string())?;
        write_optional(&dir.join("memory.swap.max"), "0")?;
    }
    if let Some(cpus) = limits.cpus {
        write_file(
            &dir.join("cpu.max"),
            &format!("{} {CPU_PERIOD_US}", quota_us(cpus)?),
        )?;
    }
    if let Some(n) = limits.pids {
        write_file(&dir.join("pids.max"), &n.to_string())?;
    }
    Ok(())
}

/// CFS quota for `cpus` CPUs per [`CPU_PERIOD_US`]; the kernel's minimum is 1 ms.
fn quota_us(cpus: f64) -> Result<u64> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(Error::Limit(format!(
            "cpus must be a positive number, not {cpus}"
        )));
    }
    Ok(((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000))
}

fn io(op: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let op = op.to_string();
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// `mkdir -p`, retried when a parent vanished halfway: removing a group removes its empty
/// parents, and a sibling's removal may take a parent between our mkdirs. Once `dir` exists
/// its parents are not empty, so they stay.
fn mkdir_all(dir: &Path) -> Result<()> {
    let mut attempts = 0;
    loop {
        match fs::create_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 100 => attempts += 1,
            other => return other.map_err(io("creating", dir)),
        }
    }
}

/// Writes to a file the kernel created (never creates one).
fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io(&format!("opening for {value:?}"), path))?;
    f.write_all(value.as_bytes())
        .map_err(io(&format!("writing {value:?} to"), path))
}

/// Like [`write_file`], for files that exist only with some kernel options.
fn write_optional(path: &Path, value: &str) -> Result<()> {
    if path.exists() {
        write_file(path, value)
    } else {
        Ok(())
    }
}

/// `key N` lines (memory.oom_control, memory.events).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_string()))
    }
}

/// `path` (from /proc/self/cgroup) relative to the mount's root within the hierarchy.
fn relative_to(path: &str, mount_root: &str) -> PathBuf {
    let rest = path.strip_prefix(mount_root).unwrap_or(path);
    PathBuf::from(rest.trim_start_matches('/'))
}

struct Mount {
    root: String,
    mount_point: String,
    fstype: String,
    options: Vec<String>,
}

/// `36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,memory`
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                root: unescape(left.get(3)?),
                mount_point: unescape(left.get(4)?),
                fstype: (*right.first()?).to_string(),
                options: right
                    .get(2)
                    .map(|o| o.split(',').map(String::from).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `4:memory:/a/b` lines → (controllers, path); v2's line is `0::/path` (no controllers).
fn parse_self_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            Some((
                ctrls
                    .split(',')
                    .map(|c| c.trim_start_matches("name=").to_string())
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_is_rounded_and_at_least_one_millisecond() {
        assert_eq!(quota_us(0.5).unwrap(), 50_000);
        assert_eq!(quota_us(2.0).unwrap(), 200_000);
        assert_eq!(quota_us(0.001).unwrap(), 1000);
        assert!(quota_us(0.0).is_err());
        assert!(quota_us(f64::NAN).is_err());
    }

    #[test]
    fn names_cannot_leave_the_base() {
        for bad in ["", "/abs", "a/../b", "a//b", ".", "a/"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("dev/shop/api-1").is_ok());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(t, "oom_kill"), Some(3));
        assert_eq!(keyed_value("oom 1\n", "oom_kill"), None);
    }
}
