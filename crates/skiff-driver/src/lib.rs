//! The `Driver` trait: what the agent asks of whatever runs its workloads (host processes
//! under a shim, containers on a Docker engine), the types it speaks in, and the contract
//! battery every driver passes (`testkit`, feature `testkit`).
//!
//! ```text
//!  agent ──Driver::start(StartRequest)──▶ driver ──▶ Arc<dyn Workload>
//!    │       (listen_ports, own_network)               ├─ pid, ports, id, log_dir
//!    │                                                 ├─ wait() / status()   how it ended
//!    │                                                 ├─ signal / stop(signal, grace)
//!    │                                                 ├─ exec / stats
//!    │                                                 └─ release()          what it held
//!    └──Driver::list / adopt(AdoptRequest)──▶ what an earlier agent left running
//! ```
//!
//! The agent keeps its drivers in a map keyed by [`skiff_model::Driver`] and never asks which
//! kind a workload is: what differs between drivers (cgroups and host ports for processes,
//! images and networks for containers) happens behind these two traits.
//!
//! **Invariants:**
//! - Errors crossing this boundary are [`Error`], never strings.
//! - A workload costs no thread, timer or poll of its own while it runs: [`Workload::wait`]
//!   resolves from an event (a pidfd, the engine's `wait`), and the per-start path allocates
//!   only what the workload keeps.
//! - Every driver writes an instance's output into `<instance dir>/logs` in the format of
//!   [`log`], so logs are read the same whatever ran the workload.
//! - This crate depends on skiff-model and nothing of the agent or any driver.

pub mod configs;
pub mod log;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use skiff_model::{ConfigFile, InstanceId, ServiceSpec};

pub use configs::ConfigPlace;

/// Which driver: the same enum a service's spec names (`x-skiff.driver`).
pub use skiff_model::Driver as Kind;

pub type BoxFuture<'a, T> = futures_util::future::BoxFuture<'a, T>;

/// The error of a lower layer (the shim, cgroupfs, the engine), kept as it is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The driver cannot run anything on this node (no Docker engine).
    #[error("the {kind} driver is not available: {reason}")]
    Unavailable { kind: Kind, reason: String },
    /// The service cannot run as asked (no program, no image, limits without cgroups).
    #[error("{0}")]
    Invalid(String),
    /// A host port could not be allocated.
    #[error("allocating a port: {0}")]
    Ports(#[source] std::io::Error),
    /// A step of the driver failed; `source` is the lower layer's error.
    #[error("{op}: {source}")]
    Runtime {
        op: &'static str,
        #[source]
        source: BoxError,
    },
    /// The workload did not start; why, in the shim's or the engine's words.
    #[error("{0}")]
    Start(String),
    /// Nothing to adopt (no record, or what it names is gone).
    #[error("no workload in {0}")]
    NotFound(String),
    /// A command run in a workload could not be run.
    #[error("{program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The driver cannot do this (e.g. stats without cgroups).
    #[error("{what} is not available for this workload")]
    Unsupported { what: &'static str },
}

impl Error {
    /// A failed step, keeping the lower layer's error.
    pub fn runtime(op: &'static str, source: impl Into<BoxError>) -> Error {
        Error::Runtime {
            op,
            source: source.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a workload ended, as its driver recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The workload could not be started at all (e.g. program not found), or was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time_ms: u64,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub fn describe(&self) -> String {
        match (&self.error, self.code, self.signal) {
            (Some(e), _, _) => format!("failed to start: {e}"),
            (_, Some(c), _) => format!("exited with code {c}"),
            (_, _, Some(s)) => match Signal::try_from(s) {
                Ok(sig) => format!("killed by {sig}"),
                Err(_) => format!("killed by signal {s}"),
            },
            _ => "exited".into(),
        }
    }

    /// The end of a workload that neither runs nor left a record of its end (its shim killed
    /// with -9 together with it, the machine rebooted, its container removed).
    pub fn lost() -> ExitStatus {
        ExitStatus {
            code: None,
            signal: None,
            error: Some("lost (no exit record)".into()),
            time_ms: now_ms(),
        }
    }
}

/// How a workload ended, with whether the kernel killed it for memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    pub exit: ExitStatus,
    pub oom_killed: bool,
}

/// What a workload is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Ended(Ended),
}

/// What a command run in a workload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// Standard output, then standard error.
    pub output: String,
}

/// A workload's resource usage counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub oom_kills: u64,
    /// Total CPU time used, in nanoseconds.
    pub cpu_ns: Option<u64>,
}

/// Called by a driver with user-visible events of a start (`building`, `built`), as
/// `(instance, kind, message)`. One sink serves every start (a clone is a reference count).
pub type Events = Arc<dyn Fn(&InstanceId, &'static str, String) + Send + Sync>;

/// Called by a driver once the workload is about to start (its image, cgroup and network
/// ready): the agent records the instance in its directory there, so a crash from then on
/// leaves a record to adopt or clean up.
pub type BeforeStart = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

/// Everything a driver needs to start one instance.
pub struct StartRequest {
    pub instance: InstanceId,
    pub release: u64,
    pub spec: ServiceSpec,
    /// The instance directory: the driver's records and `logs/` go here.
    pub dir: PathBuf,
    /// The environment skiff gives it (`PORT`, `SKIFF_*`, the service's own).
    pub env: BTreeMap<String, String>,
    /// The ports it listens on, from [`Driver::listen_ports`].
    pub listen_ports: Vec<(String, u16)>,
    pub events: Events,
    pub before_start: Option<BeforeStart>,
}

/// What the agent recorded of an instance an earlier agent started.
#[derive(Clone, Debug)]
pub struct AdoptRequest {
    pub instance: InstanceId,
    pub spec: ServiceSpec,
    pub dir: PathBuf,
    /// [`Workload::id`] as it was recorded.
    pub id: Option<String>,
    pub env: BTreeMap<String, String>,
    /// [`Workload::ports`] as they were recorded.
    pub ports: Vec<(String, u16)>,
}

/// Something running in the driver's scope, as [`Driver::list`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// What [`Driver::remove`] takes.
    pub id: String,
    /// Its instance directory, when the driver knows it by one.
    pub dir: Option<PathBuf>,
}

/// A driver: starts workloads, finds and re-adopts the ones an earlier agent left.
pub trait Driver: Send + Sync + fmt::Debug {
    fn kind(&self) -> Kind;

    /// Whether workloads get a network of their own, where they listen on their service's
    /// container ports and reach other workloads of that network by service name; otherwise
    /// they share the node's and listen on host ports.
    fn own_network(&self) -> bool;

    /// The ports an instance of `spec` listens on, as `(name, port)`: host ports taken for it
    /// (give them back with [`Driver::return_ports`] when it does not start), or its
    /// container ports.
    fn listen_ports(&self, spec: &ServiceSpec) -> Result<Vec<(String, u16)>>;

    /// Gives back ports of [`Driver::listen_ports`] that no started workload holds.
    fn return_ports(&self, ports: &[(String, u16)]);

    /// Where config `c` of the instance whose directory is `dir` is written, where the
    /// workload reads it and how a change reaches it (`None`: a target that names no file).
    /// By default under `<dir>/configs/`, read there, replaced atomically.
    fn config_place(&self, dir: &Path, c: &ConfigFile) -> Option<ConfigPlace> {
        configs::in_instance_dir(dir, c)
    }

    /// Whether named volumes of its workloads are directories the agent keeps on the node
    /// (`<data dir>/volumes/<env>/<stack>/<volume>`, handed over as `SKIFF_VOLUME_<NAME>`);
    /// otherwise the driver mounts them itself (the Docker engine's named volumes).
    fn host_volumes(&self) -> bool {
        false
    }

    /// Starts a workload; on failure, whatever it took (ports, cgroup) is given back.
    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<Arc<dyn Workload>>>;

    /// Re-attaches to a workload an earlier agent (or driver value) started.
    fn adopt(&self, req: AdoptRequest) -> BoxFuture<'_, Result<Arc<dyn Workload>>>;

    /// Everything of this driver's scope on the node, running or not.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Listed>>>;

    /// Ends and removes something [`Driver::list`] found that nothing adopted.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// When the agent shuts down: removes what the driver set up for all workloads that no
    /// workload uses any more (an empty cgroup subtree, unused networks); never touches what
    /// a running workload needs.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// One started or adopted workload.
pub trait Workload: Send + Sync + fmt::Debug {
    /// What adoption needs besides the instance directory (a container id); `None` when the
    /// directory is enough.
    fn id(&self) -> Option<&str>;

    /// The main process's pid on the host, while known.
    fn pid(&self) -> Option<u32>;

    /// Its ports as reached from the node: `(name, host port)`.
    fn ports(&self) -> &[(String, u16)];

    /// For events: `pid 123`, `container 0123456789ab`.
    fn describe(&self) -> String;

    /// Where its log records are ([`log`] format).
    fn log_dir(&self) -> PathBuf;

    /// Running, or how it ended; cheap.
    fn status(&self) -> BoxFuture<'_, State>;

    /// Resolves once it ended, with how. Costs no timer or poll while it runs.
    fn wait(&self) -> BoxFuture<'static, Ended>;

    /// Sends `signal` to it (to its whole process group, for a process).
    fn signal(&self, signal: Signal) -> BoxFuture<'_, Result<()>>;

    /// Ends it: `signal`, SIGKILL after `grace`; a container is removed too. Idempotent.
    fn stop(&self, signal: Signal, grace: Duration) -> BoxFuture<'_, Result<Ended>>;

    /// Runs `cmd` in its context (inside its container; with a process's environment and
    /// working directory); dropping the future ends the command where the driver can.
    fn exec<'a>(&'a self, cmd: &'a [String]) -> BoxFuture<'a, Result<ExecOutput>>;

    /// One reading of its usage counters.
    fn stats(&self) -> BoxFuture<'_, Result<Stats>>;

    /// Holds it still (`true`: it keeps its pid and memory but runs no instruction, so the
    /// files it writes are still) or lets it run again (`false`). Unsupported by default.
    fn freeze(&self, frozen: bool) -> BoxFuture<'_, Result<()>> {
        let _ = frozen;
        Box::pin(std::future::ready(Err(Error::Unsupported {
            what: "freezing",
        })))
    }

    /// Once it is stopped: gives back what it held on the node (cgroup, host ports, a
    /// network no longer used).
    fn release(&self) -> BoxFuture<'_, Result<()>>;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The instance directories under `root`, laid out `<env>/<stack>/<instance>` (agents and
/// drivers share the layout); a missing or unreadable level is empty.
pub fn instance_dirs(root: &Path) -> Vec<PathBuf> {
    let list = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|r| {
                r.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    list(root)
        .iter()
        .flat_map(|env| list(env))
        .flat_map(|stack| list(&stack))
        .collect()
}
