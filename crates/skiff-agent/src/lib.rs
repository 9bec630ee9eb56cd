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
//! reporter), `reconcile` (passes, starts, stops, restarts), `launch` (a process under its
//! shim, or a container), `env` (an instance's environment and dependency addresses),
//! `monitor` (exit and probes per instance), `health` (the probes), `adopt` (re-attaching
//! after a restart), `workload` (the driver handle), `listener` (logs, exec, signals, stats).
//!
//! **Invariants:**
//! - Instance directories under `<data>/instances/` are the truth about what runs: on start
//!   the agent adopts every instance found there (no duplicates, no leaks) and sends a full
//!   report; the server's instance table is a view for `ps`.
//! - One instance id is acted on by at most one start or stop at a time (the live map holds a
//!   placeholder while a start or stop is in flight).

mod adopt;
mod env;
pub mod health;
mod launch;
pub mod listener;
mod mirror;
mod monitor;
mod reconcile;
pub mod server;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use skiff_client::{Change, Client};
use skiff_driver_process::ports::{PortAllocator, env_name, port_env};
use skiff_driver_process::{self as driver, LaunchSpec, ShimCommand, Status};
use skiff_model::NewEvent;
use skiff_model::{
    Instance, InstanceId, InstanceState, Release, RestartCondition, ServiceSpec, StackKey,
};
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::health::{Checker, Probe, Verdict};
use crate::launch::cgroup_name;
use crate::workload::{Container, Handle};

#[derive(Clone, Debug)]
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
    pub cgroups: Result<skiff_cgroup::Cgroups, String>,
    /// The Docker engine, or why there is none (then docker services fail to start, saying so).
    pub docker: Result<skiff_driver_docker::Engine, String>,
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
    handle: Option<Handle>,
    ports: Vec<(String, u16)>,
    env: BTreeMap<String, String>,
    observed: Arc<Mutex<Observed>>,
    busy: bool,
    monitor: Option<tokio::task::JoinHandle<()>>,
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
    ports: PortAllocator,
    live: Mutex<HashMap<InstanceId, Live>>,
    releases: Mutex<HashMap<(StackKey, u64), Arc<Release>>>,
    wake: Notify,
    /// One image build per tag at a time; replicas starting together share it.
    builds: tokio::sync::Mutex<HashMap<String, BuildOnce>>,
    /// Process starts in flight at once: more only oversubscribe the cores (a bring-up of
    /// 1,000 instances ran 512 blocking threads, each polling for its shim).
    process_starts: tokio::sync::Semaphore,
}

/// How many process starts run at once (see [`Agent::process_starts`]).
const PROCESS_STARTS: usize = 16;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// An agent for the node whose state lives in `cfg.data_dir`.
    pub fn new(cfg: Config) -> std::io::Result<Arc<Agent>> {
        Ok(Arc::new(Agent {
            ports: PortAllocator::new(cfg.node_addr),
            node_id: server::node_id(&cfg.data_dir)?,
            desired: Mutex::new(None),
            reporter: server::Reporter::new(),
            remote: Mutex::new(HashMap::new()),
            catalog: cfg.catalog.clone().unwrap_or_default(),
            cfg,
            live: Mutex::new(HashMap::new()),
            releases: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            builds: tokio::sync::Mutex::new(HashMap::new()),
            process_starts: tokio::sync::Semaphore::new(PROCESS_STARTS),
        }))
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
        let instance = instance.map(InstanceId::short).unwrap_or_default();
        tracing::info!(%stack, %instance, kind, "{message}");
        self.reporter.send(Change::Event(NewEvent {
            time_ms: now_ms(),
            stack: stack.clone(),
            instance: (!instance.is_empty()).then_some(instance),
            kind: kind.to_string(),
            message,
        }));
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
            self.cfg.docker.is_ok(),
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
        let mirror = self
            .cfg
            .catalog
            .is_none()
            .then(|| tokio::spawn(mirror::run(self.cfg.server.clone(), self.catalog.clone())));
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
            if let Ok(cg) = &self.cfg.cgroups {
                cg.remove_base_if_empty();
            }
        }
        // After the stops: dependents reach what drains through these to the end.
        stable.abort();
        if let Some(m) = &mirror {
            m.abort();
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
                pid: l.handle.as_ref().and_then(Handle::pid),
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
        if let Handle::Container(c) = handle {
            let st = c.engine.stats(&c.id).await.ok()?;
            return Some(skiff_model::InstanceStats {
                memory_bytes: st.memory_bytes,
                memory_limit_bytes: st.memory_limit_bytes,
                pids: st.pids,
                oom_kills: u64::from(Handle::Container(c).container_oom_killed()),
                cpu_ns: st.cpu_ns,
                cpu_millis: None,
            });
        }
        let group = self
            .cfg
            .cgroups
            .as_ref()
            .ok()?
            .open(&cgroup_name(id))
            .ok()?;
        let st = group.stats();
        Some(skiff_model::InstanceStats {
            memory_bytes: st.memory_bytes,
            memory_limit_bytes: st.memory_limit_bytes,
            pids: st.pids,
            oom_kills: st.oom_kills,
            cpu_ns: st.cpu_ns,
            cpu_millis: None,
        })
    }

    /// Runs `cmd` in an instance: inside its container, or (a process) with the instance's
    /// environment and working directory.
    pub async fn exec(&self, id: &InstanceId, cmd: &[String]) -> Result<(i64, String), String> {
        let (handle, env, spec) = {
            let live = self.live();
            let l = live
                .get(id)
                .ok_or_else(|| format!("{id} is not running here"))?;
            (l.handle.clone(), l.env.clone(), l.spec.clone())
        };
        match handle.ok_or_else(|| format!("{id} is starting"))? {
            Handle::Container(c) => c
                .engine
                .exec(&c.id, cmd, &BTreeMap::new())
                .await
                .map_err(|e| e.to_string()),
            Handle::Process(_) => {
                let (program, args) = cmd.split_first().ok_or("empty command")?;
                let cwd = spec
                    .working_dir
                    .map_or_else(|| self.instance_dir(id).join("work"), PathBuf::from);
                let mut c = tokio::process::Command::new(program);
                c.args(args)
                    .env_clear()
                    .envs(&env)
                    .current_dir(cwd)
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                let out = tokio::time::timeout(Duration::from_secs(300), c.output())
                    .await
                    .map_err(|_| "timed out after 300s".to_string())?
                    .map_err(|e| format!("{program}: {e}"))?;
                let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                output.push_str(&String::from_utf8_lossy(&out.stderr));
                let code = out.status.code().map_or_else(
                    || {
                        128 + i64::from(
                            std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0),
                        )
                    },
                    i64::from,
                );
                Ok((code, output))
            }
        }
    }

    /// Sends `signal` (e.g. `SIGHUP`, `HUP`) to an instance's workload.
    pub async fn signal(&self, id: &InstanceId, signal: &str) -> Result<(), String> {
        let name = normalize_signal(signal);
        let sig = Signal::from_str(&name).map_err(|_| format!("unknown signal {signal:?}"))?;
        let handle = self
            .live()
            .get(id)
            .and_then(|l| l.handle.clone())
            .ok_or_else(|| format!("{id} is not running here"))?;
        match handle {
            Handle::Container(c) => c
                .engine
                .signal(&c.id, sig.as_str())
                .await
                .map_err(|e| e.to_string()),
            Handle::Process(p) => p.signal(sig).map_err(|e| e.to_string()),
        }?;
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

/// Written next to the driver's files: what the agent needs to adopt an instance.
/// How long `stats` watches the CPU counter to tell the CPU in use.
const CPU_SAMPLE: Duration = Duration::from_millis(200);

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
    /// The container's id (Docker driver), once it is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<String>,
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

/// One image build, awaited by every replica that needs it.
type BuildOnce = Arc<tokio::sync::OnceCell<Result<(), String>>>;

/// What a start returns: the workload, its ports as reached from the node, its environment.
type Launched = (Handle, Vec<(String, u16)>, BTreeMap<String, String>);
