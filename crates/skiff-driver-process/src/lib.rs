//! The process driver: each instance is a host process supervised by its own shim.
//!
//! ```text
//!  skiff (agent) ──spawn──▶ skiff __shim <dir>  ──spawn──▶ workload (own process group)
//!        │  launch spec on stdin ─▶ │ writes: child.pid, logs/output.log, exit.json
//!        │  ◀─ "started <pid>" on stdout
//!        └──reads files, signals the workload's group──────────────────────────┘
//! ```
//!
//! The shim is a separate process in its own process group, so the agent can die (`kill -9`)
//! or be upgraded while workloads keep running and logging; a new agent re-adopts them from
//! their instance directories ([`Instance::adopt`]). The agent never holds a pipe to a workload.
//!
//! **Invariants:**
//! - Everything the agent knows about a running instance is in its directory; the files are
//!   written atomically (temp file + rename).
//! - The workload runs in its own process group; stopping signals the whole group, then
//!   SIGKILLs it after the grace period.

pub mod driver;
pub mod ports;
pub mod shim;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How the agent starts a shim: a program and arguments; the instance directory is appended.
/// In production `[<skiff binary>, "__shim"]`.
#[derive(Clone, Debug)]
pub struct ShimCommand(pub Vec<String>);

/// What the shim runs: the agent writes it as JSON to the shim's stdin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Working directory of the workload (created if missing).
    pub cwd: PathBuf,
    /// Rotate `logs/output.log` when it grows past this many bytes.
    pub max_log_bytes: u64,
    /// Rotated files kept (`output.log.1` … `.N`).
    pub keep_logs: u32,
    /// `cgroup.procs` files the workload joins before it runs its program (its limits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_procs: Vec<PathBuf>,
}

pub use skiff_driver::ExitStatus;
pub use skiff_driver::log::{LogRecord, parse_log_line};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("starting shim {program}: {source}")]
    SpawnShim {
        program: String,
        source: std::io::Error,
    },
    #[error("shim for {dir} did not report within {waited:?}")]
    ShimTimeout { dir: PathBuf, waited: Duration },
    #[error("{0}")]
    Start(String),
    #[error("no instance in {0}")]
    NotFound(PathBuf),
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DriverError {
    let path = path.to_path_buf();
    move |source| DriverError::Io { op, path, source }
}

/// Files of an instance directory. Every file an instance start creates costs an inode
/// allocation, which on a busy ext4 is the dearest part of a start: keep them few.
pub mod files {
    /// `<workload pid> <shim pid>`, written by the shim once the workload runs.
    pub const CHILD_PID: &str = "child.pid";
    /// Written by shims before 0.1 (the shim's pid), read when adopting their instances.
    pub const SHIM_PID: &str = "shim.pid";
    /// Written by shims before 0.1 (the launch spec), removed on the next start.
    pub const SPEC: &str = "spec.json";
    pub const EXIT: &str = "exit.json";
    pub use skiff_driver::log::{LOG, LOG_DIR};
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming to", path))
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The workload's and the shim's pid from `child.pid` (the shim's from the older `shim.pid`
/// when the file has only one number, as older shims wrote it).
fn read_pids(dir: &Path) -> Option<(i32, i32)> {
    let text = fs::read_to_string(dir.join(files::CHILD_PID)).ok()?;
    let mut words = text.split_whitespace();
    let child = words.next()?.parse().ok()?;
    let shim = match words.next() {
        Some(w) => w.parse().ok()?,
        None => read_pid(&dir.join(files::SHIM_PID)).unwrap_or(0),
    };
    Some((child, shim))
}

/// The line a shim prints on its stdout once the workload runs (a test harness serving as
/// the shim may print other lines before it).
pub(crate) const STARTED: &str = "skiff-shim started";

/// A descriptor that becomes readable when process `pid` has ended (a Linux pidfd, which
/// works for any process, not only children), so a watcher needs no polling; `None` when the
/// process is already gone or the kernel has no pidfds (before 5.3).
pub fn exit_fd(pid: i32) -> Option<std::os::fd::OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// Raises this process's soft limit of open files to its hard limit: an agent watching 1,000
/// instances holds a pidfd each (a soft limit of 1,024 is still common), besides its sockets.
pub fn raise_open_files_limit() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(())
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM would also mean "exists", but we are the owner.
    kill(Pid::from_raw(pid), None).is_ok()
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A started or adopted instance, known by its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub dir: PathBuf,
    /// The workload's pid, which is also its process group id.
    pub pid: i32,
    pub shim_pid: i32,
}

/// What an instance is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    Exited(ExitStatus),
    /// Neither running nor with a recorded exit (shim killed with -9 together with the
    /// workload, or the machine rebooted).
    Lost,
}

impl Instance {
    /// Starts a workload under a new shim in `dir` and waits until it is running (or failed).
    ///
    /// The launch spec goes to the shim on its stdin and the shim answers on its stdout once
    /// the workload runs: no file to write and none to poll for.
    pub fn start(shim: &ShimCommand, dir: &Path, spec: &LaunchSpec) -> Result<Instance> {
        fs::create_dir_all(dir.join(files::LOG_DIR)).map_err(io("creating", dir))?;
        for stale in [files::EXIT, files::CHILD_PID, files::SHIM_PID, files::SPEC] {
            let _ = fs::remove_file(dir.join(stale));
        }
        let json = serde_json::to_vec(spec).expect("a launch spec serializes");

        let (program, args) = shim.0.split_first().expect("shim command is not empty");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // Its own process group: a Ctrl-C in the agent's terminal does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut shim_child = cmd.spawn().map_err(|source| DriverError::SpawnShim {
            program: program.clone(),
            source,
        })?;
        let shim_pid = shim_child.id() as i32;
        if let Some(mut stdin) = shim_child.stdin.take() {
            // A shim that died at once shows below, by its exit.
            let _ = stdin.write_all(&json);
        }
        let stdout = shim_child
            .stdout
            .take()
            .expect("the shim's stdout is piped");
        let waited = Duration::from_secs(5);
        match read_started(stdout, waited) {
            Ok(Some(pid)) => {
                // The shim lives until the workload exits; `status` reaps it then (no thread
                // per instance waits on it).
                drop(shim_child);
                Ok(Instance {
                    dir: dir.to_path_buf(),
                    pid,
                    shim_pid,
                })
            }
            Ok(None) => {
                let status = shim_child.wait();
                match read_exit(dir) {
                    Some(exit) => Err(DriverError::Start(exit.describe())),
                    None => Err(DriverError::Start(match status {
                        Ok(s) => format!("shim exited before starting the workload ({s})"),
                        Err(e) => format!("shim ended before starting the workload: {e}"),
                    })),
                }
            }
            Err(()) => {
                let _ = shim_child.kill();
                let _ = shim_child.wait();
                Err(DriverError::ShimTimeout {
                    dir: dir.to_path_buf(),
                    waited,
                })
            }
        }
    }

    /// Re-attaches to an instance started by an earlier agent.
    pub fn adopt(dir: &Path) -> Result<Instance> {
        let (pid, shim_pid) =
            read_pids(dir).ok_or_else(|| DriverError::NotFound(dir.to_path_buf()))?;
        Ok(Instance {
            dir: dir.to_path_buf(),
            pid,
            shim_pid,
        })
    }

    pub fn status(&self) -> Status {
        if let Some(exit) = read_exit(&self.dir) {
            self.reap_shim();
            return Status::Exited(exit);
        }
        self.reap_shim();
        if alive(self.pid) || (self.shim_pid > 0 && alive(self.shim_pid)) {
            return Status::Running;
        }
        // The shim may have written exit.json between the two checks.
        match read_exit(&self.dir) {
            Some(exit) => Status::Exited(exit),
            None => Status::Lost,
        }
    }

    /// Collects the shim's exit status once it has exited, when it is this process's child
    /// (started here, not adopted): a shim that ended is then no zombie that looks alive.
    fn reap_shim(&self) {
        if self.shim_pid > 0 {
            let _ = waitpid(Pid::from_raw(self.shim_pid), Some(WaitPidFlag::WNOHANG));
        }
    }

    /// The pids whose end means the instance may have ended: the shim (it writes `exit.json`,
    /// then exits), then the workload itself (should the shim have died first).
    pub fn watched_pids(&self) -> impl Iterator<Item = i32> {
        [self.shim_pid, self.pid].into_iter().filter(|p| *p > 0)
    }

    /// Sends `signal` to the workload's process group (e.g. SIGHUP to reload).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        match killpg(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(DriverError::Start(format!(
                "sending {signal} to process group {}: {e}",
                self.pid
            ))),
        }
    }

    /// Stops the workload: `signal` to its process group, SIGKILL after `grace`, and SIGKILL
    /// to whatever is left of the group once the leader is gone. Returns how it ended.
    pub fn stop(&self, signal: Signal, grace: Duration) -> Result<Status> {
        if let Status::Exited(e) = self.status() {
            return Ok(Status::Exited(e));
        }
        self.signal(signal)?;
        let status = match self.wait_exit(grace) {
            Some(status) => status,
            None => {
                self.signal(Signal::SIGKILL)?;
                self.wait_exit(Duration::from_secs(5))
                    .unwrap_or(Status::Lost)
            }
        };
        // The leader is gone; nothing else of its group may outlive it (background children
        // that ignored or were slow to act on the signal).
        self.signal(Signal::SIGKILL)?;
        Ok(status)
    }

    /// Waits up to `timeout` for the workload to end.
    pub fn wait_exit(&self, timeout: Duration) -> Option<Status> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.status() {
                Status::Running => {}
                other => return Some(other),
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(files::LOG_DIR).join(files::LOG)
    }
}

/// poll(2) for up to `timeout` (`None`: no limit); an interrupted wait is one in which
/// nothing became ready.
pub(crate) fn poll_for(
    fds: &mut [rustix::event::PollFd<'_>],
    timeout: Option<Duration>,
) -> rustix::io::Result<usize> {
    let timeout = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
    match rustix::event::poll(fds, timeout.as_ref()) {
        Err(rustix::io::Errno::INTR) => Ok(0),
        ready => ready,
    }
}

/// Reads the shim's stdout until its `started <pid>` line (`Ok(Some)`), its end without one
/// (`Ok(None)`: it failed and says why in `exit.json`), or `timeout` (`Err`).
fn read_started(
    mut stdout: std::process::ChildStdout,
    timeout: Duration,
) -> Result<Option<i32>, ()> {
    use rustix::event::{PollFd, PollFlags};
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::with_capacity(64);
    loop {
        if let Some(pid) = started_pid(&seen) {
            return Ok(Some(pid));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        let mut fds = [PollFd::new(&stdout, PollFlags::IN)];
        match poll_for(&mut fds, Some(left)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        let mut buf = [0u8; 512];
        match stdout.read(&mut buf) {
            Ok(0) => return Ok(started_pid(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

/// The pid of a complete `skiff-shim started <pid>` line in `out`.
fn started_pid(out: &[u8]) -> Option<i32> {
    out.split(|b| *b == b'\n')
        .rev()
        .skip(1) // the part after the last line break is not a whole line yet
        .find_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            line.strip_prefix(STARTED)?.trim().parse().ok()
        })
}

fn read_exit(dir: &Path) -> Option<ExitStatus> {
    let bytes = fs::read(dir.join(files::EXIT)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_started_line_is_found_among_other_output_only_when_whole() {
        assert_eq!(
            started_pid(b"running 1 test\nskiff-shim started 42\n"),
            Some(42)
        );
        assert_eq!(started_pid(b"skiff-shim started 42"), None);
        assert_eq!(started_pid(b"noise\n"), None);
    }
}
