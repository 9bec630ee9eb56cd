//! The node agent: makes the running instances match the store's current releases.
//!
//! ```text
//!   store (releases, current) ──▶ reconcile ──start/stop──▶ process driver (shims)
//!          ▲                          ▲                              │
//!          └── observed state, events └──── wake ◀── monitor tasks ◀─┘ (exit, readiness)
//! ```
//!
//! One reconcile pass computes the desired instances (`<service>-1..=replicas` of every
//! stack's current release), stops the ones not desired (or of a changed service), restarts
//! exited ones by their restart policy, and starts missing ones whose dependencies are met
//! (`service_started`, `service_healthy`, `service_completed_successfully`), all startable
//! instances in parallel. A monitor task per instance sees an exit within ~10 ms and probes
//! readiness right after start.
//!
//! **Invariants:**
//! - Instance directories under `<data>/instances/` are the truth about what runs: on start
//!   the agent adopts every instance found there (no duplicates, no leaks); the store's
//!   instance table is a view for `ps`.
//! - One instance id is acted on by at most one start or stop at a time (the live map holds a
//!   placeholder while a start or stop is in flight).

pub mod health;
pub mod listener;
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
    /// Where services of each stack run on other nodes (first ready instance), as last
    /// learned from the server's catalog.
    remote: Mutex<HashMap<(StackKey, String), (IpAddr, u16)>>,
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
        heartbeat.abort();
        let _ = closing.send(true);
        let _ = reporter.await;
        Ok(())
    }

    /// Re-attaches to the instances a previous agent left running.
    async fn adopt(self: &Arc<Self>) {
        let root = self.cfg.data_dir.join("instances");
        let dirs = tokio::task::spawn_blocking(move || instance_dirs(&root))
            .await
            .unwrap_or_default();
        let mut adopted_containers = std::collections::HashSet::new();
        for (id, dir) in dirs {
            let Some(meta) = read_meta(&dir) else {
                continue;
            };
            let handle = match (&meta.container, &self.cfg.docker) {
                (Some(cid), Ok(engine)) => {
                    // A container that is gone was removed behind our back: not adopted, its
                    // directory is replaced by the next start.
                    match engine.state(cid).await {
                        Ok(skiff_driver_docker::State::Missing) | Err(_) => continue,
                        Ok(_) => {}
                    }
                    adopted_containers.insert(cid.clone());
                    let pid = engine
                        .list()
                        .await
                        .ok()
                        .and_then(|l| l.into_iter().find(|c| &c.id == cid).and_then(|c| c.pid));
                    Handle::Container(Container::watch(engine.clone(), cid.clone(), pid, &dir))
                }
                // Its containers cannot be managed without the engine: leave them alone.
                (Some(_), Err(_)) => continue,
                (None, _) => match driver::Instance::adopt(&dir) {
                    Ok(h) => Handle::Process(h),
                    Err(_) => continue,
                },
            };
            self.ports.reserve(meta.ports.iter().map(|(_, p)| *p));
            let observed = Arc::new(Mutex::new(Observed {
                state: InstanceState::Starting,
                exit: None,
                restarts: meta.restarts,
                restart_at: None,
                started: Instant::now(),
                reason: None,
            }));
            let running = handle.status().await == Status::Running;
            let mut live = Live {
                release: meta.release,
                generation: meta.generation,
                spec: meta.spec,
                handle: Some(handle),
                ports: meta.ports,
                env: meta.env,
                observed,
                busy: false,
                monitor: None,
            };
            if running {
                self.event(
                    &id.stack,
                    Some(&id),
                    "adopted",
                    format!(
                        "re-attached to pid {}",
                        live.handle.as_ref().and_then(Handle::pid).unwrap_or(0)
                    ),
                );
            }
            live.monitor = Some(self.spawn_monitor(id.clone(), &live));
            self.live().insert(id, live);
        }
        // Containers of this cluster that no instance directory names: created by an agent that
        // died before recording them, or left by a crash during `down`. Nothing owns them.
        if let Ok(engine) = &self.cfg.docker
            && let Ok(all) = engine.list().await
        {
            for c in all {
                if !adopted_containers.contains(&c.id) {
                    tracing::info!(container = %c.name, "removing an orphaned container");
                    let _ = engine.remove(&c.id).await;
                }
            }
        }
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

    /// One pass: stop what is not allocated here, restart by policy, start what is missing.
    /// (The server allocates a service only once its dependencies are met.)
    pub async fn reconcile(self: Arc<Self>) {
        let Some(allocs) = self.desired() else { return };
        let mut desired: BTreeMap<InstanceId, (Arc<Release>, String, u64)> = BTreeMap::new();
        for (id, a) in allocs.iter() {
            // A release that cannot be fetched now keeps what runs of it as it is.
            let Some(rel) = self.release(&id.stack, a.release).await else {
                return;
            };
            if rel.spec.services.contains_key(&id.service) {
                desired.insert(id.clone(), (rel, id.service.clone(), a.generation));
            }
        }

        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        let mut restamped = Vec::new();
        {
            let mut live = self.live();
            for (id, l) in live.iter_mut() {
                if l.busy {
                    continue;
                }
                // A new release that only changes the replica count (scale) keeps the
                // instances that stay; any other change, or a restart, replaces them.
                let keep = desired.get(id).is_some_and(|(rel, svc, generation)| {
                    *generation == l.generation
                        && same_but_replicas(&rel.spec.services[svc], &l.spec)
                });
                if !keep {
                    l.busy = true;
                    to_stop.push(id.clone());
                    continue;
                }
                // A kept instance belongs to the current release from now on: `up`, `ps`
                // and `status` see it as up to date, whatever release started it.
                if let Some((rel, svc, _)) = desired.get(id)
                    && l.release != rel.number
                {
                    l.release = rel.number;
                    l.spec = rel.spec.services[svc].clone();
                    restamped.push(id.clone());
                }
                let obs = l.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if obs.state == InstanceState::Exited
                    && obs.restart_at.is_some_and(|t| t <= Instant::now())
                {
                    l.busy = true;
                    to_stop.push(id.clone());
                }
            }
            for (id, (rel, svc, generation)) in &desired {
                if !live.contains_key(id) {
                    to_start.push((id.clone(), rel.clone(), svc.clone(), *generation));
                }
            }
        }
        for id in &restamped {
            self.write_observed(id);
        }

        let mut tasks = tokio::task::JoinSet::new();
        for id in to_stop {
            let agent = self.clone();
            tasks.spawn(async move { agent.stop_instance(id).await });
        }
        for (id, rel, svc, generation) in to_start {
            let agent = self.clone();
            tasks.spawn(async move { agent.start_instance(id, rel, svc, generation).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Address of the first ready instance of `service` (for templates and *_SERVICE_*):
    /// on this node, else on another as the server's catalog listed it at the start.
    fn service_address(&self, stack: &StackKey, service: &str) -> Option<(IpAddr, u16)> {
        self.local_address(stack, service).or_else(|| {
            self.remote
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(stack.clone(), service.to_string()))
                .copied()
        })
    }

    /// Learns where the services of `stack` run on other nodes, from the server's catalog,
    /// when `spec` needs a dependency's address and one is not on this node.
    async fn learn_addresses(&self, stack: &StackKey, spec: &ServiceSpec) {
        let needs = spec
            .depends_on
            .keys()
            .any(|dep| self.local_address(stack, dep).is_none())
            || spec.environment.values().any(|v| v.contains("service("));
        if !needs {
            return;
        }
        match self.cfg.server.catalog(stack).await {
            Ok(found) => {
                let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
                remote.retain(|(s, _), _| s != stack);
                for (service, addr) in found {
                    remote.insert((stack.clone(), service), addr);
                }
            }
            Err(e) => tracing::warn!(%stack, "catalog: {e}"),
        }
    }

    fn local_address(&self, stack: &StackKey, service: &str) -> Option<(IpAddr, u16)> {
        let live = self.live();
        let mut candidates: Vec<(&InstanceId, &Live)> = live
            .iter()
            .filter(|(i, _)| &i.stack == stack && i.service == service)
            .collect();
        candidates.sort_by_key(|(i, _)| i.index);
        candidates
            .iter()
            .find_map(|(_, l)| l.ports.first().map(|(_, p)| (self.cfg.node_addr, *p)))
    }

    async fn start_instance(
        self: Arc<Self>,
        id: InstanceId,
        rel: Arc<Release>,
        svc: String,
        generation: u64,
    ) {
        let spec = rel.spec.services[&svc].clone();
        let observed = Arc::new(Mutex::new(Observed {
            state: InstanceState::Starting,
            exit: None,
            restarts: 0,
            restart_at: None,
            started: Instant::now(),
            reason: None,
        }));
        // Claim the id first: no second start can race this one.
        {
            let mut live = self.live();
            if live.contains_key(&id) {
                return;
            }
            live.insert(
                id.clone(),
                Live {
                    release: rel.number,
                    generation,
                    spec: spec.clone(),
                    handle: None,
                    ports: Vec::new(),
                    env: BTreeMap::new(),
                    observed: observed.clone(),
                    busy: true,
                    monitor: None,
                },
            );
        }
        match self.launch(&id, &rel, &spec, generation, 0).await {
            Ok((handle, ports, env)) => {
                let mut live = self.live();
                if let Some(l) = live.get_mut(&id) {
                    l.handle = Some(handle);
                    l.ports = ports;
                    l.env = env;
                    l.busy = false;
                    l.monitor = Some(self.spawn_monitor(id.clone(), l));
                }
            }
            Err(reason) => {
                self.event(&id.stack, Some(&id), "start_failed", reason.clone());
                let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
                o.state = InstanceState::Exited;
                o.reason = Some(reason);
                o.restart_at = Some(Instant::now() + Duration::from_secs(1));
                drop(o);
                if let Some(l) = self.live().get_mut(&id) {
                    l.busy = false;
                }
            }
        }
        self.write_observed(&id);
    }

    /// Starts the workload of `id`; returns its handle and host ports.
    async fn launch(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        generation: u64,
        restarts: u32,
    ) -> Result<Launched, String> {
        if spec.driver == skiff_model::Driver::Docker {
            return self
                .launch_container(id, rel, spec, generation, restarts)
                .await;
        }
        self.learn_addresses(&id.stack, spec).await;
        let mut ports = Vec::new();
        for p in &spec.ports {
            let port = self
                .ports
                .allocate()
                .map_err(|e| format!("allocating a port: {e}"))?;
            ports.push((p.name.clone(), port));
        }
        let mut env = self.cfg.base_env.clone();
        match self.instance_env(id, rel, spec, &ports, false) {
            Ok(e) => env.extend(e),
            Err(e) => {
                self.ports.release(ports.iter().map(|(_, p)| *p));
                return Err(e);
            }
        }
        let dir = self.instance_dir(id);
        let argv = spec.process_argv();
        if argv.is_empty() {
            self.ports.release(ports.iter().map(|(_, p)| *p));
            return Err("no program to run (set command or x-skiff.executable)".into());
        }
        let limits = skiff_cgroup::Limits {
            memory_bytes: spec.limits.memory_bytes,
            cpus: spec.limits.cpus,
            pids: spec.limits.pids,
        };
        let cgroups = self.cfg.cgroups.clone();
        let group_name = cgroup_name(id);
        let mut launch = LaunchSpec {
            argv,
            env: env.clone(),
            cwd: spec
                .working_dir
                .as_ref()
                .map_or_else(|| dir.join("work"), PathBuf::from),
            max_log_bytes: 10 << 20,
            keep_logs: 3,
            cgroup_procs: Vec::new(),
        };
        let meta = Meta {
            id: id.to_string(),
            release: rel.number,
            generation,
            spec: spec.clone(),
            ports: ports.clone(),
            env: env.clone(),
            restarts,
            container: None,
        };
        let shim = self.cfg.shim.clone();
        let _permit = self.process_starts.acquire().await;
        let result = tokio::task::spawn_blocking(move || {
            match &cgroups {
                Ok(cg) => {
                    // A group left by a crashed run would carry its OOM count and processes.
                    if let Ok(stale) = cg.open(&group_name) {
                        stale.remove().map_err(|e| e.to_string())?;
                    }
                    let group = cg.create(&group_name, &limits).map_err(|e| e.to_string())?;
                    launch.cgroup_procs = group.procs_files();
                }
                Err(why) if limits != skiff_cgroup::Limits::default() => {
                    return Err(format!("resource limits need cgroups: {why}"));
                }
                Err(_) => {}
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            let json = serde_json::to_vec(&meta).expect("meta serializes");
            driver::write_atomic(&dir.join(META), &json).map_err(|e| e.to_string())?;
            skiff_store::crash_point("instance-dir-written");
            let started = driver::Instance::start(&shim, &dir, &launch).map_err(|e| e.to_string());
            skiff_store::crash_point("instance-started");
            started
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match result {
            Ok(handle) => {
                self.event(
                    &id.stack,
                    Some(id),
                    "started",
                    format!("pid {} release {}", handle.pid, rel.number),
                );
                Ok((Handle::Process(handle), ports, env))
            }
            Err(e) => {
                self.ports.release(ports.iter().map(|(_, p)| *p));
                Err(e)
            }
        }
    }

    /// The environment skiff gives an instance: `PORT`/`SKIFF_PORT_*` (the ports it listens
    /// on: host ports for processes, container ports for containers), `SKIFF_*`, the address
    /// of each dependency as `<SVC>_SERVICE_HOST/PORT`, then the service's own `environment`
    /// with `{{ service("x") }}` rendered.
    fn instance_env(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        listen_ports: &[(String, u16)],
        container: bool,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = port_env(listen_ports);
        env.insert("SKIFF_INSTANCE".into(), id.short());
        env.insert("SKIFF_SERVICE".into(), id.service.clone());
        env.insert("SKIFF_STACK".into(), id.stack.stack.clone());
        env.insert("SKIFF_ENV".into(), id.stack.env.clone());
        env.insert("SKIFF_RELEASE".into(), rel.number.to_string());
        if !container {
            // The address a process listens on: the node's, where it is reached.
            env.insert("SKIFF_HOST".into(), self.cfg.node_addr.to_string());
        }
        for dep in spec.depends_on.keys() {
            if let Some((host, port)) = self.dependency_address(&id.stack, rel, dep, container) {
                env.insert(format!("{}_SERVICE_HOST", env_name(dep)), host);
                env.insert(format!("{}_SERVICE_PORT", env_name(dep)), port.to_string());
            }
        }
        for (k, v) in &spec.environment {
            let value = self
                .render(&id.stack, rel, v, container)
                .map_err(|e| format!("environment {k}: {e}"))?;
            env.insert(k.clone(), value);
        }
        Ok(env)
    }

    /// Where an instance reaches `dep`: from a container, a container dependency is its
    /// service name (a network alias) and container port; otherwise the node address and the
    /// first running instance's host port.
    fn dependency_address(
        &self,
        stack: &StackKey,
        rel: &Release,
        dep: &str,
        container: bool,
    ) -> Option<(String, u16)> {
        let dep_spec = rel.spec.services.get(dep)?;
        if container && dep_spec.driver == skiff_model::Driver::Docker {
            return dep_spec.ports.first().map(|p| (dep.to_string(), p.target));
        }
        self.service_address(stack, dep)
            .map(|(ip, port)| (ip.to_string(), port))
    }

    /// Starts `id` as a container: the image (built once per release when the service has
    /// `build`), the stack's network, then the container with its labels and limits.
    async fn launch_container(
        &self,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
        generation: u64,
        restarts: u32,
    ) -> Result<Launched, String> {
        use skiff_driver_docker::labels;
        let engine = self.cfg.docker.clone().map_err(|why| {
            format!(
                "service {} runs on Docker ({why}); x-skiff: {{driver: process}} runs it as a \
                 process instead",
                id.service
            )
        })?;
        let image = self.ensure_image(&engine, id, rel, spec).await?;
        let targets: Vec<(String, u16)> = spec
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.target))
            .collect();
        let env = self.instance_env(id, rel, spec, &targets, true)?;
        let stack_labels = BTreeMap::from([
            (labels::STACK.to_string(), id.stack.stack.clone()),
            (labels::ENV.to_string(), id.stack.env.clone()),
        ]);
        let network = format!("skiff_{}_{}", id.stack.stack, id.stack.env);
        engine
            .ensure_network(&network, &stack_labels)
            .await
            .map_err(|e| e.to_string())?;
        let mut container_labels = stack_labels;
        container_labels.insert(labels::SERVICE.into(), id.service.clone());
        container_labels.insert(labels::INSTANCE.into(), id.to_string());
        container_labels.insert(labels::RELEASE.into(), rel.number.to_string());
        let name = format!(
            "skiff-{}-{}-{}-{}",
            engine.cluster(),
            id.stack.env,
            id.stack.stack,
            id.short()
        );
        // A container of this name left by a crash before it was recorded.
        let _ = engine.remove(&name).await;
        let dir = self.instance_dir(id);
        let mut meta = Meta {
            id: id.to_string(),
            release: rel.number,
            generation,
            spec: spec.clone(),
            ports: Vec::new(),
            env: env.clone(),
            restarts,
            container: None,
        };
        write_meta(&dir, &meta).await?;
        skiff_store::crash_point("instance-dir-written");
        let run = skiff_driver_docker::ContainerSpec {
            name,
            image,
            entrypoint: spec.entrypoint.clone(),
            command: spec.command.clone(),
            env: env.clone(),
            working_dir: spec.working_dir.clone(),
            labels: container_labels,
            ports: spec
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.target, p.protocol.clone()))
                .collect(),
            host_ip: self.cfg.node_addr.to_string(),
            network: Some((network, vec![id.service.clone()])),
            mounts: spec
                .mounts
                .iter()
                .map(|m| docker_mount(m, &id.stack.env))
                .collect(),
            memory_bytes: spec.limits.memory_bytes,
            cpus: spec.limits.cpus,
            pids: spec.limits.pids,
            stop_signal: normalize_signal(&spec.stop_signal),
            stop_grace: spec.stop_grace,
        };
        let container = engine.run(&run).await.map_err(|e| e.to_string())?;
        meta.container = Some(container.id.clone());
        meta.ports = container.ports.clone();
        write_meta(&dir, &meta).await?;
        skiff_store::crash_point("instance-started");
        self.event(
            &id.stack,
            Some(id),
            "started",
            format!(
                "container {} release {}",
                &container.id[..12.min(container.id.len())],
                rel.number
            ),
        );
        let handle = Handle::Container(Container::watch(engine, container.id, container.pid, &dir));
        Ok((handle, container.ports, env))
    }

    /// The image a container of `spec` runs: built from `build` (once per release, shared
    /// by the replicas starting together), or `image` as it is on this machine.
    async fn ensure_image(
        &self,
        engine: &skiff_driver_docker::Engine,
        id: &InstanceId,
        rel: &Release,
        spec: &ServiceSpec,
    ) -> Result<String, String> {
        match (&spec.build, &spec.image) {
            (Some(build), image) => {
                // As compose does: with both, the built image gets the `image` name.
                let tag = image.clone().unwrap_or_else(|| {
                    format!(
                        "skiff-{}-{}-{}:r{}",
                        id.stack.env, id.stack.stack, id.service, rel.number
                    )
                    .to_lowercase()
                });
                let cell = self
                    .builds
                    .lock()
                    .await
                    .entry(format!("{tag}#{}", rel.number))
                    .or_default()
                    .clone();
                cell.get_or_init(|| async {
                    self.event(&id.stack, Some(id), "building", format!("image {tag}"));
                    let started = Instant::now();
                    let built = engine
                        .build(
                            Path::new(&build.context),
                            build.dockerfile.as_deref(),
                            &tag,
                            |line| tracing::debug!(image = %tag, "{line}"),
                        )
                        .await
                        .map_err(|e| e.to_string());
                    if built.is_ok() {
                        self.event(
                            &id.stack,
                            Some(id),
                            "built",
                            format!("image {tag} in {:.1}s", started.elapsed().as_secs_f64()),
                        );
                    }
                    built
                })
                .await
                .clone()?;
                Ok(tag)
            }
            (None, Some(image)) => {
                if engine.has_image(image).await {
                    Ok(image.clone())
                } else {
                    Err(format!(
                        "image {image} is not on this machine (skiff does not pull from \
                         registries yet): build it, or give the service a build: section"
                    ))
                }
            }
            (None, None) => Err(format!(
                "service {} has neither an image nor a build context",
                id.service
            )),
        }
    }

    /// Renders `{{ service("db").address }}` (also `.host`, `.port`) in an environment value.
    fn render(
        &self,
        stack: &StackKey,
        rel: &Release,
        value: &str,
        container: bool,
    ) -> Result<String, String> {
        if !value.contains("{{") {
            return Ok(value.to_string());
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let addresses: BTreeMap<String, (String, u16)> = rel
            .spec
            .services
            .keys()
            .filter_map(|n| {
                self.dependency_address(stack, rel, n, container)
                    .map(|a| (n.clone(), a))
            })
            .collect();
        env.add_function(
            "service",
            move |name: String| -> Result<minijinja::Value, minijinja::Error> {
                let (host, port) = addresses.get(&name).ok_or_else(|| {
                    minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        format!("service {name:?} has no running instance"),
                    )
                })?;
                let address = match host.parse::<IpAddr>() {
                    Ok(ip) => SocketAddr::new(ip, *port).to_string(),
                    Err(_) => format!("{host}:{port}"),
                };
                Ok(minijinja::context! { host => host, port => port, address => address })
            },
        );
        env.render_str(value, ()).map_err(|e| e.to_string())
    }

    fn spawn_monitor(self: &Arc<Self>, id: InstanceId, live: &Live) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        let handle = live
            .handle
            .clone()
            .expect("monitored instances have a handle");
        let observed = live.observed.clone();
        let spec = live.spec.clone();
        let ports = live.ports.clone();
        let probe_env = live.env.clone();
        let node = self.cfg.node_addr;
        tokio::spawn(async move {
            let container = match &handle {
                Handle::Container(c) => Some((c.engine.clone(), c.id.clone())),
                Handle::Process(_) => None,
            };
            let readiness = Checker::new(
                Probe::for_instance(
                    spec.health.as_ref(),
                    node,
                    &ports,
                    &probe_env,
                    container.clone(),
                ),
                spec.health.as_ref(),
            );
            let liveness = spec.liveness.as_ref().map(|h| {
                Checker::liveness(
                    Probe::for_instance(Some(h), node, &ports, &probe_env, container),
                    h,
                )
            });
            let mut probes = Probes {
                started: Instant::now(),
                readiness,
                liveness,
                held: false,
                killed_for: None,
            };
            // The exit is watched beside the probes, not between them: a crash during a
            // probe that hangs until its timeout is still seen within ~10 ms.
            let exit = watch_exit(handle.clone());
            tokio::pin!(exit);
            let status = loop {
                let round = async {
                    if probes.killed_for.is_some() {
                        return std::future::pending().await;
                    }
                    agent
                        .probe_once(&id, &spec, &observed, &handle, &mut probes)
                        .await;
                    // Asleep until a check is due: no timer per instance every few ms.
                    tokio::time::sleep_until(probes.next_due()).await;
                };
                tokio::select! {
                    biased;
                    status = &mut exit => break status,
                    () = round => {}
                }
            };
            // Out of traffic before anything else happens: the server withdraws it on this
            // report (the details of the exit follow).
            agent.observed_now(&id, &observed, InstanceState::Exited, None);
            let container_oom = handle.container_oom_killed();
            // Wake the reconciler when the back-off ends, not at the next resync.
            if let Some(delay) = agent.on_exit(
                &id,
                &spec,
                &observed,
                status,
                container_oom,
                probes.killed_for.take(),
            ) {
                tokio::time::sleep(delay).await;
                agent.wake();
            }
        })
    }

    /// One round of the monitor's probes: readiness (into or out of the catalog), then
    /// liveness (stop for a restart, or hold out of traffic under `keep_failed`).
    async fn probe_once(
        &self,
        id: &InstanceId,
        spec: &ServiceSpec,
        observed: &Mutex<Observed>,
        handle: &Handle,
        p: &mut Probes,
    ) {
        if let Some(verdict) = p.readiness.due(p.started).await {
            let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
            let before = o.state;
            match verdict {
                Verdict::Pass if !p.held => {
                    o.state = InstanceState::Healthy;
                    o.reason = None;
                }
                Verdict::Pass => {}
                Verdict::Failing(why) => o.reason = Some(why),
                Verdict::Failed(why) => {
                    o.state = InstanceState::Unhealthy;
                    o.reason = Some(why);
                }
            }
            let now = o.state;
            drop(o);
            if now != before {
                // Into or out of traffic: the server routes to it exactly while it is healthy.
                self.write_observed(id);
                self.wake();
            }
        }
        if let Some(live) = p.liveness.as_mut()
            && let Some(Verdict::Failed(why)) = live.due(p.started).await
        {
            if spec.keep_failed {
                let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
                o.state = InstanceState::Unhealthy;
                o.reason = Some(format!(
                    "liveness: {why}; kept running for inspection (keep_failed)"
                ));
                drop(o);
                self.event(
                    &id.stack,
                    Some(id),
                    "liveness_failed",
                    format!("{why}; kept running out of traffic (keep_failed)"),
                );
                self.write_observed(id);
                p.liveness = None;
                p.held = true;
            } else {
                self.event(
                    &id.stack,
                    Some(id),
                    "liveness_failed",
                    format!("{why}; restarting"),
                );
                self.observed_now(
                    id,
                    observed,
                    InstanceState::Unhealthy,
                    Some(format!("liveness: {why}")),
                );
                p.killed_for = Some(format!("liveness check failed: {why}"));
                let (h, signal, grace) = (handle.clone(), stop_signal(spec), spec.stop_grace);
                tokio::spawn(async move { h.stop(signal, grace).await });
            }
        }
    }

    /// Records an exit; returns the restart delay when the policy restarts it.
    fn on_exit(
        &self,
        id: &InstanceId,
        spec: &ServiceSpec,
        observed: &Mutex<Observed>,
        status: Status,
        container_oom: bool,
        cause: Option<String>,
    ) -> Option<Duration> {
        let exit = match status {
            Status::Exited(e) => e,
            _ => driver::ExitStatus {
                code: None,
                signal: None,
                error: Some("lost (no exit record)".into()),
                time_ms: now_ms(),
            },
        };
        let oom = if container_oom {
            Some(match spec.limits.memory_bytes {
                Some(b) => format!("out of memory: limit {} MiB", b >> 20),
                None => "out of memory".to_string(),
            })
        } else {
            self.oom_killed(id, spec)
        };
        let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
        let restart = match spec.restart.condition {
            RestartCondition::Always => true,
            RestartCondition::OnFailure => !exit.success(),
            RestartCondition::Never => false,
        } && spec.restart.max_attempts.is_none_or(|m| o.restarts < m);
        // Back off by doubling from the policy's delay, up to 10 s; a run longer than 10 s
        // starts the doubling over.
        let ran = o.started.elapsed();
        let exponent = if ran > Duration::from_secs(10) {
            0
        } else {
            o.restarts.min(7)
        };
        let delay = (spec.restart.delay * 2u32.pow(exponent)).min(Duration::from_secs(10));
        o.state = if restart {
            InstanceState::Exited
        } else {
            InstanceState::Failed
        };
        let describe = match oom.as_ref().or(cause.as_ref()) {
            Some(why) => format!("{} ({why})", exit.describe()),
            None => exit.describe(),
        };
        o.reason = Some(describe.clone());
        o.restart_at = restart.then(|| Instant::now() + delay);
        o.exit = Some(exit.clone());
        drop(o);
        let what = if restart {
            format!("{describe}; restarting in {delay:?}")
        } else {
            format!("{describe}; not restarting (policy)")
        };
        let kind = if oom.is_some() {
            "oom_killed"
        } else {
            "exited"
        };
        self.event(&id.stack, Some(id), kind, what);
        self.write_observed(id);
        self.wake();
        restart.then_some(delay)
    }

    /// Why the kernel killed the instance for memory, if it did.
    fn oom_killed(&self, id: &InstanceId, spec: &ServiceSpec) -> Option<String> {
        let cg = self.cfg.cgroups.as_ref().ok()?;
        let kills = cg.open(&cgroup_name(id)).ok()?.oom_kills();
        (kills > 0).then(|| match spec.limits.memory_bytes {
            Some(b) => format!("out of memory: limit {} MiB", b >> 20),
            None => "out of memory".to_string(),
        })
    }

    async fn stop_instance(self: Arc<Self>, id: InstanceId) {
        let (handle, ports, spec, monitor, restarting, restarts) = {
            let mut live = self.live();
            let Some(l) = live.get_mut(&id) else { return };
            let o = l.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let restarting = o.state == InstanceState::Exited && o.restart_at.is_some();
            (
                l.handle.clone(),
                l.ports.clone(),
                l.spec.clone(),
                l.monitor.take(),
                restarting,
                o.restarts,
            )
        };
        if let Some(m) = monitor {
            m.abort();
        }
        // Deregister, drain, then signal: nothing routes to it by the time it gets its stop
        // signal, and the requests it was serving have finished (at most the stop grace
        // period, capped at 30 s, is spent waiting for them).
        let observed = self.live().get(&id).map(|l| l.observed.clone());
        let was_running = observed.as_ref().is_some_and(|o| {
            let o = o.lock().unwrap_or_else(|p| p.into_inner());
            matches!(o.state, InstanceState::Healthy | InstanceState::Unhealthy)
        });
        if let Some(o) = &observed {
            self.observed_now(&id, o, InstanceState::Stopping, None);
        }
        // Only an instance the server still counts requests on waits for them (most have
        // none: no drain call, no connection per stop).
        if was_running && self.reporter.flush().await.contains(&id) {
            let grace = spec.stop_grace.min(Duration::from_secs(30));
            match self.cfg.server.drain(&id, grace).await {
                Ok(d) if !d.drained => self.event(
                    &id.stack,
                    Some(&id),
                    "drain_timeout",
                    format!(
                        "{} requests still in flight after {grace:?}; stopping anyway",
                        d.in_flight
                    ),
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(instance = %id, "drain: {e}; stopping anyway"),
            }
        }
        if let Some(h) = handle.clone() {
            h.stop(stop_signal(&spec), spec.stop_grace).await;
            skiff_store::crash_point("instance-stopped");
        }
        let is_container = handle.as_ref().is_some_and(|h| h.container_id().is_some());
        if is_container {
            // The stack's network goes with its last container (the engine refuses to remove
            // one in use).
            if let Ok(engine) = &self.cfg.docker {
                let _ = engine.remove_unused_networks().await;
            }
        } else {
            // Whatever escaped the process group (a daemon that called setsid) dies with the
            // group.
            if let Ok(cg) = &self.cfg.cgroups
                && let Ok(group) = cg.open(&cgroup_name(&id))
            {
                let removed = tokio::task::spawn_blocking(move || group.remove()).await;
                if let Ok(Err(e)) = removed {
                    self.event(&id.stack, Some(&id), "cgroup", format!("removing: {e}"));
                }
            }
            // Host ports of containers are the engine's; only processes' are ours.
            self.ports.release(ports.iter().map(|(_, p)| *p));
        }
        let dir = self.instance_dir(&id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        self.live().remove(&id);
        self.reporter.send(Change::Removed(id.clone()));
        if restarting {
            // Start again right away, counting the restart.
            let desired = self.desired_release(&id).await;
            if let Some((rel, generation)) = desired {
                let svc = id.service.clone();
                let agent = self.clone();
                agent
                    .clone()
                    .start_instance(id.clone(), rel, svc, generation)
                    .await;
                if let Some(l) = agent.live().get(&id) {
                    l.observed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .restarts = restarts + 1;
                }
                agent.write_observed(&id);
            }
        } else {
            self.event(&id.stack, Some(&id), "stopped", "stopped".into());
            // Replaced (new release, restart): its successor starts now, not at the resync.
            if self.desired().is_some_and(|d| d.contains_key(&id)) {
                self.wake();
            }
        }
    }

    /// The release and restart generation `id` should run now, if it is allocated here.
    async fn desired_release(&self, id: &InstanceId) -> Option<(Arc<Release>, u64)> {
        let a = self.desired()?.get(id)?.clone();
        let rel = self.release(&id.stack, a.release).await?;
        rel.spec
            .services
            .contains_key(&id.service)
            .then_some((rel, a.generation))
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

    /// Stops every instance (`skiff dev` shutting down).
    pub async fn stop_everything(self: &Arc<Self>) {
        let ids: Vec<InstanceId> = self.live().keys().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            if let Some(l) = self.live().get_mut(&id) {
                l.observed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restart_at = None;
                l.busy = true;
            }
            let agent = self.clone();
            tasks.spawn(async move { agent.stop_instance(id).await });
        }
        while tasks.join_next().await.is_some() {}
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

/// A mount as the engine takes it. Volumes are per environment (an environment is an isolated
/// copy of the stack, databases included), except in `default` and for external ones, which
/// keep the name compose gives them.
fn docker_mount(m: &skiff_model::MountSpec, env: &str) -> skiff_driver_docker::MountSpec {
    use skiff_driver_docker::MountSpec as D;
    use skiff_model::MountSpec as M;
    match m {
        M::Bind {
            source,
            target,
            read_only,
        } => D::Bind {
            source: source.clone(),
            target: target.clone(),
            read_only: *read_only,
        },
        M::Volume {
            name,
            external,
            target,
            read_only,
        } => D::Volume {
            name: if name.is_empty() || *external || env == "default" {
                name.clone()
            } else {
                format!("{name}_{env}")
            },
            target: target.clone(),
            read_only: *read_only,
        },
        M::Tmpfs { target, size_bytes } => D::Tmpfs {
            target: target.clone(),
            size_bytes: *size_bytes,
        },
    }
}

/// `<env>/<stack>/<service>-<index>` below the agent's cgroup base.
fn cgroup_name(id: &InstanceId) -> String {
    format!("{}/{}/{}", id.stack.env, id.stack.stack, id.short())
}

fn same_but_replicas(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    ServiceSpec {
        replicas: 0,
        ..a.clone()
    } == ServiceSpec {
        replicas: 0,
        ..b.clone()
    }
}

impl Probes {
    /// When the next check is due (readiness or liveness, whichever comes first).
    fn next_due(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let readiness = self.readiness.next_due().unwrap_or(now);
        match self.liveness.as_ref() {
            Some(l) => readiness.min(l.next_due().unwrap_or(now)),
            None => readiness,
        }
    }
}

/// An instance's probes and what they decided so far.
struct Probes {
    started: Instant,
    readiness: Checker,
    liveness: Option<Checker>,
    /// Failed liveness under `keep_failed`: out of traffic for good.
    held: bool,
    /// Stopped by skiff after failed liveness: the cause recorded with the exit.
    killed_for: Option<String>,
}

/// Resolves when the process behind `pidfd` has ended (at once if it cannot be watched).
#[allow(unsafe_code)]
async fn ended(pidfd: std::os::fd::OwnedFd) {
    // SAFETY: tokio requires that the descriptor stay open and the same for the lifetime of
    // the `AsyncFd`; an `OwnedFd` moved into it is closed only when the `AsyncFd` drops it.
    if let Ok(fd) =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, Interest::READABLE) }
    {
        let _ = fd.readable().await;
    }
}

/// Resolves when the workload is no longer running. A process is watched through pidfds of its
/// shim and then of the workload (no polling: 1,000 instances cost 1,000 idle descriptors);
/// a container, or a kernel without pidfds, is checked every 10 ms.
async fn watch_exit(handle: Handle) -> Status {
    if let Handle::Process(i) = &handle {
        for pid in i.watched_pids() {
            if let Some(fd) = driver::exit_fd(pid) {
                ended(fd).await;
            }
            let status = handle.status().await;
            if status != Status::Running {
                return status;
            }
        }
    }
    loop {
        let status = handle.status().await;
        if status != Status::Running {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
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

fn read_meta(dir: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()
}

/// `<root>/<env>/<stack>/<service>-<index>` directories.
fn instance_dirs(root: &Path) -> Vec<(InstanceId, PathBuf)> {
    let mut out = Vec::new();
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
    for env in list(root) {
        for stack in list(&env) {
            for inst in list(&stack) {
                let text = format!(
                    "{}/{}/{}",
                    env.file_name().unwrap_or_default().to_string_lossy(),
                    stack.file_name().unwrap_or_default().to_string_lossy(),
                    inst.file_name().unwrap_or_default().to_string_lossy()
                );
                if let Ok(id) = text.parse::<InstanceId>() {
                    out.push((id, inst));
                }
            }
        }
    }
    out
}
