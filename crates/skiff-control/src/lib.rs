//! The control plane's deciding half. Agents execute; this decides:
//!
//! ```text
//!  releases, controls (store) ─┐
//!  nodes (kv, heartbeats) ─────┼─▶ planner ─▶ skiff_scheduler::plan ─▶ applier ─(CAS txn)─▶ kv allocs/
//!  instance states (reports) ──┘      ▲                                                      │
//!         │                           └──────────── wake (release, report, node change) ◀────┘
//!         ▼                                                      agents long-poll their node's
//!     catalog (DNS, ingress)                                      allocations and run them
//! ```
//!
//! - **Nodes** register (`kv nodes/<id>`, durable) and heartbeat (in memory only: a node
//!   silent for `down_after` is down; a restarted server gives every node that long again).
//! - **The planner** is one task. A pass reads the current releases and service controls,
//!   holds back the services whose `depends_on` is not met yet by the reported instances,
//!   re-stamps kept allocations with the current release and restart generation, stops the
//!   allocations of services that should not run, and asks the pure scheduler for the rest.
//! - **The applier** commits a pass as one key-value transaction whose every write is
//!   conditional (`Expect::Absent` for a new allocation, `Expect::Revision` for a changed or
//!   removed one): a pass planned on a stale view fails as a whole and is planned again.
//! - **Reports** from agents carry instance states in the order they happened. An instance is
//!   in the catalog exactly while its latest state is `healthy`, it is reported by the node
//!   its allocation names, and that node is not down. Leaving the catalog keeps its traffic
//!   counter, on which the agent's drain call waits before the stop signal. What reports
//!   change is written to the store by one writer task, in the order the reports were
//!   applied (soft writes: agents report everything again when they reconnect).
//!
//! **Invariant:** only the planner task writes allocations, and only through the applier.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use skiff_catalog::{Catalog, Figures, ServiceInfo, ServiceKey, Split, Traffic};
use skiff_client::{
    Allocations, Change, Drained, NodeRegistration, PlacementPreview, Report, ReportAnswer,
    ServicePlacement, UnplacedView,
};
use skiff_model::{
    Allocation, Author, Cause, Desired, Instance, InstanceId, InstanceState, Node, NodeStatus,
    Release, ServiceSpec, StackKey, WaitFor, WorkloadChange,
};
use skiff_scheduler::rollout::{self, Rollout, RolloutState};
use skiff_scheduler::traffic;
use skiff_scheduler::{Group, Options, Snapshot, Unplaced};
use skiff_store::{AnyKv, Expect, Kv, KvError, NewEvent, Observed, Store, TxnOp};
use tokio::sync::{Notify, mpsc, oneshot, watch};

const NODES: &str = "nodes/";
/// How often silent nodes are looked for: a node is out of DNS at most this long after its
/// down timeout.
const LIVENESS_TICK: Duration = Duration::from_millis(25);

/// How often the reaper looks for environments past their ttl or idle time.
const REAP_TICK: Duration = Duration::from_millis(500);
const ALLOCS: &str = "allocs/";
/// Services' stable addresses: `addresses/<env>/<stack>/<service>` → `"127.77.x.y"`. Kept
/// for good, so a service that goes and comes back gets its address again.
const ADDRESSES: &str = "addresses/";
/// Rollouts: `rollouts/<env>/<stack>/<service>` → the service's last [`Rollout`], in flight
/// or over (a pass resumes it where it was, after a restart too).
const ROLLOUTS: &str = "rollouts/";

#[derive(Clone, Debug)]
pub struct Config {
    /// A node not heard from for this long is down.
    pub down_after: Duration,
    /// Seeds the scheduler's choices (ties, sampling).
    pub seed: u64,
    /// Where services' stable addresses come from.
    pub service_addresses: AddressRange,
}

/// A block of loopback addresses (`127.77.0.0/16`), the first and last left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    base: u32,
    size: u32,
}

impl AddressRange {
    /// The `i`-th usable address (1-based), if the block has it.
    fn at(self, i: u32) -> Option<IpAddr> {
        (i >= 1 && i + 1 < self.size).then(|| IpAddr::V4(std::net::Ipv4Addr::from(self.base + i)))
    }
}

impl Default for AddressRange {
    fn default() -> Self {
        "127.77.0.0/16".parse().expect("a valid range")
    }
}

/// Why a text is no [`AddressRange`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressRangeError {
    #[error("{0:?} is not a range like 127.77.0.0/16")]
    Syntax(String),
    #[error("{0:?} is not an IPv4 address")]
    Address(String),
    #[error("/{0}: the prefix length must be 8 to 30")]
    Length(String),
    #[error("{0} is not a loopback address (stable addresses live on 127.0.0.0/8)")]
    NotLoopback(std::net::Ipv4Addr),
}

impl std::str::FromStr for AddressRange {
    type Err = AddressRangeError;

    fn from_str(s: &str) -> std::result::Result<Self, AddressRangeError> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| AddressRangeError::Syntax(s.to_string()))?;
        let ip: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|_| AddressRangeError::Address(ip.to_string()))?;
        let len: u32 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| AddressRangeError::Length(len.to_string()))?;
        if !ip.is_loopback() {
            return Err(AddressRangeError::NotLoopback(ip));
        }
        let size = 1u32 << (32 - len);
        Ok(AddressRange {
            base: u32::from(ip) & !(size - 1),
            size,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            down_after: Duration::from_secs(5),
            seed: 0x5c1ff,
            service_addresses: AddressRange::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no node {0}")]
    UnknownNode(String),
    #[error("node name {name:?} is taken by node {by}")]
    NameTaken { name: String, by: String },
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(String),
    /// No rollout of that service (it never rolled out a change).
    #[error("{0}")]
    NoRollout(String),
    /// The rollout is not in a state the request applies to.
    #[error("{0}")]
    RolloutState(String),
}

impl From<KvError> for ControlError {
    fn from(e: KvError) -> Self {
        ControlError::Store(e.to_string())
    }
}

impl From<skiff_store::StoreError> for ControlError {
    fn from(e: skiff_store::StoreError) -> Self {
        ControlError::Store(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, ControlError>;

/// A registered node and when it was last heard from.
struct NodeLive {
    node: Node,
    seen: Instant,
    seen_ms: u64,
    down: bool,
}

/// An allocation as stored, with its key's revision (for compare-and-swap).
#[derive(Clone)]
struct Stored {
    alloc: Allocation,
    revision: u64,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeLive>,
    allocs: BTreeMap<String, Stored>,
    /// Instance → the node its allocation names (reports check theirs without a scan).
    placed_on: HashMap<InstanceId, String>,
    /// Per node, the revision of the last change to its allocations.
    node_index: HashMap<String, u64>,
    /// Reported instances (each with its node).
    instances: HashMap<InstanceId, Instance>,
    /// Traffic counters of instances taken out of the catalog, for drain calls.
    withdrawn: HashMap<InstanceId, Arc<Traffic>>,
    unplaced: Vec<Unplaced>,
    releases: HashMap<(StackKey, u64), Arc<Release>>,
    /// Services some service of a current release `depends_on`: only their instances'
    /// states can change what the planner does.
    dependencies: std::collections::HashSet<(StackKey, String)>,
    /// Services' stable addresses, and whether the kv has them yet.
    addresses: BTreeMap<ServiceKey, (IpAddr, bool)>,
    /// Replacements that retiring copies wait for (see [`awaited`]).
    awaited: HashSet<InstanceId>,
    /// Each service's last rollout, with its key's revision.
    rollouts: BTreeMap<(StackKey, String), (Rollout, u64)>,
    /// Services with a rollout running: their instances' reports plan again.
    rolling: HashSet<(StackKey, String)>,
    /// When a running rollout has something to do (a monitor window or a delay ends).
    wake_at: Option<u64>,
    /// What each agent's proxies counted per service and release (cumulative, as last sent).
    node_figures: HashMap<String, HashMap<(ServiceKey, u64), Figures>>,
    /// Per node, when its proxies last passed a request to each environment.
    node_last_requests: HashMap<String, BTreeMap<String, u64>>,
    /// Canary and blue-green: the ingress's figures of the new release when its current
    /// step's weight applied, by service: (release, step start, figures then).
    baselines: HashMap<(StackKey, String), (u64, u64, Figures)>,
}

/// What `skiff rollout pause|resume|promote|abort` asks of a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
    /// Canary and blue-green: pass the current step (switch) now.
    Promote,
    /// Every request back to the release before, the new instances stopped, rolled back.
    Abort,
}

impl Steer {
    pub const ALL: [Steer; 4] = [Steer::Pause, Steer::Resume, Steer::Promote, Steer::Abort];

    /// The action's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Steer::Pause => "pause",
            Steer::Resume => "resume",
            Steer::Promote => "promote",
            Steer::Abort => "abort",
        }
    }
}

/// What a pass's rollout step asks of the rest of the pass, by service.
struct Rolled {
    /// Allocations to replace start-first now.
    replace: HashMap<(StackKey, String), Vec<String>>,
    /// Canary and blue-green: copies of the new release beside the replicas.
    extra: HashMap<(StackKey, String), u32>,
    /// Canary and blue-green: (new release, stable release, weight of the new one).
    splits: HashMap<(StackKey, String), (u64, u64, u32)>,
}

/// A service's copies re-stamped in a pass for a reload (its agents rewrite the configs and
/// signal them), for the event that says so.
struct Reloading {
    release: u64,
    configs: Vec<String>,
    signal: String,
    instances: Vec<String>,
}

/// What a pass tells and still has to do: its events (committed with it), rollbacks to start
/// once it is committed, and the crash points its commit passed (see
/// [`skiff_store::crash_point`]: `rollout-started`, `rollout-batch`, `rollout-retire`,
/// `rollout-done`, `rollout-failed`).
#[derive(Default)]
struct AfterPass {
    events: Vec<NewEvent>,
    /// (stack, release to run again, why)
    rollbacks: Vec<(StackKey, u64, String)>,
    points: Vec<&'static str>,
}

pub struct Control {
    store: Store,
    kv: AnyKv,
    /// Observed changes for the store, in order, to the one task that writes them.
    observed: mpsc::UnboundedSender<(Vec<Observed>, oneshot::Sender<()>)>,
    catalog: Arc<Catalog>,
    cfg: Config,
    state: Mutex<State>,
    wake: Notify,
    /// The key-value revision after the last applied pass (allocation long polls wait on it).
    applied: watch::Sender<u64>,
    /// Clients of agents' listeners (drains), by node id, with the address they were made
    /// for: kept so that a drain reuses pooled connections.
    agents: Mutex<HashMap<String, (String, u16, skiff_client::Client)>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn alloc_key(a: &Allocation) -> String {
    format!("{ALLOCS}{}/{}", a.node, a.id)
}

/// The node id in an allocation key.
fn node_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(ALLOCS)?.split('/').next()
}

fn new_alloc_id() -> String {
    format!("{:011x}{:08x}", now_ms(), fastrand::u32(..))
}

impl Control {
    /// Loads nodes, allocations and the last reported instances from `store` (nodes,
    /// allocations and addresses are keys of this crate's own in its kv).
    pub async fn open(store: Store, catalog: Arc<Catalog>, cfg: Config) -> Result<Arc<Control>> {
        let kv = store.kv().clone();
        let mut st = State::default();
        let (nodes, _) = kv.list(NODES).await?;
        for e in nodes {
            let node: Node = serde_json::from_slice(&e.value)
                .map_err(|err| ControlError::Store(format!("{}: {err}", e.key)))?;
            st.nodes.insert(
                node.id.clone(),
                NodeLive {
                    node,
                    seen: Instant::now(),
                    seen_ms: now_ms(),
                    down: false,
                },
            );
        }
        let (allocs, revision) = kv.list(ALLOCS).await?;
        for e in allocs {
            let alloc: Allocation = serde_json::from_slice(&e.value)
                .map_err(|err| ControlError::Store(format!("{}: {err}", e.key)))?;
            let idx = st.node_index.entry(alloc.node.clone()).or_default();
            *idx = (*idx).max(e.mod_revision);
            st.placed_on
                .insert(alloc.instance.clone(), alloc.node.clone());
            st.allocs.insert(
                e.key,
                Stored {
                    alloc,
                    revision: e.mod_revision,
                },
            );
        }
        st.awaited = awaited(&st.allocs);
        for i in store.instances(None).await? {
            st.instances.insert(i.id.clone(), i);
        }
        st.addresses = load_addresses(&kv).await?;
        let (entries, _) = kv.list(ROLLOUTS).await?;
        for e in entries {
            if let (Some(key), Ok(r)) = (
                rollout_key_of(&e.key),
                serde_json::from_slice::<Rollout>(&e.value),
            ) {
                st.rollouts.insert(key, (r, e.mod_revision));
            }
        }
        let (observed, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_observed(store.clone(), queue));
        Ok(Arc::new(Control {
            store,
            kv,
            observed,
            catalog,
            cfg,
            state: Mutex::new(st),
            wake: Notify::new(),
            applied: watch::channel(revision).0,
            agents: Mutex::new(HashMap::new()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a planner pass (a release, scale, stop, restart or down changed something).
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// The planner and the node liveness check, until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        // Liveness on its own task: a long planner pass never delays noticing a dead node.
        let liveness = {
            let control = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LIVENESS_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if control.check_liveness() {
                        control.changed();
                    }
                }
            })
        };
        let reaper = {
            let control = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REAP_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = control.reap().await {
                        tracing::warn!("environment reaper: {e}");
                    }
                }
            })
        };
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.plan_and_apply().await {
                tracing::warn!("planner: {e}");
            }
            // A running rollout's next deadline (end of a monitor window or of a delay).
            let deadline = self.lock().wake_at.map(|at| {
                tokio::time::Instant::now()
                    + Duration::from_millis(at.saturating_sub(now_ms()).max(1))
            });
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        liveness.abort();
        reaper.abort();
    }

    // === environments ===

    /// Downs every active environment past its ttl or idle time
    /// ([`Environment::reap`](skiff_model::Environment::reap) decides).
    async fn reap(&self) -> Result<()> {
        let envs = self.store.envs().await?;
        if envs
            .iter()
            .all(|e| e.ttl_ms.is_none() && e.idle_ms.is_none())
        {
            return Ok(());
        }
        let last = self.last_requests();
        let now = now_ms();
        for env in envs {
            if let Some(reason) = env.reap(now, last.get(&env.name).copied()) {
                tracing::info!("environment {} downed: {reason}", env.name);
                self.down_env(&env.name, Some(reason)).await?;
            }
        }
        Ok(())
    }

    /// When a request last went to each environment, through this server's proxies or any
    /// node's.
    pub fn last_requests(&self) -> BTreeMap<String, u64> {
        let mut last = self.catalog.last_requests(now_ms());
        let st = self.lock();
        for per_node in st.node_last_requests.values() {
            for (env, at) in per_node {
                let e = last.entry(env.clone()).or_default();
                *e = (*e).max(*at);
            }
        }
        last
    }

    /// Takes when a node's proxies last passed a request to each environment.
    pub fn node_last_requests(&self, id: &str, last: BTreeMap<String, u64>) -> Result<()> {
        let mut st = self.lock();
        if !st.nodes.contains_key(id) {
            return Err(ControlError::UnknownNode(id.to_string()));
        }
        st.node_last_requests.insert(id.to_string(), last);
        Ok(())
    }

    /// Forgets what the planner kept of `env`'s removed stacks (`skiff env rm`): their stable
    /// addresses go back to the range and their rollout records go, so environments made and
    /// removed day after day do not use the address range up.
    pub async fn forget_env(&self, env: &str) -> Result<()> {
        let mut ops = Vec::new();
        for prefix in [ADDRESSES, ROLLOUTS] {
            let (entries, _) = self.kv.list(&format!("{prefix}{env}/")).await?;
            ops.extend(
                entries
                    .into_iter()
                    .map(|e| TxnOp::delete(e.key, Expect::Any)),
            );
        }
        if !ops.is_empty() {
            self.kv.txn(ops).await?;
        }
        let mut st = self.lock();
        st.addresses.retain(|k, _| k.env != env);
        st.rollouts.retain(|(stack, _), _| stack.env != env);
        st.rolling.retain(|(stack, _)| stack.env != env);
        Ok(())
    }

    /// Takes every stack of `env` down (instances stop; releases, history and data stay)
    /// and marks its record down, with the reaper's `reason` if it is the reaper's doing;
    /// an event per stack names the environment and why. Returns the stacks taken down.
    pub async fn down_env(&self, env: &str, reason: Option<String>) -> Result<Vec<StackKey>> {
        self.store
            .update_env(env, |e| {
                e.state = skiff_model::EnvState::Down;
                e.down_reason = reason.clone();
                Ok::<(), ()>(())
            })
            .await?;
        let stacks: Vec<StackKey> = self
            .store
            .env_stacks(env)
            .await?
            .into_iter()
            .filter(|s| s.current.is_some())
            .map(|s| s.stack)
            .collect();
        let why = reason.as_deref().unwrap_or("by request");
        let now = now_ms();
        let mut events = Vec::new();
        for stack in &stacks {
            self.store.set_current(stack, None).await?;
            events.push(Observed::Event(NewEvent {
                time_ms: now,
                stack: stack.clone(),
                instance: None,
                kind: "env_down".into(),
                message: format!(
                    "environment {env} down ({why}): stack {} stops",
                    stack.stack
                ),
            }));
        }
        if events.is_empty() {
            events.push(Observed::Event(NewEvent {
                time_ms: now,
                stack: StackKey {
                    env: env.to_string(),
                    stack: "-".into(),
                },
                instance: None,
                kind: "env_down".into(),
                message: format!("environment {env} down ({why}): no stack ran"),
            }));
        }
        self.store.observe(events).await?;
        self.changed();
        Ok(stacks)
    }

    // === nodes ===

    pub async fn register(&self, id: &str, reg: NodeRegistration) -> Result<Node> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ControlError::Invalid(format!(
                "node id {id:?}: use letters, digits, '-' and '_'"
            )));
        }
        if reg.name.is_empty() {
            return Err(ControlError::Invalid("node name is empty".into()));
        }
        if reg.address.parse::<IpAddr>().is_err() {
            return Err(ControlError::Invalid(format!(
                "node address {:?} is not an IP address",
                reg.address
            )));
        }
        let status = {
            let st = self.lock();
            if let Some(other) = st
                .nodes
                .values()
                .find(|n| n.node.name == reg.name && n.node.id != id)
            {
                return Err(ControlError::NameTaken {
                    name: reg.name,
                    by: other.node.id.clone(),
                });
            }
            // Draining is the operator's word: a re-registering agent does not undo it.
            st.nodes
                .get(id)
                .map_or(NodeStatus::Ready, |n| n.node.status)
        };
        let node = Node {
            id: id.to_string(),
            name: reg.name,
            address: reg.address,
            agent_port: reg.agent_port,
            resources: reg.resources,
            labels: reg.labels,
            drivers: reg.drivers,
            proxies: reg.proxies,
            status,
            last_heartbeat_ms: now_ms(),
        };
        self.save_node(&node).await?;
        let fresh = {
            let mut st = self.lock();
            st.nodes
                .insert(
                    id.to_string(),
                    NodeLive {
                        node: node.clone(),
                        seen: Instant::now(),
                        seen_ms: node.last_heartbeat_ms,
                        down: false,
                    },
                )
                .is_none_or(|old| old.down || old.node != node)
        };
        if fresh {
            tracing::info!(node = %node.name, id, address = %node.address, "node registered");
        }
        self.changed();
        Ok(node)
    }

    async fn save_node(&self, node: &Node) -> Result<()> {
        let mut stored = node.clone();
        stored.last_heartbeat_ms = 0;
        let bytes = serde_json::to_vec(&stored).expect("nodes serialize");
        self.kv
            .put(&format!("{NODES}{}", node.id), bytes, Expect::Any)
            .await?;
        Ok(())
    }

    /// Records that `id` is alive; a node that was down comes back.
    pub fn heartbeat(&self, id: &str) -> Result<Node> {
        let mut st = self.lock();
        let n = st
            .nodes
            .get_mut(id)
            .ok_or_else(|| ControlError::UnknownNode(id.to_string()))?;
        n.seen = Instant::now();
        n.seen_ms = now_ms();
        let back = std::mem::take(&mut n.down);
        let node = self.view(n);
        drop(st);
        if back {
            tracing::info!(node = %node.name, "node is back");
            self.changed();
        }
        Ok(node)
    }

    fn view(&self, n: &NodeLive) -> Node {
        let mut node = n.node.clone();
        node.last_heartbeat_ms = n.seen_ms;
        if n.down {
            node.status = NodeStatus::Down;
        }
        node
    }

    /// Drains a node (`Draining`: no new work, its instances move) or lets it take work
    /// again (`Ready`). `id` is a node id or name.
    pub async fn set_status(&self, id: &str, status: NodeStatus) -> Result<Node> {
        if status == NodeStatus::Down {
            return Err(ControlError::Invalid(
                "a node is down when it is silent, not by command".into(),
            ));
        }
        self.update_node(id, |n| n.status = status).await
    }

    /// Sets and removes labels of a node (by id or name).
    pub async fn set_labels(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Node> {
        self.update_node(id, |n| {
            for k in remove {
                n.labels.remove(k);
            }
            n.labels.extend(set);
        })
        .await
    }

    async fn update_node(&self, id: &str, change: impl FnOnce(&mut Node)) -> Result<Node> {
        let mut node = {
            let st = self.lock();
            st.nodes
                .values()
                .find(|n| n.node.id == id || n.node.name == id)
                .map(|n| n.node.clone())
                .ok_or_else(|| ControlError::UnknownNode(id.to_string()))?
        };
        change(&mut node);
        self.save_node(&node).await?;
        let view = {
            let mut st = self.lock();
            let Some(n) = st.nodes.get_mut(&node.id) else {
                return Err(ControlError::UnknownNode(id.to_string()));
            };
            n.node = node;
            self.view(n)
        };
        self.changed();
        Ok(view)
    }

    pub fn nodes(&self) -> Vec<Node> {
        let st = self.lock();
        st.nodes.values().map(|n| self.view(n)).collect()
    }

    /// Marks nodes silent for too long as down and takes their instances out of the catalog
    /// at once; true when one went down (the planner then moves their work).
    fn check_liveness(&self) -> bool {
        let mut st = self.lock();
        let mut gone = Vec::new();
        for n in st.nodes.values_mut() {
            if !n.down && n.seen.elapsed() > self.cfg.down_after {
                n.down = true;
                gone.push(n.node.id.clone());
                tracing::warn!(node = %n.node.name, silent = ?n.seen.elapsed(), "node is down");
            }
        }
        if gone.is_empty() {
            return false;
        }
        let ids: Vec<InstanceId> = st
            .instances
            .values()
            .filter(|i| gone.contains(&i.node))
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            if let Some(t) = self.catalog.remove(&id) {
                st.withdrawn.insert(id, t);
            }
        }
        true
    }

    // === allocations ===

    /// `node`'s allocations once their index passes `index`, or as they are after `wait`.
    pub async fn allocations(&self, node: &str, index: u64, wait: Duration) -> Result<Allocations> {
        let mut rx = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            {
                let st = self.lock();
                if !st.nodes.contains_key(node) {
                    return Err(ControlError::UnknownNode(node.to_string()));
                }
                let now = st.node_index.get(node).copied().unwrap_or(0);
                if now != index || tokio::time::Instant::now() >= deadline {
                    let prefix = format!("{ALLOCS}{node}/");
                    let allocations = st
                        .allocs
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .map(|(_, s)| s.alloc.clone())
                        .collect();
                    return Ok(Allocations {
                        index: now,
                        allocations,
                    });
                }
            }
            // Woken by an applied pass or the deadline; the check above decides.
            let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
        }
    }

    /// Every allocation, ordered by key (node, then id).
    pub fn all_allocations(&self) -> Vec<Allocation> {
        self.lock()
            .allocs
            .values()
            .map(|s| s.alloc.clone())
            .collect()
    }

    fn schedule(
        &self,
        nodes: &[Node],
        allocations: &[Allocation],
        groups: &[Group<'_>],
    ) -> skiff_scheduler::Plan {
        skiff_scheduler::plan(
            &Snapshot {
                nodes,
                allocations,
                groups,
            },
            Options {
                seed: self.cfg.seed,
                now_ms: now_ms(),
                // Liveness is decided here (`check_liveness`), not again by the scheduler.
                down_after_ms: u64::MAX,
            },
        )
    }

    /// Where `spec` would run if it became `stack`'s release now, against the nodes and
    /// every allocation as they are (dependencies taken as met). Nothing is written.
    pub fn preview(&self, stack: &StackKey, spec: &skiff_model::StackSpec) -> PlacementPreview {
        const NEXT: u64 = u64::MAX;
        let st = self.lock();
        let mut stopped: HashMap<&str, u32> = HashMap::new();
        let allocations: Vec<Allocation> = st
            .allocs
            .values()
            .filter_map(|s| {
                let a = &s.alloc;
                if &a.instance.stack != stack {
                    return Some(a.clone());
                }
                match spec.services.get(&a.instance.service) {
                    Some(svc) => {
                        let mut next = a.clone();
                        next.release = NEXT;
                        next.reserved = svc.reservations;
                        Some(next)
                    }
                    None => {
                        *stopped.entry(a.instance.service.as_str()).or_default() += 1;
                        None
                    }
                }
            })
            .collect();
        let nodes: Vec<Node> = st.nodes.values().map(|n| self.view(n)).collect();
        let groups: Vec<Group<'_>> = spec
            .services
            .iter()
            .map(|(service, spec)| Group {
                stack,
                service,
                release: NEXT,
                spec,
                replace: &[],
                extra: 0,
            })
            .collect();
        let plan = self.schedule(&nodes, &allocations, &groups);
        let name_of: HashMap<&str, &str> = st
            .nodes
            .values()
            .map(|n| (n.node.id.as_str(), n.node.name.as_str()))
            .collect();
        let mut out: BTreeMap<&str, ServicePlacement> = spec
            .services
            .keys()
            .map(|s| {
                let keep = allocations
                    .iter()
                    .filter(|a| {
                        &a.instance.stack == stack
                            && a.instance.service == *s
                            && a.replaced_by.is_none()
                    })
                    .count() as u32;
                (
                    s.as_str(),
                    ServicePlacement {
                        service: s.clone(),
                        keep,
                        ..ServicePlacement::default()
                    },
                )
            })
            .collect();
        for p in &plan.place {
            if let Some(s) = out.get_mut(p.instance.service.as_str()) {
                let node = name_of.get(p.node.as_str()).copied().unwrap_or(&p.node);
                *s.place.entry(node.to_string()).or_default() += 1;
                if p.replaces.is_some() {
                    s.keep = s.keep.saturating_sub(1);
                    s.stop += 1;
                }
            }
        }
        for stop in &plan.stop {
            if let Some(s) = out.get_mut(stop.instance.service.as_str()) {
                s.keep = s.keep.saturating_sub(1);
                s.stop += 1;
            }
        }
        for u in plan.unplaced {
            if let Some(s) = out.get_mut(u.service.as_str()) {
                s.unplaced = Some(UnplacedView {
                    env: u.stack.env.clone(),
                    stack: u.stack.stack.clone(),
                    service: u.service.clone(),
                    missing: u.missing,
                    reason: u.reason,
                });
            }
        }
        let mut services: Vec<ServicePlacement> = out.into_values().collect();
        for (service, n) in stopped {
            services.push(ServicePlacement {
                service: service.to_string(),
                stop: n,
                ..ServicePlacement::default()
            });
        }
        services.sort_by(|a, b| a.service.cmp(&b.service));
        PlacementPreview { services }
    }

    /// Work the last pass could place nowhere, with the reasons.
    pub fn unplaced(&self) -> Vec<Unplaced> {
        self.lock().unplaced.clone()
    }

    async fn release(&self, stack: &StackKey, number: u64) -> Result<Option<Arc<Release>>> {
        let key = (stack.clone(), number);
        if let Some(r) = self.lock().releases.get(&key) {
            return Ok(Some(r.clone()));
        }
        let Some(r) = self.store.release(stack, number).await? else {
            return Ok(None);
        };
        let r = Arc::new(r);
        self.lock().releases.insert(key, r.clone());
        Ok(Some(r))
    }

    /// How a service of a release the planner has read moves traffic (a rollout's, say),
    /// without a store read.
    pub fn release_policy(
        &self,
        stack: &StackKey,
        number: u64,
        service: &str,
    ) -> Option<skiff_model::ReleasePolicy> {
        self.lock()
            .releases
            .get(&(stack.clone(), number))
            .and_then(|r| r.spec.services.get(service))
            .map(|svc| svc.release.clone())
    }

    /// One planner pass, committed by the applier; planned again when the commit finds the
    /// allocations changed under it.
    async fn plan_and_apply(&self) -> Result<()> {
        for _ in 0..3 {
            let (ops, mut after) = self.plan().await?;
            if ops.is_empty() {
                return self.after_pass(after).await;
            }
            // The pass's events are part of its transaction: a rollout's steps are told
            // exactly once, even when the server dies right after the commit.
            let events = std::mem::take(&mut after.events);
            match self.store.commit_with_events(ops.clone(), events).await {
                Ok((revision, _)) => {
                    self.applied_ops(ops, revision);
                    for point in &after.points {
                        skiff_store::crash_point(point);
                    }
                    return self.after_pass(after).await;
                }
                Err(skiff_store::StoreError::Kv(KvError::Conflict { key, .. })) => {
                    tracing::info!(%key, "allocations changed under the plan; planning again");
                    self.reload_allocations().await?;
                    let addresses = load_addresses(&self.kv).await?;
                    self.lock().addresses = addresses;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Records a committed pass's events and starts its rollbacks: each deploys the release
    /// rolled back to as a new release, replaced by `rollback_config`.
    async fn after_pass(&self, mut after: AfterPass) -> Result<()> {
        for e in after.events {
            self.store.append_event(e).await?;
        }
        // One rollback per stack, however many of its services failed.
        after.rollbacks.sort();
        after.rollbacks.dedup_by(|a, b| a.0 == b.0);
        for (stack, to, why) in after.rollbacks {
            if let Err(e) = self
                .rollback_because(&stack, Some(to), Some(why), None)
                .await
            {
                tracing::warn!(%stack, "rollback to release {to}: {e}");
            }
        }
        Ok(())
    }

    /// Deploys release `to` of `stack` again as a new release (default: the one before the
    /// current), its changed services replaced by their `rollback_config`; returns it.
    /// `author`: who asked; `None` when the control plane rolls back on its own, recorded as
    /// `skiff@<this host>` with [`Cause::AutomaticRollback`].
    pub async fn rollback(
        &self,
        stack: &StackKey,
        to: Option<u64>,
        author: Option<Author>,
    ) -> Result<Release> {
        self.rollback_because(stack, to, None, author).await
    }

    /// [`Control::rollback`], with why the control plane rolled back (kept as the rollback's
    /// reason, so that `up` of the release rolled back can say it).
    async fn rollback_because(
        &self,
        stack: &StackKey,
        to: Option<u64>,
        why: Option<String>,
        author: Option<Author>,
    ) -> Result<Release> {
        let state = self
            .store
            .stacks()
            .await?
            .into_iter()
            .find(|s| &s.stack == stack);
        let current = state
            .as_ref()
            .and_then(|s| s.current)
            .ok_or_else(|| ControlError::Invalid(format!("stack {stack} runs no release")))?;
        let to = match to {
            Some(n) => n,
            None if current > 1 => current - 1,
            None => {
                return Err(ControlError::Invalid(format!(
                    "stack {stack} has no release before {current} to roll back to"
                )));
            }
        };
        if to == current {
            return Err(ControlError::Invalid(format!(
                "release {to} is the one stack {stack} runs"
            )));
        }
        let old = self
            .release(stack, to)
            .await?
            .ok_or_else(|| ControlError::Invalid(format!("stack {stack} has no release {to}")))?;
        // The release, its rollouts (replaced by rollback_config) and its event in one
        // transaction: a crash leaves all of it or none (then a pending automatic rollback
        // is started again).
        let now = now_ms();
        // Unconditional: they replace whatever rollout each service had (a planner pass that
        // read the one before conflicts on its revision and plans again).
        let rollouts = |number: u64| -> Vec<TxnOp> {
            old.spec
                .services
                .keys()
                .map(|svc| {
                    let mut r = Rollout::new(number, Some(current), 0, now);
                    r.rollback = true;
                    // The service's restart generation: the rollback's rollout is its own.
                    r.generation = state
                        .as_ref()
                        .and_then(|s| s.controls.get(svc))
                        .map_or(0, |c| c.generation);
                    // Why, so that `up` of the release rolled back can say it.
                    r.reason = why.clone();
                    TxnOp::put(
                        rollout_key(stack, svc),
                        serde_json::to_vec(&r).expect("rollouts serialize"),
                        Expect::Any,
                    )
                })
                .collect()
        };
        let (rel, revision) = self
            .store
            .create_release_with(
                Release {
                    stack: stack.clone(),
                    number: 0,
                    created_ms: now,
                    spec: old.spec.clone(),
                    source: old.source.clone(),
                    author: author.clone().unwrap_or_else(|| Author {
                        user: "skiff".into(),
                        host: skiff_client::author::host_name(),
                    }),
                    cause: match author {
                        Some(_) => Cause::Rollback { to, from: current },
                        None => Cause::AutomaticRollback { to, from: current },
                    },
                },
                |rel| {
                    let event = NewEvent {
                        time_ms: now,
                        stack: stack.clone(),
                        instance: None,
                        kind: "rollback".into(),
                        message: format!(
                            "release {} runs release {to}'s spec again (from release {current})",
                            rel.number
                        ),
                    };
                    (rollouts(rel.number), vec![event])
                },
            )
            .await?;
        self.applied_ops(rollouts(rel.number), revision);
        skiff_store::crash_point("rollout-rollback");
        self.changed();
        Ok(rel)
    }

    async fn reload_allocations(&self) -> Result<()> {
        let (entries, revision) = self.kv.list(ALLOCS).await?;
        let mut allocs = BTreeMap::new();
        for e in entries {
            if let Ok(alloc) = serde_json::from_slice::<Allocation>(&e.value) {
                allocs.insert(
                    e.key,
                    Stored {
                        alloc,
                        revision: e.mod_revision,
                    },
                );
            }
        }
        let mut st = self.lock();
        st.placed_on = allocs
            .values()
            .map(|s| (s.alloc.instance.clone(), s.alloc.node.clone()))
            .collect();
        st.allocs = allocs;
        st.awaited = awaited(&st.allocs);
        for idx in st.node_index.values_mut() {
            *idx = (*idx).max(revision);
        }
        drop(st);
        self.applied.send_replace(revision);
        Ok(())
    }

    /// Mirrors a committed transaction in memory and wakes the long polls of its nodes.
    fn applied_ops(&self, ops: Vec<TxnOp>, revision: u64) {
        let mut st = self.lock();
        // Every op of a plan changes its key (puts, and deletes of keys read at a revision),
        // so they took the consecutive revisions that end at `revision`: each allocation
        // keeps its own, which the next pass's compare-and-swap names.
        let first = revision + 1 - ops.len() as u64;
        for (k, op) in ops.into_iter().enumerate() {
            let revision = first + k as u64;
            if let Some(key) = rollout_key_of(&op.key) {
                match op.value.as_deref().map(serde_json::from_slice::<Rollout>) {
                    Some(Ok(r)) => {
                        st.rollouts.insert(key, (r, revision));
                    }
                    _ => {
                        st.rollouts.remove(&key);
                    }
                }
                continue;
            }
            if let Some(service) = op.key.strip_prefix(ADDRESSES) {
                if let Some(key) = service_key_of(service)
                    && let Some(a) = st.addresses.get_mut(&key)
                {
                    a.1 = true;
                }
                continue;
            }
            if let Some(node) = node_of_key(&op.key) {
                st.node_index.insert(node.to_string(), revision);
            }
            match op.value {
                Some(bytes) => {
                    if let Ok(alloc) = serde_json::from_slice::<Allocation>(&bytes) {
                        st.placed_on
                            .insert(alloc.instance.clone(), alloc.node.clone());
                        st.allocs.insert(op.key, Stored { alloc, revision });
                    }
                }
                None => {
                    if let Some(gone) = st.allocs.remove(&op.key)
                        && st.placed_on.get(&gone.alloc.instance) == Some(&gone.alloc.node)
                    {
                        st.placed_on.remove(&gone.alloc.instance);
                    }
                }
            }
        }
        st.awaited = awaited(&st.allocs);
        drop(st);
        self.applied.send_replace(revision);
    }

    /// Plans a pass: the writes that make the allocations match the releases.
    async fn plan(&self) -> Result<(Vec<TxnOp>, AfterPass)> {
        let stacks = self.store.stacks().await?;
        let mut releases = Vec::new();
        for s in &stacks {
            if let Some(n) = s.current
                && let Some(rel) = self.release(&s.stack, n).await?
            {
                releases.push((s, rel));
            }
        }
        // The releases allocations were placed or re-stamped under: whether a copy runs as
        // the current release wants (else a rollout replaces it).
        let placed_under: BTreeSet<(StackKey, u64)> = self
            .lock()
            .allocs
            .values()
            .map(|s| (s.alloc.instance.stack.clone(), s.alloc.release))
            .collect();
        let mut specs: HashMap<(StackKey, u64), Arc<Release>> = HashMap::new();
        for (stack, n) in placed_under {
            if let Some(rel) = self.release(&stack, n).await? {
                specs.insert((stack, n), rel);
            }
        }
        // Names of services without a current release stop resolving now.
        let mut known = BTreeMap::new();
        let mut ops = Vec::new();
        {
            let mut st = self.lock();
            for (s, rel) in &releases {
                for (svc, spec) in &rel.spec.services {
                    let key = ServiceKey::new(&s.stack, svc);
                    let mut info = service_info(spec);
                    info.address =
                        stable_address(self.cfg.service_addresses, &mut st.addresses, &key);
                    if let Some(ip) = info.address
                        && st.addresses.get(&key).is_some_and(|a| !a.1)
                    {
                        ops.push(TxnOp::put(
                            address_key(&key),
                            serde_json::to_vec(&ip).expect("addresses serialize"),
                            Expect::Absent,
                        ));
                    }
                    known.insert(key, info);
                }
            }
        }

        let mut st = self.lock();
        st.dependencies = releases
            .iter()
            .flat_map(|(s, rel)| {
                rel.spec
                    .services
                    .values()
                    .flat_map(|spec| spec.depends_on.keys())
                    .map(|dep| (s.stack.clone(), dep.clone()))
            })
            .collect();
        // (stack, service) → (release, generation, hold new placements back)
        let mut wanted: HashMap<(&StackKey, &str), (&Release, u64, bool)> = HashMap::new();
        for (s, rel) in &releases {
            for (svc, spec) in &rel.spec.services {
                let control = s.controls.get(svc).cloned().unwrap_or_default();
                if control.stopped {
                    continue;
                }
                let held = !dependencies_met(&st.instances, &s.stack, spec);
                wanted.insert((&s.stack, svc.as_str()), (rel, control.generation, held));
            }
        }

        // Each allocation as this pass leaves it: (value, stored revision, changed).
        let by_id: HashMap<&str, &Allocation> = st
            .allocs
            .values()
            .map(|s| (s.alloc.id.as_str(), &s.alloc))
            .collect();
        let mut next: BTreeMap<String, (Allocation, u64, bool)> = BTreeMap::new();
        let mut outdated_ids: HashSet<String> = HashSet::new();
        let mut reloads: BTreeMap<(StackKey, String), Reloading> = BTreeMap::new();
        // Copies stopped in this pass because their replacements are ready: a rollout still
        // sees them once, to learn which replacement was theirs.
        let mut retired: Vec<Allocation> = Vec::new();
        let mut rollout_retired = false;
        for (key, stored) in &st.allocs {
            let a = &stored.alloc;
            let Some((rel, generation, _)) =
                wanted.get(&(&a.instance.stack, a.instance.service.as_str()))
            else {
                ops.push(TxnOp::delete(
                    key.clone(),
                    Expect::Revision(stored.revision),
                ));
                continue;
            };
            let mut n = a.clone();
            let mut changed = false;
            let draining = st
                .nodes
                .get(&a.node)
                .is_some_and(|n| n.node.status == NodeStatus::Draining);
            if let Some(by) = &a.replaced_by {
                match by_id.get(by.as_str()) {
                    // Moved off a node that was undrained since: it is one of the replicas
                    // again (a replacement of the same release and generation is a move; one
                    // of a newer release or generation is a rollout's).
                    Some(r)
                        if !draining && r.release == a.release && r.generation == a.generation =>
                    {
                        n.replaced_by = None;
                        changed = true;
                    }
                    // Its replacement is gone (stopped, or its node went down): the same,
                    // and it is replaced anew if still due.
                    None => {
                        n.replaced_by = None;
                        changed = true;
                    }
                    Some(r) if ready(&st.instances, r) => {
                        tracing::info!(instance = %a.instance, by = %r.instance, "replaced; stopping");
                        ops.push(TxnOp::delete(
                            key.clone(),
                            Expect::Revision(stored.revision),
                        ));
                        if r.release != a.release {
                            rollout_retired = true;
                        }
                        retired.push(a.clone());
                        continue;
                    }
                    Some(_) => {}
                }
            }
            // A copy of an older release whose spec runs differently, or of an older
            // generation (`skiff restart`), is replaced by the service's rollout; any other (a
            // scale, a policy change) is re-stamped here: its agent keeps the instance. A copy
            // whose change is a reload (configs only, `x-skiff.reload`) is re-stamped like a
            // kept one: its agent rewrites the files and signals it.
            let change = if a.generation != *generation {
                WorkloadChange::Replace
            } else if a.release != rel.number {
                specs
                    .get(&(a.instance.stack.clone(), a.release))
                    .and_then(|old| old.spec.services.get(&a.instance.service))
                    .zip(rel.spec.services.get(&a.instance.service))
                    .map_or(WorkloadChange::Keep, |(old, new)| old.change_to(new))
            } else {
                WorkloadChange::Keep
            };
            if change == WorkloadChange::Replace {
                outdated_ids.insert(a.id.clone());
            } else if a.release != rel.number || a.generation != *generation {
                if let WorkloadChange::Reload { configs, signal } = change {
                    reloads
                        .entry((a.instance.stack.clone(), a.instance.service.clone()))
                        .or_insert_with(|| Reloading {
                            release: rel.number,
                            configs,
                            signal,
                            instances: Vec::new(),
                        })
                        .instances
                        .push(a.instance.short());
                }
                n.release = rel.number;
                n.generation = *generation;
                if let Some(spec) = rel.spec.services.get(&a.instance.service) {
                    n.reserved = spec.reservations;
                }
                changed = true;
            }
            next.insert(key.clone(), (n, stored.revision, changed));
        }
        let now = now_ms();
        let mut after = AfterPass::default();
        if rollout_retired {
            after.points.push("rollout-retire");
        }
        for ((stack, service), mut r) in reloads {
            r.instances.sort();
            after.events.push(NewEvent {
                time_ms: now,
                stack,
                instance: None,
                kind: "reload".into(),
                message: format!(
                    "{service}: release {} changes only configs {}; reloading {} with {} \
                     instead of replacing them",
                    r.release,
                    r.configs.join(", "),
                    r.instances.join(", "),
                    r.signal
                ),
            });
        }
        let rolled = self.roll(
            &mut st,
            &releases,
            &wanted,
            &outdated_ids,
            &retired,
            &mut next,
            &mut ops,
            &mut after,
            now,
        );
        let allocations: Vec<Allocation> = next.values().map(|(a, _, _)| a.clone()).collect();
        let nodes: Vec<Node> = st.nodes.values().map(|n| self.view(n)).collect();
        // A held group is not planned: its allocations stay, nothing new is placed.
        let mut groups: Vec<Group<'_>> = Vec::new();
        for (s, rel) in &releases {
            for (svc, spec) in &rel.spec.services {
                if let Some((_, _, false)) = wanted.get(&(&s.stack, svc.as_str())) {
                    groups.push(Group {
                        stack: &s.stack,
                        service: svc,
                        release: rel.number,
                        spec,
                        replace: rolled
                            .replace
                            .get(&(s.stack.clone(), svc.clone()))
                            .map_or(&[], Vec::as_slice),
                        extra: rolled
                            .extra
                            .get(&(s.stack.clone(), svc.clone()))
                            .copied()
                            .unwrap_or(0),
                    });
                }
            }
        }
        let plan = self.schedule(&nodes, &allocations, &groups);
        let key_of: HashMap<&str, &String> = st
            .allocs
            .iter()
            .map(|(k, s)| (s.alloc.id.as_str(), k))
            .collect();
        for stop in &plan.stop {
            tracing::info!(instance = %stop.instance, "stopping: {}", stop.reason);
            if let Some(key) = key_of.get(stop.allocation.as_str())
                && let Some((_, revision, _)) = next.remove(*key)
            {
                ops.push(TxnOp::delete((*key).clone(), Expect::Revision(revision)));
            }
        }
        for p in &plan.place {
            let generation = wanted
                .get(&(&p.instance.stack, p.instance.service.as_str()))
                .map_or(0, |w| w.1);
            let alloc = Allocation {
                id: new_alloc_id(),
                instance: p.instance.clone(),
                node: p.node.clone(),
                release: p.release,
                generation,
                desired: Desired::Run,
                reserved: p.reserved,
                host_ports: p.host_ports.clone(),
                replaced_by: None,
            };
            // Start-first: the copy it replaces runs until this one is ready.
            if let Some(old) = &p.replaces
                && let Some(key) = key_of.get(old.as_str())
                && let Some((a, _, changed)) = next.get_mut(*key)
            {
                a.replaced_by = Some(alloc.id.clone());
                *changed = true;
            }
            ops.push(TxnOp::put(
                alloc_key(&alloc),
                serde_json::to_vec(&alloc).expect("allocations serialize"),
                Expect::Absent,
            ));
        }
        // What the catalog serves from now, before any agent learns of this pass: the
        // instances of each service that keep an allocation (the others take no new
        // requests), and how traffic splits between releases.
        // Per service: the indexes that keep an allocation, and those of them that run the
        // current release's spec.
        let mut live: HashMap<ServiceKey, (HashSet<u32>, BTreeSet<u32>)> = HashMap::new();
        for (a, _, _) in next.values() {
            let e = live.entry(ServiceKey::of(&a.instance)).or_default();
            e.0.insert(a.instance.index);
            if !outdated_ids.contains(&a.id) {
                e.1.insert(a.instance.index);
            }
        }
        for p in &plan.place {
            let e = live.entry(ServiceKey::of(&p.instance)).or_default();
            e.0.insert(p.instance.index);
            e.1.insert(p.instance.index);
        }
        let snap = self.catalog.snapshot();
        let none = (HashSet::new(), BTreeSet::new());
        for (key, info) in known.iter_mut() {
            let (kept, current) = live.get(key).unwrap_or(&none);
            if let Some(entry) = snap.services.get(key) {
                info.leaving = entry
                    .endpoints
                    .keys()
                    .filter(|i| !kept.contains(i))
                    .copied()
                    .collect();
            }
            let group = (
                StackKey {
                    env: key.env.clone(),
                    stack: key.stack.clone(),
                },
                key.service.clone(),
            );
            if let Some(&(release, stable, weight)) = rolled.splits.get(&group) {
                info.split = Some(Split {
                    release,
                    canary: current.clone(),
                    stable,
                    weight,
                });
            }
        }
        for (key, (a, revision, changed)) in next {
            if changed {
                ops.push(TxnOp::put(
                    key,
                    serde_json::to_vec(&a).expect("allocations serialize"),
                    Expect::Revision(revision),
                ));
            }
        }
        drop(st);
        self.catalog.set_services(known);
        self.record_unplaced(plan.unplaced);
        Ok((ops, after))
    }

    /// Advances every service's rollout one step (see [`skiff_scheduler::rollout`]):
    /// re-stamps and abandons go into `next` and `ops`, a changed rollout into `ops`, events and
    /// rollbacks into `after`; returns, per service, the allocations to replace start-first
    /// in this pass.
    #[allow(clippy::too_many_arguments)]
    fn roll(
        &self,
        st: &mut State,
        releases: &[(&skiff_store::StackState, Arc<Release>)],
        wanted: &HashMap<(&StackKey, &str), (&Release, u64, bool)>,
        outdated: &HashSet<String>,
        retired: &[Allocation],
        next: &mut BTreeMap<String, (Allocation, u64, bool)>,
        ops: &mut Vec<TxnOp>,
        after: &mut AfterPass,
        now: u64,
    ) -> Rolled {
        let mut replace: HashMap<(StackKey, String), Vec<String>> = HashMap::new();
        let mut extra: HashMap<(StackKey, String), u32> = HashMap::new();
        let mut splits: HashMap<(StackKey, String), (u64, u64, u32)> = HashMap::new();
        let mut by_group: HashMap<(&StackKey, &str), Vec<&Allocation>> = HashMap::new();
        for a in next.values().map(|(a, _, _)| a).chain(retired) {
            by_group
                .entry((&a.instance.stack, a.instance.service.as_str()))
                .or_default()
                .push(a);
        }
        let mut rolling = HashSet::new();
        let mut wake: Option<u64> = None;
        // (key of the allocation in `next`, what to do with it)
        let mut restamp: Vec<(String, u64, u64, skiff_model::Reservations)> = Vec::new();
        let mut abandon: Vec<String> = Vec::new();
        for (s, rel) in releases {
            let event = |message: String| NewEvent {
                time_ms: now,
                stack: s.stack.clone(),
                instance: None,
                kind: "rollout".into(),
                message,
            };
            for (svc, spec) in &rel.spec.services {
                let Some((_, generation, false)) = wanted.get(&(&s.stack, svc.as_str())) else {
                    continue;
                };
                let key = (s.stack.clone(), svc.clone());
                let stored = st.rollouts.get(&key);
                // A restart replaces instances of the current release: rolled, never weighed.
                let restart = by_group
                    .get(&(&s.stack, svc.as_str()))
                    .into_iter()
                    .flatten()
                    .filter(|a| outdated.contains(&a.id))
                    .all(|a| a.release == rel.number);
                let by_traffic = traffic::manages_traffic(&spec.release)
                    && !restart
                    && stored.is_none_or(|(r, _)| r.release != rel.number || !r.rollback);
                let mut copies: Vec<rollout::Copy<'_>> = by_group
                    .get(&(&s.stack, svc.as_str()))
                    .map(|v| v.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .map(|a| rollout::Copy {
                        alloc: &a.id,
                        index: a.instance.index,
                        outdated: outdated.contains(&a.id),
                        replaced_by: a.replaced_by.as_deref(),
                        health: health(&st.instances, a),
                    })
                    .collect();
                if !by_traffic {
                    // More copies than replicas (a rollback to a set that is still warm, a
                    // scale-down): the surplus outdated ones are stopped by the scheduler,
                    // not replaced.
                    let live = copies.iter().filter(|c| c.replaced_by.is_none()).count();
                    let mut surplus = live.saturating_sub(spec.replicas as usize);
                    copies.sort_by_key(|c| std::cmp::Reverse(c.index));
                    copies.retain(|c| {
                        let drop = surplus > 0 && c.outdated && c.replaced_by.is_none();
                        if drop {
                            surplus -= 1;
                        }
                        !drop
                    });
                }
                let stale = copies
                    .iter()
                    .filter(|c| c.outdated && c.replaced_by.is_none())
                    .count() as u32;
                let mut r = match stored {
                    Some((r, _)) if r.release == rel.number && r.generation == *generation => {
                        r.clone()
                    }
                    _ if stale > 0 && restart => {
                        after.events.push(event(format!(
                            "{svc}: restarting {stale} instance(s) of release {}, {}",
                            rel.number,
                            describe(&spec.update)
                        )));
                        after.points.push("rollout-started");
                        let mut r = Rollout::new(rel.number, None, stale, now);
                        r.generation = *generation;
                        r
                    }
                    _ if stale > 0 => {
                        let from = by_group
                            .get(&(&s.stack, svc.as_str()))
                            .into_iter()
                            .flatten()
                            .filter(|a| outdated.contains(&a.id))
                            .map(|a| a.release)
                            .max();
                        after.events.push(event(format!(
                            "{svc}: rolling out release {} over {stale} instance(s), {}",
                            rel.number,
                            if by_traffic {
                                describe_traffic(&spec.release)
                            } else {
                                describe(&spec.update)
                            }
                        )));
                        after.points.push("rollout-started");
                        let mut r = Rollout::new(rel.number, from, stale, now);
                        r.generation = *generation;
                        r
                    }
                    _ => continue,
                };
                if r.total == 0 {
                    r.total = stale;
                }
                let policy = if r.rollback {
                    &spec.rollback
                } else {
                    &spec.update
                };
                let was = r.state;
                let actions = if by_traffic {
                    let judged = self.judged(st, &key, &r);
                    let step = traffic::step(
                        &mut r,
                        &copies,
                        &spec.release,
                        spec.update.failure_action,
                        spec.replicas,
                        judged,
                        now,
                    );
                    if let Some(t) = &r.traffic {
                        // The window of the next judgement starts when a step's weight applies.
                        let base = st.baselines.get(&key);
                        if base.is_none_or(|b| (b.0, b.1) != (r.release, t.since_ms)) {
                            let figures =
                                self.total_figures(st, &ServiceKey::new(&s.stack, svc), r.release);
                            st.baselines
                                .insert(key.clone(), (r.release, t.since_ms, figures));
                        }
                        if matches!(r.state, RolloutState::Running | RolloutState::Paused) {
                            splits.insert(
                                key.clone(),
                                (r.release, r.from.unwrap_or_default(), t.weight),
                            );
                        }
                    }
                    if step.extra > 0 {
                        extra.insert(key.clone(), step.extra);
                    }
                    step.actions
                } else {
                    rollout::step(&mut r, &copies, policy, spec.replicas, now)
                };
                // The instances a new batch replaces, by name: an event of their own.
                let batch: Vec<String> = actions
                    .iter()
                    .filter_map(|a| match a {
                        rollout::Action::Restamp(id) | rollout::Action::Replace(id) => copies
                            .iter()
                            .find(|c| c.alloc == id)
                            .map(|c| format!("{svc}-{}", c.index)),
                        _ => None,
                    })
                    .collect();
                drop(copies);
                if !batch.is_empty() {
                    after.points.push("rollout-batch");
                    after.events.push(event(format!(
                        "{svc}: release {}: replacing {}",
                        rel.number,
                        batch.join(", ")
                    )));
                }
                if r.state == RolloutState::Done && was != RolloutState::Done {
                    after.points.push("rollout-done");
                }
                // A rollback decided before a crash, whose release was not recorded.
                if r.rollback_pending
                    && let Some(from) = r.from
                {
                    after.rollbacks.push((
                        s.stack.clone(),
                        from,
                        format!(
                            "{svc}: {}",
                            r.reason.as_deref().unwrap_or("the rollout failed")
                        ),
                    ));
                }
                for action in actions {
                    match action {
                        rollout::Action::Restamp(id) => {
                            restamp.push((id, rel.number, *generation, spec.reservations))
                        }
                        rollout::Action::Replace(id) => {
                            replace.entry(key.clone()).or_default().push(id);
                        }
                        rollout::Action::Abandon(id) => abandon.push(id),
                        rollout::Action::Rollback => {
                            if let Some(from) = r.from {
                                r.rollback_pending = true;
                                after.points.push("rollout-failed");
                                after.rollbacks.push((
                                    s.stack.clone(),
                                    from,
                                    format!(
                                        "{svc}: {}",
                                        r.reason.as_deref().unwrap_or("the rollout failed")
                                    ),
                                ));
                            }
                        }
                        rollout::Action::Event(message) => {
                            after.events.push(event(format!("{svc}: {message}")));
                        }
                    }
                }
                if r.state == RolloutState::Running {
                    rolling.insert(key.clone());
                    let at = if by_traffic {
                        traffic::wake_at(&r, &spec.release)
                    } else {
                        r.wake_at(policy)
                    };
                    if let Some(at) = at {
                        wake = Some(wake.map_or(at, |w: u64| w.min(at)));
                    }
                }
                if stored.map(|(old, _)| old) != Some(&r) {
                    let expect = stored.map_or(Expect::Absent, |(_, rev)| Expect::Revision(*rev));
                    ops.push(TxnOp::put(
                        rollout_key(&s.stack, svc),
                        serde_json::to_vec(&r).expect("rollouts serialize"),
                        expect,
                    ));
                }
            }
        }
        drop(by_group);
        let key_of: HashMap<String, String> = next
            .iter()
            .map(|(k, (a, _, _))| (a.id.clone(), k.clone()))
            .collect();
        for (id, release, generation, reserved) in restamp {
            if let Some(k) = key_of.get(&id)
                && let Some((a, _, changed)) = next.get_mut(k)
            {
                a.release = release;
                a.generation = generation;
                a.reserved = reserved;
                *changed = true;
            }
        }
        for id in abandon {
            if let Some(k) = key_of.get(&id)
                && let Some((_, revision, _)) = next.remove(k)
            {
                ops.push(TxnOp::delete(k.clone(), Expect::Revision(revision)));
            }
            // Its old copy is one of the replicas again in this very pass: else the
            // scheduler would place another copy of the failed release in its stead.
            for (a, _, changed) in next.values_mut() {
                if a.replaced_by.as_deref() == Some(id.as_str()) {
                    a.replaced_by = None;
                    *changed = true;
                }
            }
        }
        st.rolling = rolling;
        st.wake_at = wake;
        st.baselines.retain(|k, _| splits.contains_key(k));
        // Request figures are kept for the releases services' last rollouts name.
        self.catalog.forget_stats(|k, release| {
            st.rollouts
                .get(&(
                    StackKey {
                        env: k.env.clone(),
                        stack: k.stack.clone(),
                    },
                    k.service.clone(),
                ))
                .is_some_and(|(r, _)| r.release == release || r.from == Some(release))
        });
        Rolled {
            replace,
            extra,
            splits,
        }
    }

    /// The ingress's figures of rollout `r`'s release since its current step's weight applied.
    fn judged(&self, st: &State, key: &(StackKey, String), r: &Rollout) -> Option<traffic::Judged> {
        let t = r.traffic.as_ref()?;
        let (release, since, base) = st.baselines.get(key)?;
        if (*release, *since) != (r.release, t.since_ms) {
            return None;
        }
        let now = self.total_figures(st, &ServiceKey::new(&key.0, &key.1), r.release);
        let window = now.since(base);
        Some(traffic::Judged {
            requests: window.requests,
            errors: window.errors,
            p99_ms: window.p99_ms(),
        })
    }

    /// Keeps the last pass's unplaced work, with an event when a group's reason changes.
    fn record_unplaced(&self, unplaced: Vec<Unplaced>) {
        let mut st = self.lock();
        let before: HashMap<(StackKey, String), String> = st
            .unplaced
            .iter()
            .map(|u| ((u.stack.clone(), u.service.clone()), u.reason.clone()))
            .collect();
        let news: Vec<Unplaced> = unplaced
            .iter()
            .filter(|u| before.get(&(u.stack.clone(), u.service.clone())) != Some(&u.reason))
            .cloned()
            .collect();
        st.unplaced = unplaced;
        drop(st);
        let mut events = Vec::new();
        for u in news {
            tracing::warn!(stack = %u.stack, service = %u.service, "unplaced: {}", u.reason);
            events.push(Observed::Event(NewEvent {
                time_ms: now_ms(),
                stack: u.stack.clone(),
                instance: None,
                kind: "unplaced".into(),
                message: format!(
                    "{} instance(s) of {} fit no node: {}",
                    u.missing, u.service, u.reason
                ),
            }));
        }
        if !events.is_empty() {
            // Written by the store's writer; the planner does not wait for it.
            drop(self.observe(events));
        }
    }

    /// Queues observed changes for the store's one writer and resolves once they are written.
    /// The writer takes them in the order they are queued: callers that must keep an order
    /// queue under the state lock.
    fn observe(&self, changes: Vec<Observed>) -> oneshot::Receiver<()> {
        let (done, written) = oneshot::channel();
        // The writer lives as long as this Control: a send fails only while it is dropped.
        let _ = self.observed.send((changes, done));
        written
    }

    // === reports ===

    /// Applies an agent's report, in order: instance records (into the catalog while
    /// healthy), removals and events. The store is written after the state lock is released,
    /// by the one writer, in the order reports were applied; the answer waits for it.
    pub async fn report(&self, node: &str, report: Report) -> Result<ReportAnswer> {
        let (answer, written) = self.apply_report(node, report)?;
        if let Some(written) = written {
            let _ = written.await;
        }
        Ok(answer)
    }

    /// A report applied under the state lock; its store writes queued (and resolved once
    /// written).
    fn apply_report(
        &self,
        node: &str,
        report: Report,
    ) -> Result<(ReportAnswer, Option<oneshot::Receiver<()>>)> {
        let mut st = self.lock();
        let address = {
            let n = st
                .nodes
                .get(node)
                .ok_or_else(|| ControlError::UnknownNode(node.to_string()))?;
            n.node.address.parse::<IpAddr>().ok()
        };
        let node_down = st.nodes.get(node).is_some_and(|n| n.down);
        let mut replan = false;
        let mut listed = BTreeSet::new();
        let mut answer = ReportAnswer::default();
        // Nodes with proxies of their own: a stopping instance of a service they serve (one
        // with a stable address) is drained through them too.
        let proxy_nodes: Vec<&str> = st
            .nodes
            .values()
            .filter(|n| n.node.proxies && !n.down)
            .map(|n| n.node.id.as_str())
            .collect();
        let proxy_nodes = !proxy_nodes.is_empty();
        let snap = self.catalog.snapshot();
        let proxied = |id: &InstanceId| {
            snap.services
                .get(&ServiceKey::of(id))
                .is_some_and(|e| e.address.is_some() && !e.targets.is_empty())
        };
        let mut writes = Vec::new();
        for change in report.changes {
            match change {
                Change::Instance(mut inst) => {
                    inst.node = node.to_string();
                    listed.insert(inst.id.clone());
                    let allocated = st.placed_on.get(&inst.id).is_some_and(|n| n == node);
                    if !allocated && st.instances.get(&inst.id).is_some_and(|i| i.node != node) {
                        // A stale copy on a node the instance moved away from (it was down):
                        // never routed to, and it does not hide the live copy; its agent
                        // stops it.
                        continue;
                    }
                    let routed = allocated && inst.state == InstanceState::Healthy && !node_down;
                    match (routed, address) {
                        (true, Some(addr)) => {
                            st.withdrawn.remove(&inst.id);
                            self.catalog.add(&inst.id, addr, inst.ports.clone());
                        }
                        _ => {
                            if let Some(t) = self.catalog.remove(&inst.id) {
                                st.withdrawn.insert(inst.id.clone(), t);
                            }
                            if inst.state == InstanceState::Stopping
                                && (st
                                    .withdrawn
                                    .get(&inst.id)
                                    .is_some_and(|t| t.in_flight() > 0)
                                    || (proxy_nodes && proxied(&inst.id)))
                            {
                                answer.busy.push(inst.id.clone());
                            }
                        }
                    }
                    let before = st.instances.get(&inst.id).map(|i| i.state);
                    replan |= before != Some(inst.state)
                        && (st.awaited.contains(&inst.id) || {
                            let group = (inst.id.stack.clone(), inst.id.service.clone());
                            st.dependencies.contains(&group) || st.rolling.contains(&group)
                        });
                    writes.push(Observed::Instance(inst.clone()));
                    st.instances.insert(inst.id.clone(), inst);
                }
                Change::Removed(id) => {
                    if st.instances.get(&id).is_some_and(|i| i.node == node) {
                        st.instances.remove(&id);
                        st.withdrawn.remove(&id);
                        self.catalog.remove(&id);
                        writes.push(Observed::Removed(id.clone()));
                        replan |= st
                            .dependencies
                            .contains(&(id.stack.clone(), id.service.clone()));
                    }
                }
                Change::Event(e) => writes.push(Observed::Event(e)),
            }
        }
        if report.full {
            // What the node no longer runs (stopped before a crash of its agent or of the
            // server) is forgotten.
            let stale: Vec<InstanceId> = st
                .instances
                .values()
                .filter(|i| i.node == node && !listed.contains(&i.id))
                .map(|i| i.id.clone())
                .collect();
            for id in stale {
                st.instances.remove(&id);
                st.withdrawn.remove(&id);
                self.catalog.remove(&id);
                writes.push(Observed::Removed(id));
            }
            replan = true;
        }
        let written = (!writes.is_empty()).then(|| self.observe(writes));
        drop(st);
        if replan {
            self.changed();
        }
        Ok((answer, written))
    }

    /// Waits until no request is in flight on `id`, at most `timeout`: through this
    /// server's proxies, and through those of every up node that runs its own (each asked
    /// at once, in parallel). An instance still in the catalog is withdrawn first.
    pub async fn drain(&self, id: &InstanceId, timeout: Duration) -> Drained {
        let (traffic, nodes) = {
            let mut st = self.lock();
            let traffic = match self.catalog.remove(id) {
                Some(t) => Some(t),
                None => st.withdrawn.remove(id),
            };
            let nodes: Vec<Node> = st
                .nodes
                .values()
                .filter(|n| n.node.proxies && !n.down && n.node.agent_port != 0)
                .map(|n| n.node.clone())
                .collect();
            (traffic, nodes)
        };
        let index = Some(self.catalog.snapshot().index_of_addressed());
        let remote = nodes.into_iter().map(|node| {
            let id = id.clone();
            let client = self.agent_client(&node);
            tokio::spawn(async move {
                match client?.agent_drain(&id, timeout, index).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        // A node that cannot be asked holds nothing up: its proxies lose the
                        // instance with their next catalog copy.
                        tracing::debug!(node = %node.name, %id, "drain: {e}");
                        None
                    }
                }
            })
        });
        let remote: Vec<_> = remote.collect();
        let mut out = match traffic {
            None => Drained {
                drained: true,
                in_flight: 0,
            },
            Some(t) => {
                let drained = t.drained(timeout).await;
                Drained {
                    drained,
                    in_flight: t.in_flight(),
                }
            }
        };
        for task in remote {
            if let Ok(Some(d)) = task.await {
                out.drained &= d.drained;
                out.in_flight += d.in_flight;
            }
        }
        out
    }

    /// A client of `node`'s agent listener, made once per address.
    fn agent_client(&self, node: &Node) -> Option<skiff_client::Client> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((address, port, client)) = agents.get(&node.id)
            && *address == node.address
            && *port == node.agent_port
        {
            return Some(client.clone());
        }
        let client = skiff_client::Client::of_agent(node).ok()?;
        agents.insert(
            node.id.clone(),
            (node.address.clone(), node.agent_port, client.clone()),
        );
        Some(client)
    }

    /// Steers one service's rollout (`skiff rollout pause|resume|promote|abort`), with
    /// compare-and-swap against the planner's own writes; the planner takes it up at once.
    /// Aborting a rolling update rolls the stack back to the release before.
    pub async fn steer_rollout(
        &self,
        stack: &StackKey,
        service: &str,
        steer: Steer,
    ) -> Result<Rollout> {
        let key = (stack.clone(), service.to_string());
        for _ in 0..5 {
            let (mut r, revision) = self.lock().rollouts.get(&key).cloned().ok_or_else(|| {
                ControlError::NoRollout(format!(
                    "{service} of stack {stack} has not rolled out a change yet"
                ))
            })?;
            let refuse = |r: &Rollout, why: &str| {
                Err(ControlError::RolloutState(format!(
                    "the rollout of release {} of {service} is {}: {why}",
                    r.release,
                    r.state.as_str(),
                )))
            };
            let open = matches!(r.state, RolloutState::Running | RolloutState::Paused);
            let mut then_rollback = None;
            let what = match steer {
                Steer::Pause if r.state == RolloutState::Running => {
                    r.state = RolloutState::Paused;
                    r.reason = Some("paused by `skiff rollout pause`".into());
                    "paused by `skiff rollout pause`".to_string()
                }
                Steer::Resume if r.state == RolloutState::Paused => {
                    let forgiven = std::mem::take(&mut r.failed);
                    r.state = RolloutState::Running;
                    r.reason = None;
                    if forgiven > 0 {
                        format!("resumed ({forgiven} failure(s) forgiven)")
                    } else {
                        "resumed".to_string()
                    }
                }
                Steer::Promote if open => {
                    let Some(t) = r.traffic.as_mut() else {
                        return refuse(
                            &r,
                            "promote moves canary and blue-green releases; a rolling update goes on by itself",
                        );
                    };
                    t.promote = true;
                    r.state = RolloutState::Running;
                    r.reason = None;
                    "promoted by `skiff rollout promote`".to_string()
                }
                Steer::Abort if open => match r.traffic.as_mut() {
                    Some(t) => {
                        t.abort = true;
                        r.state = RolloutState::Running;
                        "aborted by `skiff rollout abort`".to_string()
                    }
                    None => {
                        r.state = RolloutState::Failed;
                        r.reason = Some("aborted by `skiff rollout abort`".into());
                        then_rollback = r.from.filter(|_| !r.rollback);
                        "aborted by `skiff rollout abort`".to_string()
                    }
                },
                _ => {
                    return refuse(&r, &format!("nothing to {}", steer.as_str()));
                }
            };
            let op = TxnOp::put(
                rollout_key(stack, service),
                serde_json::to_vec(&r).expect("rollouts serialize"),
                Expect::Revision(revision),
            );
            match self.kv.txn(vec![op.clone()]).await {
                Ok(rev) => {
                    self.applied_ops(vec![op], rev);
                    self.store
                        .append_event(NewEvent {
                            time_ms: now_ms(),
                            stack: stack.clone(),
                            instance: None,
                            kind: "rollout".into(),
                            message: format!("{service}: release {} {what}", r.release),
                        })
                        .await?;
                    if let Some(to) = then_rollback {
                        self.rollback_because(
                            stack,
                            Some(to),
                            Some(format!("{service}: aborted by `skiff rollout abort`")),
                            // Asked for by a person (the abort request names nobody).
                            Some(Author::unknown()),
                        )
                        .await?;
                    }
                    self.changed();
                    return Ok(r);
                }
                // The planner moved it on meanwhile: look again.
                Err(KvError::Conflict { .. }) => tokio::task::yield_now().await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlError::Store(format!(
            "the rollout of {service} kept changing; try again"
        )))
    }

    /// What every ingress counted for one release of a service (while traffic was split
    /// between releases): this server's and those agents sent.
    pub fn release_figures(&self, service: &ServiceKey, release: u64) -> Figures {
        let st = self.lock();
        self.total_figures(&st, service, release)
    }

    fn total_figures(&self, st: &State, service: &ServiceKey, release: u64) -> Figures {
        let mut f = self.catalog.figures(service, release);
        let key = (service.clone(), release);
        for per_node in st.node_figures.values() {
            if let Some(n) = per_node.get(&key) {
                f.add(n);
            }
        }
        f
    }

    /// Takes what a node's proxies counted so far (each figure cumulative: the last one sent
    /// replaces the one before).
    pub fn node_figures(&self, id: &str, figures: Vec<skiff_client::NodeFigures>) -> Result<()> {
        let mut st = self.lock();
        if !st.nodes.contains_key(id) {
            return Err(ControlError::UnknownNode(id.to_string()));
        }
        let per_node = figures
            .into_iter()
            .map(|f| ((f.service, f.release), f.figures))
            .collect();
        st.node_figures.insert(id.to_string(), per_node);
        Ok(())
    }

    /// Each service's last rollout in `stack`, by service name.
    pub fn rollouts(&self, stack: &StackKey) -> Vec<(String, Rollout)> {
        self.lock()
            .rollouts
            .iter()
            .filter(|((s, _), _)| s == stack)
            .map(|((_, svc), (r, _))| (svc.clone(), r.clone()))
            .collect()
    }

    /// The node an instance runs on, as its agent last reported it.
    pub fn node_of(&self, id: &InstanceId) -> Option<Node> {
        let st = self.lock();
        let node = &st.instances.get(id)?.node;
        st.nodes.get(node).map(|n| self.view(n))
    }

    /// The instances agents reported, with their nodes.
    pub fn instances(&self) -> Vec<Instance> {
        let mut out: Vec<Instance> = self.lock().instances.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// Whether the instance of allocation `a` runs where it is placed and passes readiness.
fn ready(instances: &HashMap<InstanceId, Instance>, a: &Allocation) -> bool {
    instances
        .get(&a.instance)
        .is_some_and(|i| i.node == a.node && i.state == InstanceState::Healthy)
}

/// How a rollout sees the instance of allocation `a`: ready, failed, or neither yet. Only an
/// instance of the allocation's own release on its node counts (a re-stamped allocation whose
/// old instance still runs is not ready yet).
fn health(instances: &HashMap<InstanceId, Instance>, a: &Allocation) -> rollout::Health {
    match instances.get(&a.instance) {
        Some(i) if i.node == a.node && i.release == a.release => match i.state {
            InstanceState::Healthy => rollout::Health::Ready,
            InstanceState::Exited | InstanceState::Failed => rollout::Health::Failed,
            _ => rollout::Health::Pending,
        },
        _ => rollout::Health::Pending,
    }
}

/// A canary or blue-green policy in a few words, for events.
fn describe_traffic(p: &skiff_model::ReleasePolicy) -> String {
    match p.strategy {
        skiff_model::ReleaseStrategy::BlueGreen => format!(
            "blue-green, switch {}, previous set kept {}s",
            match p.switch {
                skiff_model::Switch::Auto => "when ready",
                skiff_model::Switch::Manual => "on promote",
            },
            p.keep_previous.as_secs()
        ),
        _ => {
            let steps: Vec<String> = p.steps.iter().map(|s| format!("{}%", s.weight)).collect();
            format!(
                "canary {}{}",
                steps.join(" → "),
                if p.analysis.is_some() {
                    ", judged by the ingress's figures"
                } else {
                    ""
                }
            )
        }
    }
}

/// An update policy in a few words, for events.
fn describe(p: &skiff_model::UpdatePolicy) -> String {
    let batch = match p.parallelism {
        skiff_model::Parallelism::Count(0) => "all at once".to_string(),
        skiff_model::Parallelism::Count(n) => format!("{n} at a time"),
        skiff_model::Parallelism::Percent(n) => format!("{n}% at a time"),
    };
    let order = match p.order {
        skiff_model::UpdateOrder::StartFirst => "start-first",
        skiff_model::UpdateOrder::StopFirst => "stop-first",
    };
    format!("{batch}, {order}")
}

fn rollout_key(stack: &StackKey, service: &str) -> String {
    format!("{ROLLOUTS}{}/{}/{service}", stack.env, stack.stack)
}

/// The service a `rollouts/` key names.
fn rollout_key_of(key: &str) -> Option<(StackKey, String)> {
    let mut parts = key.strip_prefix(ROLLOUTS)?.splitn(3, '/');
    let (env, stack, service) = (parts.next()?, parts.next()?, parts.next()?);
    Some((StackKey::new(env, stack).ok()?, service.to_string()))
}

/// Instances whose readiness lets a retiring copy stop: a report of theirs plans again.
fn awaited(allocs: &BTreeMap<String, Stored>) -> HashSet<InstanceId> {
    let by_id: HashMap<&str, &InstanceId> = allocs
        .values()
        .map(|s| (s.alloc.id.as_str(), &s.alloc.instance))
        .collect();
    allocs
        .values()
        .filter_map(|s| s.alloc.replaced_by.as_deref())
        .filter_map(|id| by_id.get(id).map(|i| (*i).clone()))
        .collect()
}

/// The store's one writer of observed changes: takes what is queued, in order, and writes
/// everything queued meanwhile together (soft writes, in as few transactions as the store can);
/// then tells each sender. A failed write is logged: agents report everything again in full
/// when they reconnect, and the in-memory state stays right.
async fn write_observed(
    store: Store,
    mut queue: mpsc::UnboundedReceiver<(Vec<Observed>, oneshot::Sender<()>)>,
) {
    const MOST: usize = 16_384;
    while let Some((mut changes, done)) = queue.recv().await {
        let mut waiting = vec![done];
        while changes.len() < MOST
            && let Ok((more, done)) = queue.try_recv()
        {
            changes.extend(more);
            waiting.push(done);
        }
        if let Err(e) = store.observe(changes).await {
            tracing::warn!("store: observed state not written: {e}");
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

/// The stable address of `key`: the one it has, else the lowest free one (not yet in the
/// kv: the pass writes it). `None` once the range is used up.
fn stable_address(
    range: AddressRange,
    addresses: &mut BTreeMap<ServiceKey, (IpAddr, bool)>,
    key: &ServiceKey,
) -> Option<IpAddr> {
    if let Some((ip, _)) = addresses.get(key) {
        return Some(*ip);
    }
    let used: std::collections::HashSet<IpAddr> = addresses.values().map(|a| a.0).collect();
    let ip = (1..)
        .map_while(|i| range.at(i))
        .find(|ip| !used.contains(ip))?;
    addresses.insert(key.clone(), (ip, false));
    Some(ip)
}

fn address_key(key: &ServiceKey) -> String {
    format!("{ADDRESSES}{}/{}/{}", key.env, key.stack, key.service)
}

fn service_key_of(rest: &str) -> Option<ServiceKey> {
    let mut parts = rest.splitn(3, '/');
    Some(ServiceKey {
        env: parts.next()?.to_string(),
        stack: parts.next()?.to_string(),
        service: parts.next()?.to_string(),
    })
}

async fn load_addresses(kv: &AnyKv) -> Result<BTreeMap<ServiceKey, (IpAddr, bool)>> {
    let (entries, _) = kv.list(ADDRESSES).await?;
    let mut out = BTreeMap::new();
    for e in entries {
        let ip: IpAddr = serde_json::from_slice(&e.value)
            .map_err(|err| ControlError::Store(format!("{}: {err}", e.key)))?;
        if let Some(key) = e.key.strip_prefix(ADDRESSES).and_then(service_key_of) {
            out.insert(key, (ip, true));
        }
    }
    Ok(out)
}

fn service_info(spec: &ServiceSpec) -> ServiceInfo {
    ServiceInfo {
        address: None,
        targets: spec
            .ports
            .iter()
            .filter(|p| p.protocol == "tcp")
            .map(|p| (p.name.clone(), p.target))
            .collect(),
        ports: spec.ports.iter().map(|p| p.name.clone()).collect(),
        routes: spec.routes.clone(),
        published: spec
            .ports
            .iter()
            .filter(|p| !p.host_mode && p.protocol == "tcp")
            .filter_map(|p| Some((p.name.clone(), p.published?)))
            .collect(),
        split: None,
        leaving: Default::default(),
    }
}

/// Whether every `depends_on` of a service in `stack` is met by the reported instances.
fn dependencies_met(
    instances: &HashMap<InstanceId, Instance>,
    stack: &StackKey,
    spec: &ServiceSpec,
) -> bool {
    spec.depends_on.iter().all(|(dep, wait)| {
        let mut of_dep = instances
            .values()
            .filter(|i| &i.id.stack == stack && &i.id.service == dep)
            .peekable();
        of_dep.peek().is_some()
            && of_dep.all(|i| match wait {
                WaitFor::Started => matches!(
                    i.state,
                    InstanceState::Starting | InstanceState::Healthy | InstanceState::Unhealthy
                ),
                WaitFor::Healthy => i.state == InstanceState::Healthy,
                WaitFor::CompletedSuccessfully => {
                    matches!(i.state, InstanceState::Exited | InstanceState::Failed)
                        && i.exit_code == Some(0)
                }
            })
    })
}

#[cfg(test)]
mod tests;
