//! The live service catalog: for every service of every stack's current release, the instances
//! that are ready for traffic now, and where they listen.
//!
//! ```text
//!   agent monitors ──add/remove──▶ Catalog ──snapshot (Arc)──▶ DNS (prepared answers)
//!   (exit seen in ~10 ms,          │  index += 1 per change  ──▶ API blocking queries
//!    readiness probes)             └─ watch::Sender<index>   ──▶ ingress (#6)
//! ```
//!
//! **Invariants:**
//! - A snapshot is immutable and every change publishes a new one with `index` one higher, so
//!   a reader that saw index `n` and waits for `> n` never misses a change.
//! - An instance is in the catalog only while it runs and passes readiness; it leaves before
//!   its stop signal is sent (deregister, drain, then signal).
//! - A service is *known* (its name resolves, possibly to no instance) exactly while a current
//!   release has it; unknown names are NXDOMAIN, known ones without instances are empty.
//! - Every ready instance has one [`Traffic`] that proxies count their requests on. `remove`
//!   marks it withdrawn before anything else; a proxy that counted a request on a withdrawn
//!   instance takes it back and picks another one. So once `remove` returned and the count
//!   reached zero, no request is or will be on the instance: it can be signalled.
//! - A counter exists before any snapshot lists its endpoint and is forgotten only after the
//!   current snapshot stops listing it: a proxy rebuilding its table on a change notification
//!   finds the counter of every endpoint it sees.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use skiff_model::{InstanceId, RouteSpec, StackKey};
use tokio::sync::watch;

/// A service of a stack in an environment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub env: String,
    pub stack: String,
    pub service: String,
}

impl ServiceKey {
    pub fn new(stack: &StackKey, service: &str) -> ServiceKey {
        ServiceKey {
            env: stack.env.clone(),
            stack: stack.stack.clone(),
            service: service.to_string(),
        }
    }

    pub fn of(id: &InstanceId) -> ServiceKey {
        ServiceKey::new(&id.stack, &id.service)
    }
}

/// A ready instance and where it is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Instance index within the service (`web-2` is 2).
    pub index: u32,
    pub address: IpAddr,
    /// Port name (the long syntax's `name:`, else the target number) → port to connect to.
    pub ports: BTreeMap<String, u16>,
}

/// What the current release says about a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Port names in declaration order.
    pub ports: Vec<String>,
    /// Ingress routes besides the service's default host.
    pub routes: Vec<RouteSpec>,
    /// Service ports (compose `ports: "8080:80"`): port name → port every node listens on.
    pub published: BTreeMap<String, u16>,
    /// The service's stable address (127.77.0.0/16): every node listens on it, on the
    /// `targets` ports, and balances over the ready instances wherever they run.
    pub address: Option<IpAddr>,
    /// TCP port name → the port the stable address listens on (the declared target).
    pub targets: BTreeMap<String, u16>,
    /// A canary or blue-green release in progress: how traffic divides between releases.
    pub split: Option<Split>,
    /// Ready instances whose allocation is gone: they get no new requests while their agent
    /// withdraws, drains and stops them (the control plane knows first).
    pub leaving: BTreeSet<u32>,
}

/// Traffic between two releases of a service: `weight` percent to the instances of the new
/// release (`canary`, by index), the rest to the others. A set without a ready instance
/// gets nothing, whatever its weight (its share goes to the other set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// The new release and its instances' indexes.
    pub release: u64,
    pub canary: BTreeSet<u32>,
    /// The release the other instances run.
    pub stable: u64,
    /// Percent of requests to the new release, 0–100.
    pub weight: u32,
}

impl ServiceInfo {
    /// A service with these ports and no routes of its own.
    pub fn with_ports(names: &[&str]) -> ServiceInfo {
        ServiceInfo {
            ports: names.iter().map(|n| n.to_string()).collect(),
            ..ServiceInfo::default()
        }
    }
}

/// A known service: its port names in declaration order and its ready instances by index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published: BTreeMap<String, u16>,
    /// The service's stable address ([`ServiceInfo::address`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub leaving: BTreeSet<u32>,
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// The catalog index of this entry's last change (for blocking queries on one service).
    pub modified: u64,
}

impl ServiceEntry {
    /// Takes what the release says (ports, routes, addresses), keeping the endpoints.
    fn set_info(&mut self, info: ServiceInfo) {
        self.ports = info.ports;
        self.routes = info.routes;
        self.published = info.published;
        self.address = info.address;
        self.targets = info.targets;
        self.split = info.split;
        self.leaving = info.leaving;
    }

    /// The endpoints that take new requests, each with its set's release and weight: all
    /// but the leaving ones; under a [`Split`], the canary set at its weight and the others
    /// at the rest. `(release, weight, endpoints)` per set; release 0 when there is no split.
    pub fn pools(&self) -> Vec<(u64, u32, Vec<&Endpoint>)> {
        let serving = self
            .endpoints
            .values()
            .filter(|e| !self.leaving.contains(&e.index));
        match &self.split {
            None => vec![(0, 100, serving.collect())],
            Some(split) => {
                let (canary, stable): (Vec<&Endpoint>, Vec<&Endpoint>) =
                    serving.partition(|e| split.canary.contains(&e.index));
                vec![
                    (split.stable, 100 - split.weight.min(100), stable),
                    (split.release, split.weight.min(100), canary),
                ]
            }
        }
    }

    /// The endpoints a name resolves to: the serving ones of the sets with a weight (all
    /// serving ones when no weighted set has any).
    pub fn resolving(&self) -> Vec<&Endpoint> {
        let pools = self.pools();
        let weighted: Vec<&Endpoint> = pools
            .iter()
            .filter(|(_, w, _)| *w > 0)
            .flat_map(|(_, _, eps)| eps.iter().copied())
            .collect();
        if weighted.is_empty() {
            pools.into_iter().flat_map(|(_, _, eps)| eps).collect()
        } else {
            weighted
        }
    }
}

/// The catalog at one index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub index: u64,
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    /// The index at which a service last came or went.
    pub keys_changed: u64,
}

/// The live catalog. Cheap to read (an `Arc` clone), every write publishes a new snapshot.
pub struct Catalog {
    current: Mutex<Arc<Snapshot>>,
    index: watch::Sender<u64>,
    traffic: Mutex<HashMap<(ServiceKey, u32), Arc<Traffic>>>,
    stats: Mutex<HashMap<(ServiceKey, u64), Arc<ReleaseStats>>>,
    /// Per environment: whether a proxy passed a request to it since the last sample.
    seen: Mutex<HashMap<String, Arc<Seen>>>,
    /// Per environment: the sample time that last found a request (ms since the epoch).
    last_requests: Mutex<BTreeMap<String, u64>>,
}

/// Whether a request went to an environment since the last sample: set by the proxies on
/// every request (one relaxed load, and a relaxed store when it was clear), taken by
/// [`Catalog::last_requests`] about once a second. That sample's time is the request's
/// time: the resolution is the sampling interval, which is plenty for an idle timeout.
#[derive(Debug, Default)]
pub struct Seen(AtomicBool);

impl Seen {
    #[inline]
    pub fn touch(&self) {
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Requests in flight to one ready instance, counted by every proxy that sends it traffic.
#[derive(Debug, Default)]
pub struct Traffic {
    in_flight: AtomicUsize,
    withdrawn: AtomicBool,
}

impl Traffic {
    /// Counts a request about to be sent; `false` (and not counted) when the instance was
    /// withdrawn meanwhile: pick another one.
    pub fn begin(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.withdrawn.load(Ordering::SeqCst) {
            self.end();
            return false;
        }
        true
    }

    /// The request (and its response body) is done.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Relaxed)
    }

    /// Waits until no request is in flight (at most `max`); `false` when some still were.
    pub async fn drained(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.snapshot();
        f.debug_struct("Catalog")
            .field("index", &snap.index)
            .field("services", &snap.services.len())
            .finish()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            current: Mutex::new(Arc::new(Snapshot::default())),
            index: watch::Sender::new(0),
            traffic: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            last_requests: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Catalog {
    pub fn new() -> Arc<Catalog> {
        Arc::new(Catalog::default())
    }

    /// The flag proxies set for every request to a service of `env`.
    pub fn seen(&self, env: &str) -> Arc<Seen> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(env) {
            Some(s) => s.clone(),
            None => seen.entry(env.to_string()).or_default().clone(),
        }
    }

    /// When a request last went to each environment through this catalog's proxies: the
    /// flags set since the last call count as requests at `now_ms`.
    pub fn last_requests(&self, now_ms: u64) -> BTreeMap<String, u64> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = self.last_requests.lock().unwrap_or_else(|p| p.into_inner());
        for (env, flag) in seen.iter() {
            if flag.0.swap(false, Ordering::Relaxed) {
                last.insert(env.clone(), now_ms);
            }
        }
        last.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sees every index change (the value is the newest index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// Applies `change` to a copy of the current snapshot; publishes it when it differs.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<ServiceKey, ServiceEntry>)) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut services = cur.services.clone();
        change(&mut services);
        if services == cur.services {
            return;
        }
        let index = cur.index + 1;
        for (k, e) in services.iter_mut() {
            if cur.services.get(k) != Some(e) {
                e.modified = index;
            }
        }
        let keys_changed = if services.keys().eq(cur.services.keys()) {
            cur.keys_changed
        } else {
            index
        };
        *cur = Arc::new(Snapshot {
            index,
            services,
            keys_changed,
        });
        drop(cur);
        self.index.send_replace(index);
    }

    /// The services that exist now (those of current releases) with their ports and routes;
    /// others are forgotten with their endpoints. Endpoints of services that stay are kept.
    pub fn set_services(&self, known: BTreeMap<ServiceKey, ServiceInfo>) {
        self.update(|services| {
            services.retain(|k, _| known.contains_key(k));
            for (k, info) in known {
                services.entry(k).or_default().set_info(info);
            }
        });
        let snap = self.snapshot();
        self.traffic_table().retain(|(k, i), t| {
            let kept = snap
                .services
                .get(k)
                .is_some_and(|e| e.endpoints.contains_key(i));
            if !kept {
                t.withdrawn.store(true, Ordering::SeqCst);
            }
            kept
        });
    }

    /// `id` is ready at `address` on `ports`. Ignored for a service no release has.
    pub fn add(&self, id: &InstanceId, address: IpAddr, ports: BTreeMap<String, u16>) {
        let key = ServiceKey::of(id);
        self.update(|services| {
            if let Some(s) = services.get_mut(&key) {
                // The counter exists before any snapshot lists the endpoint (a proxy building
                // its table on the notification must find it); a withdrawn one is replaced.
                let mut table = self.traffic_table();
                let t = table
                    .entry((key.clone(), id.index))
                    .or_insert_with(|| Arc::new(Traffic::default()));
                if t.is_withdrawn() {
                    *t = Arc::new(Traffic::default());
                }
                drop(table);
                s.endpoints.insert(
                    id.index,
                    Endpoint {
                        index: id.index,
                        address,
                        ports,
                    },
                );
            }
        });
    }

    /// `id` takes no traffic any more (exited, unhealthy, stopping). Returns its traffic
    /// counter, already withdrawn, to wait on for the requests in flight to finish.
    pub fn remove(&self, id: &InstanceId) -> Option<Arc<Traffic>> {
        let key = (ServiceKey::of(id), id.index);
        let traffic = self.traffic_table().get(&key).cloned();
        if let Some(t) = &traffic {
            t.withdrawn.store(true, Ordering::SeqCst);
        }
        self.update(|services| {
            if let Some(s) = services.get_mut(&key.0) {
                s.endpoints.remove(&id.index);
            }
        });
        // Forgotten only once no snapshot to come lists it (and unless a new add replaced it).
        if let Some(t) = &traffic {
            let mut table = self.traffic_table();
            if table.get(&key).is_some_and(|x| Arc::ptr_eq(x, t)) {
                table.remove(&key);
            }
        }
        traffic
    }

    /// The traffic counter of a ready instance (`None` when it is not in the catalog).
    pub fn traffic(&self, service: &ServiceKey, index: u32) -> Option<Arc<Traffic>> {
        self.traffic_table().get(&(service.clone(), index)).cloned()
    }

    fn traffic_table(&self) -> std::sync::MutexGuard<'_, HashMap<(ServiceKey, u32), Arc<Traffic>>> {
        self.traffic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes this catalog a copy of another one (an agent's mirror of its server's): the
    /// services and their ready endpoints as given, in one change. Endpoints that left are
    /// withdrawn as by [`Catalog::remove`]; returns their traffic counters to drain on.
    pub fn mirror(
        &self,
        services: BTreeMap<ServiceKey, (ServiceInfo, BTreeMap<u32, Endpoint>)>,
    ) -> Vec<(ServiceKey, u32, Arc<Traffic>)> {
        let before = self.snapshot();
        let mut left = Vec::new();
        {
            let mut table = self.traffic_table();
            for (k, e) in &before.services {
                for (i, was) in &e.endpoints {
                    let stays = services
                        .get(k)
                        .is_some_and(|(_, eps)| eps.get(i) == Some(was));
                    if !stays && let Some(t) = table.get(&(k.clone(), *i)) {
                        t.withdrawn.store(true, Ordering::SeqCst);
                        left.push((k.clone(), *i, t.clone()));
                    }
                }
            }
            // Counters exist before a snapshot lists their endpoints; a moved endpoint (same
            // index, another address) gets a fresh one.
            for (k, (_, eps)) in &services {
                for i in eps.keys() {
                    let t = table
                        .entry((k.clone(), *i))
                        .or_insert_with(|| Arc::new(Traffic::default()));
                    if t.is_withdrawn() {
                        *t = Arc::new(Traffic::default());
                    }
                }
            }
        }
        self.update(|current| {
            current.retain(|k, _| services.contains_key(k));
            for (k, (info, endpoints)) in services {
                let e = current.entry(k).or_default();
                e.set_info(info);
                e.endpoints = endpoints;
            }
        });
        // Forgotten once no snapshot to come lists them.
        let mut table = self.traffic_table();
        for (k, i, t) in &left {
            let key = (k.clone(), *i);
            if table.get(&key).is_some_and(|x| Arc::ptr_eq(x, t)) {
                table.remove(&key);
            }
        }
        drop(table);
        left
    }

    /// The request counters of one release of a service, shared by every proxy of this
    /// process (made on first use).
    pub fn release_stats(&self, service: &ServiceKey, release: u64) -> Arc<ReleaseStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.entry((service.clone(), release)).or_default().clone()
    }

    /// What the proxies of this process counted for one release of a service so far.
    pub fn figures(&self, service: &ServiceKey, release: u64) -> Figures {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats
            .get(&(service.clone(), release))
            .map(|s| s.read())
            .unwrap_or_default()
    }

    /// Everything the proxies of this process counted, per service and release.
    pub fn all_figures(&self) -> Vec<(ServiceKey, u64, Figures)> {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(ServiceKey, u64, Figures)> = stats
            .iter()
            .map(|((k, r), s)| (k.clone(), *r, s.read()))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// Forgets the counters of the releases `keep` says no.
    pub fn forget_stats(&self, keep: impl Fn(&ServiceKey, u64) -> bool) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.retain(|(k, r), _| keep(k, *r));
    }

    /// Waits until the index passes `after` (at most `wait`); returns the snapshot then.
    pub async fn wait_past(&self, after: u64, wait: Duration) -> Arc<Snapshot> {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > after)).await;
        self.snapshot()
    }
}

impl Snapshot {
    /// The entries of one environment, optionally of one stack and service.
    pub fn select<'a>(
        &'a self,
        env: Option<&'a str>,
        stack: Option<&'a str>,
        service: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ServiceKey, &'a ServiceEntry)> {
        self.services.iter().filter(move |(k, _)| {
            env.is_none_or(|e| k.env == e)
                && stack.is_none_or(|s| k.stack == s)
                && service.is_none_or(|s| k.service == s)
        })
    }

    /// The services with a stable address and a TCP port: what every node's proxies serve.
    pub fn addressed(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceEntry)> {
        self.services
            .iter()
            .filter(|(_, e)| e.address.is_some() && !e.targets.is_empty())
    }

    /// The index of the last change to [`Snapshot::addressed`] (a service coming or going
    /// counts), so that a node's mirror of it wakes for nothing else.
    pub fn index_of_addressed(&self) -> u64 {
        self.addressed()
            .map(|(_, e)| e.modified)
            .max()
            .unwrap_or(0)
            .max(self.keys_changed)
    }

    /// The index of the last change to what a filter selects: the newest `modified` of the
    /// selected entries; the catalog's index when nothing is filtered or nothing matches (a
    /// service that went away is a change too).
    pub fn index_of(&self, env: Option<&str>, stack: Option<&str>, service: Option<&str>) -> u64 {
        if env.is_none() && stack.is_none() && service.is_none() {
            return self.index;
        }
        self.select(env, stack, service)
            .map(|(_, e)| e.modified)
            .max()
            .unwrap_or(self.index)
    }
}

// === request figures per release ===

/// Upper bounds (milliseconds) of the latency buckets; the last bucket has none.
pub const LATENCY_BOUNDS_MS: [u64; 23] = [
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000,
    3_000, 5_000, 10_000,
];

/// Requests to one release of a service: counted by the proxies as responses start (or fail),
/// read by the control plane to judge a canary. Lock-free; cumulative.
#[derive(Debug, Default)]
pub struct ReleaseStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
}

impl ReleaseStats {
    /// One request answered with `status` (a proxy's own 502/504 included) after `latency`
    /// until the response head. A status of 500 or more is an error.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ms = latency.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS.partition_point(|&b| b < ms);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> Figures {
        Figures {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Request figures of a release: cumulative, or over a window (`since`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    /// Responses of 500 or more.
    pub errors: u64,
    /// Counts per bucket of [`LATENCY_BOUNDS_MS`] (and one past the last bound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

impl Figures {
    /// Adds what another proxy counted.
    pub fn add(&mut self, other: &Figures) {
        // Saturating: figures sent by agents are not trusted to stay in range.
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (i, n) in other.latency.iter().enumerate() {
            self.latency[i] = self.latency[i].saturating_add(*n);
        }
    }

    /// What happened after `earlier` was read.
    pub fn since(&self, earlier: &Figures) -> Figures {
        Figures {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Errors per request, 0 when there were none.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The 99th percentile latency in milliseconds, as the upper bound of its bucket
    /// (`None` without requests; `u64::MAX` when it is past the last bound).
    pub fn p99_ms(&self) -> Option<u64> {
        let total = self.latency.iter().fold(0u64, |a, n| a.saturating_add(*n));
        if total == 0 {
            return None;
        }
        let rank = total - total / 100;
        let mut seen = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

// === routes on the wire ===

/// One route as `skiff routes` and `GET /v1/routes` show it: where requests for a host and
/// path prefix go right now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Exact host, or `*.suffix` for a wildcard.
    pub host: String,
    pub path: String,
    pub strip_prefix: bool,
    pub env: String,
    pub stack: String,
    pub service: String,
    /// The service's port (name or number) requests go to.
    pub port: String,
    pub backends: Vec<BackendInfo>,
}

/// A backend of a route and what the ingress knows of it now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// The instance's index (`web-2` is 2).
    pub instance: u32,
    pub addr: SocketAddr,
    /// The weight of its backend set.
    pub weight: u32,
    /// Requests (and tunnels) in flight through the ingress.
    pub in_flight: usize,
    /// Out of rotation after repeated failures, for a while.
    pub ejected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(service: &str, index: u32) -> InstanceId {
        InstanceId {
            stack: StackKey::new("default", "shop").unwrap(),
            service: service.into(),
            index,
        }
    }

    fn known(services: &[&str]) -> BTreeMap<ServiceKey, ServiceInfo> {
        let stack = StackKey::new("default", "shop").unwrap();
        services
            .iter()
            .map(|s| {
                (
                    ServiceKey::new(&stack, s),
                    ServiceInfo::with_ports(&["http"]),
                )
            })
            .collect()
    }

    #[test]
    fn release_figures_count_errors_and_place_p99_in_its_latency_bucket() {
        let s = ReleaseStats::default();
        for _ in 0..98 {
            s.record(200, Duration::from_millis(4));
        }
        s.record(503, Duration::from_millis(120));
        s.record(500, Duration::from_secs(30));
        let f = s.read();
        assert_eq!((f.requests, f.errors), (100, 2));
        assert_eq!(f.p99_ms(), Some(150), "99 of 100 are at or under 150 ms");
        assert!((f.error_rate() - 0.02).abs() < 1e-9);
        let base = f.clone();
        s.record(200, Duration::from_millis(1));
        let window = s.read().since(&base);
        assert_eq!((window.requests, window.errors), (1, 0));
        assert_eq!(window.p99_ms(), Some(1));
        assert_eq!(Figures::default().p99_ms(), None);
    }

    #[test]
    fn a_split_divides_the_serving_endpoints_and_leaving_ones_take_nothing() {
        let ep = |i: u32| Endpoint {
            index: i,
            address: "127.0.0.1".parse().unwrap(),
            ports: BTreeMap::new(),
        };
        let mut e = ServiceEntry {
            endpoints: (1..=4).map(|i| (i, ep(i))).collect(),
            leaving: BTreeSet::from([2]),
            ..ServiceEntry::default()
        };
        let idx = |eps: &[&Endpoint]| eps.iter().map(|e| e.index).collect::<Vec<_>>();
        let pools = e.pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(idx(&pools[0].2), [1, 3, 4]);
        e.split = Some(Split {
            release: 2,
            canary: BTreeSet::from([4]),
            stable: 1,
            weight: 0,
        });
        let pools = e.pools();
        assert_eq!(
            (pools[0].0, pools[0].1, idx(&pools[0].2)),
            (1, 100, vec![1, 3])
        );
        assert_eq!((pools[1].0, pools[1].1, idx(&pools[1].2)), (2, 0, vec![4]));
        assert_eq!(idx(&e.resolving()), [1, 3], "weight 0: not resolved");
        e.split.as_mut().unwrap().weight = 100;
        assert_eq!(idx(&e.resolving()), [4], "switched");
        e.leaving.insert(4);
        assert_eq!(
            idx(&e.resolving()),
            [1, 3],
            "nothing weighted left: the rest"
        );
    }

    #[test]
    fn every_endpoint_of_the_current_snapshot_has_its_counter() {
        // A proxy that rebuilds its table on the change notification must find the counter
        // of every endpoint the new snapshot lists, or it leaves the instance out for good.
        let c = Arc::new(Catalog::default());
        c.set_services(known(&["web"]));
        let key = ServiceKey::of(&id("web", 1));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (c, key, done) = (c.clone(), key.clone(), done.clone());
            std::thread::spawn(move || {
                let mut missing = 0;
                while !done.load(Ordering::Relaxed) {
                    let snap = c.snapshot();
                    let without: Vec<u32> = snap.services[&key]
                        .endpoints
                        .keys()
                        .copied()
                        .filter(|i| c.traffic(&key, *i).is_none())
                        .collect();
                    // Counted only if that snapshot was still the current one meanwhile.
                    if !without.is_empty() && c.snapshot().index == snap.index {
                        missing += 1;
                    }
                }
                missing
            })
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for round in 0..20_000u32 {
            let i = round % 4 + 1;
            if round % 8 < 4 {
                c.add(&id("web", i), lo, BTreeMap::new());
            } else {
                c.remove(&id("web", i));
            }
        }
        done.store(true, Ordering::Relaxed);
        assert_eq!(
            reader.join().unwrap(),
            0,
            "current endpoints seen without a counter"
        );
    }

    #[tokio::test]
    async fn a_removed_instance_refuses_new_requests_and_drains_those_in_flight() {
        let c = Catalog::default();
        c.set_services(known(&["web"]));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        c.add(&id("web", 1), lo, BTreeMap::new());
        let key = ServiceKey::of(&id("web", 1));
        let t = c.traffic(&key, 1).expect("a ready instance has a counter");
        assert!(t.begin());
        assert!(t.begin());
        t.end();
        let removed = c.remove(&id("web", 1)).unwrap();
        assert!(Arc::ptr_eq(&t, &removed));
        assert!(c.traffic(&key, 1).is_none());
        assert!(!t.begin(), "withdrawn: the proxy picks another instance");
        assert_eq!(t.in_flight(), 1);
        assert!(!removed.drained(Duration::from_millis(20)).await);
        let t2 = t.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            t2.end();
        });
        assert!(removed.drained(Duration::from_secs(5)).await);
        // Ready again: a fresh counter.
        c.add(&id("web", 1), lo, BTreeMap::new());
        let again = c.traffic(&key, 1).unwrap();
        assert!(!Arc::ptr_eq(&t, &again) && again.begin());
    }

    #[test]
    fn each_change_publishes_one_index_and_no_change_publishes_none() {
        let c = Catalog::default();
        c.set_services(known(&["web"]));
        assert_eq!(c.snapshot().index, 1);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        c.add(&id("web", 1), lo, BTreeMap::from([("http".into(), 4001)]));
        c.add(&id("web", 2), lo, BTreeMap::from([("http".into(), 4002)]));
        assert_eq!(c.snapshot().index, 3);
        c.remove(&id("web", 3));
        c.set_services(known(&["web"]));
        assert_eq!(c.snapshot().index, 3, "no-op changes publish nothing");
        c.remove(&id("web", 1));
        let snap = c.snapshot();
        assert_eq!(snap.index, 4);
        let web = snap.select(None, None, Some("web")).next().unwrap().1;
        assert_eq!(web.endpoints.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(web.modified, 4);
        assert_eq!(snap.index_of(None, None, Some("web")), 4);
    }

    #[test]
    fn a_change_to_one_service_leaves_the_others_index_alone() {
        let c = Catalog::default();
        c.set_services(known(&["web", "db"]));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        c.add(&id("web", 1), lo, BTreeMap::new());
        c.add(&id("db", 1), lo, BTreeMap::new());
        let snap = c.snapshot();
        assert_eq!(snap.index, 3);
        assert_eq!(snap.index_of(None, None, Some("web")), 2);
        assert_eq!(snap.index_of(None, None, Some("db")), 3);
        assert_eq!(snap.index_of(None, None, Some("gone")), 3);
    }

    #[test]
    fn unknown_services_take_no_endpoints_and_forgotten_ones_lose_theirs() {
        let c = Catalog::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        c.add(&id("web", 1), lo, BTreeMap::new());
        assert!(c.snapshot().services.is_empty());
        c.set_services(known(&["web", "db"]));
        c.add(&id("web", 1), lo, BTreeMap::new());
        c.set_services(known(&["db"]));
        let snap = c.snapshot();
        assert_eq!(snap.services.len(), 1);
        assert!(snap.select(None, None, Some("web")).next().is_none());
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_the_next_change_or_at_its_deadline() {
        let c = Arc::new(Catalog::default());
        c.set_services(known(&["web"]));
        let start = std::time::Instant::now();
        let snap = c.wait_past(1, Duration::from_millis(50)).await;
        assert_eq!(snap.index, 1);
        assert!(start.elapsed() >= Duration::from_millis(50));
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait_past(1, Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        c.add(&id("web", 1), "127.0.0.1".parse().unwrap(), BTreeMap::new());
        let snap = waiter.await.unwrap();
        assert_eq!(snap.index, 2);
    }

    #[test]
    fn a_mirror_takes_the_copy_whole_and_withdraws_what_left_or_moved() {
        let c = Catalog::new();
        let key = ServiceKey::new(&StackKey::new("default", "shop").unwrap(), "web");
        let ep = |i: u32, ip: &str| Endpoint {
            index: i,
            address: ip.parse().unwrap(),
            ports: BTreeMap::from([("http".to_string(), 8000 + i as u16)]),
        };
        let info = ServiceInfo {
            address: Some("127.77.0.1".parse().unwrap()),
            targets: BTreeMap::from([("http".to_string(), 80)]),
            ..ServiceInfo::with_ports(&["http"])
        };
        let copy = |eps: Vec<Endpoint>| {
            BTreeMap::from([(
                key.clone(),
                (
                    info.clone(),
                    eps.into_iter().map(|e| (e.index, e)).collect(),
                ),
            )])
        };
        assert!(
            c.mirror(copy(vec![ep(1, "10.0.0.1"), ep(2, "10.0.0.2")]))
                .is_empty()
        );
        let snap = c.snapshot();
        assert_eq!(snap.services[&key].endpoints.len(), 2);
        assert_eq!(snap.services[&key].address, info.address);
        let one = c.traffic(&key, 1).unwrap();
        let two = c.traffic(&key, 2).unwrap();
        assert!(one.begin());

        // 1 stays, 2 moved to another node, 3 is new.
        let index = c.snapshot().index;
        let left = c.mirror(copy(vec![
            ep(1, "10.0.0.1"),
            ep(2, "10.0.0.9"),
            ep(3, "10.0.0.3"),
        ]));
        assert_eq!(c.snapshot().index, index + 1, "one change");
        assert_eq!(left.len(), 1);
        assert!(Arc::ptr_eq(&left[0].2, &two) && two.is_withdrawn());
        assert!(Arc::ptr_eq(&c.traffic(&key, 1).unwrap(), &one) && !one.is_withdrawn());
        assert!(!c.traffic(&key, 2).unwrap().is_withdrawn());
        assert!(c.traffic(&key, 3).is_some());

        // The service went away: its endpoints are withdrawn, the index moves once.
        let left = c.mirror(BTreeMap::new());
        assert_eq!(left.len(), 3);
        assert!(one.is_withdrawn());
        assert!(c.snapshot().services.is_empty());
        assert_eq!(c.snapshot().keys_changed, c.snapshot().index);
    }
}
