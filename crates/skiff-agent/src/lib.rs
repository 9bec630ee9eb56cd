//! The node agent: makes the instances running on its node match the allocations the server
//! gave it, and reports what they do.
//!
//! ```text
//!   server ──long poll: allocations──▶ reconcile ──start/stop──▶ process driver (shims), Docker
//!      ▲                                   ▲                                  │
//!      └──── reporter: states, events ◀────┴── wake ◀── monitor tasks ◀──────┘ (exit, probes)
//! ```
//!
//! One reconcile pass takes this node's allocations (the server allocates a service only once
//! its `depends_on` are met), stops the instances no allocation names (or of a changed
//! service or restart generation), restarts exited ones by their restart policy, and starts the
//! missing ones, all in parallel. A monitor task per instance sees an exit within ~10 ms and
//! probes readiness right after start; every state change is reported to the server, which
//! routes to an instance exactly while it is healthy.
//!
//! Modules: `server` (the protocol: registration, heartbeat, allocations long poll, the
//! reporter), `reconcile` (passes, starts, stops, restarts), `launch` (a start through the
//! service's driver), `env` (an instance's environment and dependency addresses),
//! `monitor` (exit and probes per instance), `health` (the probes), `adopt` (re-attaching
//! after a restart), `listener` (logs, exec, signals, stats, data copies), `volumes` (named
//! volumes of process instances: directories, seeds, consistent copies).
//!
//! Workloads are run by drivers behind `skiff_driver::Driver` (host processes, Docker
//! containers), looked up by the service's `driver`; the agent holds each running instance as
//! an `Arc<dyn Workload>` and never asks which kind it is.
//!
//! **Invariants:**
//! - Instance directories under `<data>/instances/` are the truth about what runs: on start
//!   the agent adopts every instance found there (no duplicates, no leaks) and sends a full
//!   report; the server's instance table is a view for `ps`.
//! - One instance id is acted on by at most one start or stop at a time (the live map holds a
//!   placeholder while a start or stop is in flight).

mod adopt;
mod env;
mod health;
mod launch;
pub mod listener;
mod mirror;
mod monitor;
mod reconcile;
pub mod server;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use skiff_client::{Change, Client};
use skiff_driver::{Driver, Ended, Workload};
use skiff_driver_process::ports::{env_name, port_env};
use skiff_driver_process::{self as driver, ShimCommand};
use skiff_model::NewEvent;
use skiff_model::{
    Instance, InstanceId, InstanceState, Release, RestartCondition, ServiceSpec, StackKey,
    WorkloadChange,
};
use tokio::sync::Notify;

use crate::health::{Checker, Probe, Verdict};

#[derive(Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Address instances listen on and are reached at (loopback in `skiff dev`).
    pub node_addr: IpAddr,
    pub shim: ShimCommand,
    /// How often a pass runs when nothing wakes the agent.
    pub resync: Duration,
    /// Environment every instance gets under its own (e.g. `PATH` in `skiff dev`).
    pub base_env: BTreeMap<String, String>,
    /// Where instances' cgroups go, or why there are none (then a service with limits does
    /// not start: limits are never silently dropped).
    pub cgroups: Result<skiff_cgroup::Cgroups, skiff_cgroup::Error>,
    /// The Docker engine, or why there is none (then docker services fail to start, saying so).
    pub docker: Result<skiff_driver_docker::Engine, skiff_driver_docker::Error>,
    /// The server this agent executes for (its allocations, its reports).
    pub server: Client,
    /// The node's name (unique in the cluster) and labels, for placement constraints.
    pub node_name: String,
    /// The port of this agent's own listener (`listener::router`) on the node address; the
    /// server proxies logs, exec, signals and stats there. 0: none.
    pub agent_port: u16,
    pub labels: BTreeMap<String, String>,
    /// The server's own catalog when the agent runs in the server's process (`skiff dev`:
    /// one node, one set of traffic counters); `None`: the agent keeps a copy of the part
    /// its proxies serve, fed by a blocking query on the server (`mirror`).
    pub catalog: Option<Arc<skiff_catalog::Catalog>>,
}

/// An instance the agent knows about.
struct Live {
    release: u64,
    /// The service's restart generation this instance was started for.
    generation: u64,
    spec: ServiceSpec,
    handle: Option<Arc<dyn Workload>>,
    ports: Vec<(String, u16)>,
    observed: Arc<Mutex<Observed>>,
    busy: bool,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    /// Whether its workload runs now (starting, healthy or not).
    fn running(&self) -> bool {
        matches!(
            self.observed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state,
            InstanceState::Starting | InstanceState::Healthy | InstanceState::Unhealthy
        )
    }
}

#[derive(Clone, Debug)]
struct Observed {
    state: InstanceState,
    exit: Option<driver::ExitStatus>,
    restarts: u32,
    restart_at: Option<Instant>,
    started: Instant,
    reason: Option<String>,
}

pub struct Agent {
    cfg: Config,
    /// This node's id (kept in `<data>/node-id`).
    node_id: String,
    /// The allocations the server gave this node; `None` until the first answer (nothing
    /// is stopped before the agent knows what it should run).
    desired: Mutex<Option<server::Desired>>,
    reporter: server::Reporter,
    /// Where services of each stack are reached when this node's catalog copy does not
    /// say yet (their stable address, else the first ready instance), as last learned from
    /// the server's catalog.
    remote: Mutex<HashMap<(StackKey, String), env::Remote>>,
    /// The catalog this node's proxies (stable addresses, an agent's ingress) serve.
    catalog: Arc<skiff_catalog::Catalog>,
    /// Instances drained through this node that older copies of the catalog still list.
    withdrawals: Arc<mirror::Withdrawals>,
    /// The drivers this node has, by the kind a service names.
    drivers: Vec<Arc<dyn Driver>>,
    /// Why a kind of driver is missing (no Docker engine), for the services that need it.
    missing: Vec<(skiff_model::Driver, String)>,
    /// Where drivers report a start's events (image builds).
    events: skiff_driver::Events,
    live: Mutex<HashMap<InstanceId, Live>>,
    releases: Mutex<HashMap<(StackKey, u64), Arc<Release>>>,
    wake: Notify,
    /// Instances stopped for a data copy (`consistency: stop`): not started again until the
    /// copy let them go.
    held: Mutex<std::collections::HashSet<InstanceId>>,
    /// One volume seeds at a time (replicas starting together share their volume).
    seeding: tokio::sync::Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// An agent for the node whose state lives in `cfg.data_dir`.
    pub fn new(cfg: Config) -> std::io::Result<Arc<Agent>> {
        let (drivers, missing) = drivers(&cfg);
        let reporter = server::Reporter::new();
        let sink = reporter.clone();
        let events: skiff_driver::Events = Arc::new(move |id, kind, message| {
            emit(&sink, &id.stack, Some(id), kind, message);
        });
        Ok(Arc::new(Agent {
            node_id: server::node_id(&cfg.data_dir)?,
            desired: Mutex::new(None),
            reporter,
            remote: Mutex::new(HashMap::new()),
            catalog: cfg.catalog.clone().unwrap_or_default(),
            withdrawals: Arc::default(),
            drivers,
            missing,
            events,
            cfg,
            live: Mutex::new(HashMap::new()),
            releases: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            held: Mutex::default(),
            seeding: tokio::sync::Mutex::new(()),
        }))
    }

    /// The driver that runs services naming `kind`, or why this node has none.
    fn driver(&self, kind: skiff_model::Driver) -> Result<&Arc<dyn Driver>, &str> {
        match self.drivers.iter().find(|d| d.kind() == kind) {
            Some(d) => Ok(d),
            None => Err(self
                .missing
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or("no such driver on this node", |(_, why)| why.as_str())),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The catalog this node's proxies serve (the server's own in `skiff dev`, else this
    /// agent's copy): an ingress on the agent reads it.
    pub fn catalog(&self) -> Arc<skiff_catalog::Catalog> {
        self.catalog.clone()
    }

    /// Waits until every state and event reported so far reached the server.
    pub async fn flush_reports(&self) {
        self.reporter.flush().await;
    }

    /// Asks for a reconcile pass now (after a new release, scale, down…).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.cfg
            .data_dir
            .join("instances")
            .join(&id.stack.env)
            .join(&id.stack.stack)
            .join(id.short())
    }

    fn event(&self, stack: &StackKey, instance: Option<&InstanceId>, kind: &str, message: String) {
        emit(&self.reporter, stack, instance, kind, message);
    }

    /// Runs until `shutdown` resolves; then stops every instance when `stop_all` is set
    /// (`skiff dev`), or leaves them running for the next agent to adopt. Fails only when
    /// the server refuses the node (a name taken, a bad address).
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
        stop_all: bool,
    ) -> Result<(), skiff_client::ClientError> {
        if let Err(e) = driver::raise_open_files_limit() {
            tracing::warn!("could not raise the open files limit: {e}");
        }
        tokio::pin!(shutdown);
        let client = self.cfg.server.clone();
        let reg = server::registration(
            &self.cfg.node_name,
            self.cfg.node_addr,
            self.cfg.agent_port,
            &self.cfg.labels,
            self.drivers.iter().map(|d| d.kind()).collect(),
            self.cfg.catalog.is_none(),
        );
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = server::register(&client, &self.node_id, &reg) => r?,
        }
        self.adopt().await;
        // Everything the node runs now, in one report: the server forgets the rest.
        self.report_all();
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let reporter = {
            let (r, c, id) = (self.reporter.clone(), client.clone(), self.node_id.clone());
            tokio::spawn(async move { r.run(c, id, closing_rx).await })
        };
        let heartbeat = tokio::spawn(server::heartbeat(client.clone(), self.node_id.clone(), reg));
        let follow = {
            let agent = self.clone();
            let again = self.clone();
            tokio::spawn(server::follow(
                client,
                self.node_id.clone(),
                move |d| {
                    *agent.desired.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
                    agent.wake();
                },
                move || again.report_all(),
            ))
        };
        let mirror = self.cfg.catalog.is_none().then(|| {
            tokio::spawn(mirror::run(
                self.cfg.server.clone(),
                self.catalog.clone(),
                self.withdrawals.clone(),
            ))
        });
        // An agent with a catalog of its own counts its proxies' requests itself.
        let figures = self.cfg.catalog.is_none().then(|| {
            tokio::spawn(server::figures(
                self.cfg.server.clone(),
                self.node_id.clone(),
                self.catalog.clone(),
            ))
        });
        let stable =
            skiff_ingress::serve_stable_addresses(self.catalog.clone(), Duration::from_secs(2));
        loop {
            self.clone().reconcile().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.resync) => {}
            }
        }
        follow.abort();
        if stop_all {
            self.stop_everything().await;
        }
        // Only what nothing uses any more goes (an agent leaving workloads running keeps
        // their cgroups and networks; one whose node runs nothing leaves no empty ones).
        for d in &self.drivers {
            d.shutdown().await;
        }
        // After the stops: dependents reach what drains through these to the end.
        stable.abort();
        if let Some(m) = &mirror {
            m.abort();
        }
        if let Some(f) = &figures {
            f.abort();
        }
        heartbeat.abort();
        let _ = closing.send(true);
        let _ = reporter.await;
        Ok(())
    }

    /// A release, from the server once (releases never change).
    async fn release(&self, stack: &StackKey, number: u64) -> Option<Arc<Release>> {
        let key = (stack.clone(), number);
        if let Some(r) = self
            .releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Some(r.clone());
        }
        let r = match self.cfg.server.release(stack, number).await {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!("release {number} of {stack}: {e}");
                return None;
            }
        };
        self.releases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, r.clone());
        Some(r)
    }

    fn desired(&self) -> Option<server::Desired> {
        self.desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets an instance's state and reports it at once.
    fn observed_now(
        &self,
        id: &InstanceId,
        observed: &Mutex<Observed>,
        state: InstanceState,
        reason: Option<String>,
    ) {
        {
            let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
            o.state = state;
            if reason.is_some() {
                o.reason = reason;
            }
        }
        self.write_observed(id);
    }

    /// Reports an instance's observed state to the server (for the catalog and `ps`).
    fn write_observed(&self, id: &InstanceId) {
        let record = {
            let live = self.live();
            let Some(l) = live.get(id) else { return };
            self.record(id, l)
        };
        self.reporter.send(Change::Instance(record));
    }

    /// Reports every instance's state now, as a full report.
    fn report_all(&self) {
        let all = {
            let live = self.live();
            live.iter()
                .map(|(id, l)| Change::Instance(self.record(id, l)))
                .collect()
        };
        self.reporter.send_full(all);
    }

    fn record(&self, id: &InstanceId, l: &Live) -> Instance {
        {
            let o = l.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Instance {
                id: id.clone(),
                node: self.node_id.clone(),
                release: l.release,
                state: o.state,
                pid: l.handle.as_ref().and_then(|h| h.pid()),
                ports: l.ports.iter().cloned().collect(),
                restarts: o.restarts,
                exit_code: o.exit.as_ref().and_then(|e| e.code),
                reason: o.reason.clone(),
                updated_ms: now_ms(),
            }
        }
    }

    /// Resource usage of an instance this agent runs (from its cgroup, or the engine); the
    /// CPU in use is measured over [`CPU_SAMPLE`].
    pub async fn stats(&self, id: &InstanceId) -> Option<skiff_model::InstanceStats> {
        let first = self.sample(id).await?;
        let t0 = Instant::now();
        tokio::time::sleep(CPU_SAMPLE).await;
        let mut last = self.sample(id).await?;
        let window = t0.elapsed().as_nanos().max(1) as u64;
        last.cpu_millis = match (first.cpu_ns, last.cpu_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).saturating_mul(1000) / window),
            _ => None,
        };
        Some(last)
    }

    /// One reading of an instance's usage counters.
    async fn sample(&self, id: &InstanceId) -> Option<skiff_model::InstanceStats> {
        let handle = self.live().get(id)?.handle.clone()?;
        let st = handle.stats().await.ok()?;
        Some(skiff_model::InstanceStats {
            memory_bytes: st.memory_bytes,
            memory_limit_bytes: st.memory_limit_bytes,
            pids: st.pids,
            oom_kills: st.oom_kills,
            cpu_ns: st.cpu_ns,
            cpu_millis: None,
        })
    }

    /// The workload of an instance this agent runs.
    fn workload(&self, id: &InstanceId) -> Result<Arc<dyn Workload>, InstanceError> {
        let live = self.live();
        let l = live
            .get(id)
            .ok_or_else(|| InstanceError::NotHere(id.clone()))?;
        l.handle
            .clone()
            .ok_or_else(|| InstanceError::Starting(id.clone()))
    }

    /// Runs `cmd` in an instance: inside its container, or (a process) with the instance's
    /// environment and working directory; at most [`EXEC_TIMEOUT`].
    pub async fn exec(
        &self,
        id: &InstanceId,
        cmd: &[String],
    ) -> Result<(i64, String), InstanceError> {
        if cmd.is_empty() {
            return Err(InstanceError::EmptyCommand);
        }
        let handle = self.workload(id)?;
        let out = tokio::time::timeout(EXEC_TIMEOUT, handle.exec(cmd))
            .await
            .map_err(|_| InstanceError::Timeout(EXEC_TIMEOUT))??;
        Ok((out.exit_code, out.output))
    }

    /// Sends `signal` (e.g. `SIGHUP`, `HUP`) to an instance's workload.
    pub async fn signal(&self, id: &InstanceId, signal: &str) -> Result<(), InstanceError> {
        let name = normalize_signal(signal);
        let sig = Signal::from_str(&name)
            .map_err(|_| InstanceError::UnknownSignal(signal.to_string()))?;
        let handle = self.workload(id)?;
        handle.signal(sig).await?;
        self.event(
            &id.stack,
            Some(id),
            "signalled",
            format!("{} sent", sig.as_str()),
        );
        Ok(())
    }

    /// Instances the agent runs now, with their observed state.
    pub fn snapshot(&self) -> Vec<(InstanceId, InstanceState)> {
        let live = self.live();
        let mut v: Vec<(InstanceId, InstanceState)> = live
            .iter()
            .map(|(id, l)| {
                (
                    id.clone(),
                    l.observed.lock().unwrap_or_else(|p| p.into_inner()).state,
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The signal that stops an instance of `spec` (compose's `stop_signal`, else SIGTERM).
fn stop_signal(spec: &ServiceSpec) -> Signal {
    Signal::from_str(&normalize_signal(&spec.stop_signal)).unwrap_or(Signal::SIGTERM)
}

fn normalize_signal(s: &str) -> String {
    let up = s.to_ascii_uppercase();
    if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    }
}

/// How long `stats` watches the CPU counter to tell the CPU in use.
const CPU_SAMPLE: Duration = Duration::from_millis(200);

/// The longest an `exec` runs.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an instance cannot be exec'd into or signalled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    #[error("{0} is not running here")]
    NotHere(InstanceId),
    #[error("{0} is starting")]
    Starting(InstanceId),
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("empty command")]
    EmptyCommand,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Driver(#[from] skiff_driver::Error),
}

/// The drivers `cfg` gives this node, and why the others are missing.
#[allow(clippy::type_complexity)]
fn drivers(cfg: &Config) -> (Vec<Arc<dyn Driver>>, Vec<(skiff_model::Driver, String)>) {
    let cgroups = match &cfg.cgroups {
        Ok(cg) => Ok(cg.clone()),
        Err(e) => Err(skiff_cgroup::Error::Unavailable(e.to_string())),
    };
    let mut drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(
        skiff_driver_process::driver::ProcessDriver::new(skiff_driver_process::driver::Config {
            shim: cfg.shim.clone(),
            cgroups,
            base_env: cfg.base_env.clone(),
            node_addr: cfg.node_addr,
            root: cfg.data_dir.join("instances"),
        }),
    )];
    let mut missing = Vec::new();
    match &cfg.docker {
        Ok(engine) => drivers.push(Arc::new(skiff_driver_docker::driver::DockerDriver::new(
            engine.clone(),
            cfg.node_addr,
        ))),
        Err(why) => missing.push((skiff_model::Driver::Docker, why.to_string())),
    }
    (drivers, missing)
}

fn emit(
    reporter: &server::Reporter,
    stack: &StackKey,
    instance: Option<&InstanceId>,
    kind: &str,
    message: String,
) {
    let instance = instance.map(InstanceId::short).unwrap_or_default();
    tracing::info!(%stack, %instance, kind, "{message}");
    reporter.send(Change::Event(NewEvent {
        time_ms: now_ms(),
        stack: stack.clone(),
        instance: (!instance.is_empty()).then_some(instance),
        kind: kind.to_string(),
        message,
    }));
}

/// Written next to the driver's files: what the agent needs to adopt an instance.
const META: &str = "instance.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    id: String,
    release: u64,
    #[serde(default)]
    generation: u64,
    spec: ServiceSpec,
    ports: Vec<(String, u16)>,
    env: BTreeMap<String, String>,
    restarts: u32,
    /// What the driver adopts it by besides its directory (`Workload::id`: a container's
    /// id), once it started. Named for the Docker driver, which wrote it first.
    #[serde(default, rename = "container", skip_serializing_if = "Option::is_none")]
    workload_id: Option<String>,
}

async fn write_meta(dir: &Path, meta: &Meta) -> Result<(), String> {
    let json = serde_json::to_vec(meta).expect("meta serializes");
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(dir.join(driver::files::LOG_DIR))
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        driver::write_atomic(&dir.join(META), &json).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// What a start returns: the workload.
type Launched = Arc<dyn Workload>;
