//! The JSON of skiff's API, both ways: what agents and the CLI send, what the server answers
//! (`docs/openapi.json` describes the same shapes). `skiff-api` serves these types and the
//! [`Client`](crate::Client) reads them, so the two cannot drift apart.
//!
//! Query types serialize to query strings ([`serde_urlencoded`]); the server reads them with
//! the same derive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use skiff_catalog::{
    BackendInfo, Endpoint, RouteInfo, ServiceEntry, ServiceInfo, ServiceKey, Split,
};
use skiff_model::{
    Allocation, Author, Cause, Driver, Environment, Instance, InstanceId, InstanceStats, NewEvent,
    NodeResources, OverrideFile, RouteSpec, ServiceSpec, StackSpec,
};

// === agents ↔ server ===

/// What an agent tells the server about its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub name: String,
    /// Where its instances are reached.
    pub address: String,
    /// Its agent's own listener (logs, exec, signals, stats), on `address`; 0: none.
    #[serde(default)]
    pub agent_port: u16,
    pub resources: NodeResources,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<Driver>,
    /// It runs proxies on its own copy of the catalog ([`Node::proxies`](skiff_model::Node::proxies)).
    #[serde(default)]
    pub proxies: bool,
}

/// A node's allocations at an index (the store revision of their last change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    pub index: u64,
    pub allocations: Vec<Allocation>,
}

/// What changed on a node since its last report, in the order it happened.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `instances` is everything the node runs: the server forgets the node's other records
    /// (sent once after the agent starts and adopts).
    #[serde(default)]
    pub full: bool,
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// One change of a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// An instance's state now; the server routes to it exactly while it is `healthy`.
    Instance(Instance),
    /// The instance is gone from the node.
    Removed(InstanceId),
    Event(NewEvent),
}

/// Instances of a service the scheduler could place on no node, and why, in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplacedView {
    pub env: String,
    pub stack: String,
    pub service: String,
    pub missing: u32,
    pub reason: String,
}

/// Where a release of a stack would run if it were deployed now (`skiff plan`), per
/// service; nothing is written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPreview {
    pub services: Vec<ServicePlacement>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlacement {
    pub service: String,
    /// Running instances that stay where they are.
    pub keep: u32,
    /// New instances per node name.
    pub place: BTreeMap<String, u32>,
    /// Running instances that would stop (surplus, or on a node they may no longer use).
    pub stop: u32,
    /// Instances that would fit no node, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<UnplacedView>,
}

/// The server's answer to a report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// Instances the report took out of traffic that still have requests in flight: only
    /// these need a drain before their stop signal.
    #[serde(default)]
    pub busy: Vec<InstanceId>,
}

/// The answer to a drain: whether the instance's requests all finished in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    pub drained: bool,
    pub in_flight: usize,
}

/// The query of an instance's logs: follow new records, and only records at or after
/// `since_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    pub follow: bool,
    #[serde(default)]
    pub since_ms: u64,
}

/// The catalog at one index (`GET /v1/catalog`): every known service of the selection with
/// its ready instances.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogView {
    /// Pass as `index` to wait for the next change.
    pub index: u64,
    pub services: Vec<CatalogService>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CatalogService {
    #[serde(flatten)]
    pub key: ServiceKey,
    /// Port names, in the order the service declares them.
    pub ports: Vec<String>,
    /// Ingress routes besides the service's default host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// Service ports: port name → the port every node listens on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published: BTreeMap<String, u16>,
    /// The service's stable address, the same on every node (127.77.0.0/16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// TCP port name → the port the stable address listens on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<String, u16>,
    /// A canary or blue-green release in progress: how traffic divides between releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// Ready instances that take no new requests: their allocation is gone.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub leaving: BTreeSet<u32>,
    /// Instances ready for traffic now.
    pub endpoints: Vec<Endpoint>,
}

impl CatalogService {
    /// The entry as a catalog holds it.
    pub fn from_entry(key: &ServiceKey, e: &ServiceEntry) -> CatalogService {
        CatalogService {
            key: key.clone(),
            ports: e.ports.clone(),
            routes: e.routes.clone(),
            published: e.published.clone(),
            address: e.address,
            targets: e.targets.clone(),
            split: e.split.clone(),
            leaving: e.leaving.clone(),
            endpoints: e.endpoints.values().cloned().collect(),
        }
    }

    /// What [`skiff_catalog::Catalog::mirror`] takes.
    pub fn into_parts(self) -> (ServiceKey, (ServiceInfo, BTreeMap<u32, Endpoint>)) {
        let info = ServiceInfo {
            ports: self.ports,
            routes: self.routes,
            published: self.published,
            address: self.address,
            targets: self.targets,
            split: self.split,
            leaving: self.leaving,
        };
        let endpoints = self.endpoints.into_iter().map(|e| (e.index, e)).collect();
        (self.key, (info, endpoints))
    }
}

/// The server's error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

// === stacks and releases ===

/// A stack and the release that should run (`GET /v1/stacks`, `DELETE …/stacks/{stack}`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StackView {
    pub env: String,
    pub stack: String,
    /// The release that should run; `null` after `down`.
    pub current: Option<u64>,
}

/// A release to record (`POST …/releases`), or to preview the placement of (`POST …/plan`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NewRelease {
    pub spec: StackSpec,
    /// The resolved compose file the release was made from.
    #[serde(default)]
    pub source: String,
    /// Who asks (recorded with the release; `unknown` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// A service's new replica count (`POST …/scale`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ScaleRequest {
    pub service: String,
    pub replicas: u32,
    /// Who asks (recorded with the release; `unknown` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// A release without its spec, for history listings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSummary {
    pub number: u64,
    pub created_ms: u64,
    pub services: Vec<String>,
    pub current: bool,
    #[serde(default)]
    pub author: Author,
    #[serde(default)]
    pub cause: Cause,
    /// The change from the release before, in one line of at most 200 characters
    /// ([`skiff_model::diff::summary`]): `web: image demo:1→demo:2; +worker`, `no change`,
    /// `initial`.
    #[serde(default)]
    pub change: String,
}

// === services and instances ===

/// What `POST …/services/{service}/{action}` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    /// Keep the service's instances stopped until `Start` (or the next deploy).
    Stop,
    Start,
    /// Replace every instance (and start a stopped service).
    Restart,
}

impl ServiceAction {
    /// The action's path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Stop => "stop",
            ServiceAction::Start => "start",
            ServiceAction::Restart => "restart",
        }
    }
}

/// A service's control state after `stop`, `start` or `restart`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceControlView {
    pub env: String,
    pub stack: String,
    pub service: String,
    pub stopped: bool,
    /// Bumped by every restart; instances of an older generation are replaced.
    pub generation: u64,
}

/// One instance in a service status: observed state and resource usage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InstanceStatus {
    #[serde(flatten)]
    pub instance: Instance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<InstanceStats>,
}

/// What `skiff status SERVICE` shows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub env: String,
    pub stack: String,
    pub service: String,
    /// The stack's current release.
    pub release: u64,
    pub stopped: bool,
    pub generation: u64,
    pub spec: ServiceSpec,
    pub instances: Vec<InstanceStatus>,
    /// Instances the scheduler could place on no node, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<UnplacedView>,
}

/// Which stacks a listing covers (`GET /v1/instances`, `GET /v1/unplaced`): every one when
/// empty.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct StackFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// `GET /v1/events`: events after a sequence number, at most `limit` (default 1000); only
/// those of `env` and `stack` when given.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    #[serde(default)]
    pub after: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

/// A command to run in an instance (`POST …/instances/{instance}/exec`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
}

/// The result of `exec`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub exit_code: i64,
    pub output: String,
}

/// `POST /v1/envs/{env}/copy-data`: copy the environment's volumes into environment `to`
/// (what `skiff env clone A B --with-data` calls).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CopyDataRequest {
    pub to: String,
}

/// How a volume was copied.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CopyMethod {
    /// Every file shares its extents with the source (FICLONE): nothing was written.
    Reflink,
    /// Byte for byte (the file system has no reflinks).
    #[default]
    Copy,
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Copy => "copy",
        })
    }
}

/// One volume copied into the other environment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VolumeCopy {
    pub stack: String,
    /// The volume's key under the top-level `volumes`.
    pub volume: String,
    /// The node (id) that holds both copies.
    pub node: String,
    /// Bytes of file data in the volume.
    pub bytes: u64,
    /// Bytes actually written (0 when every file was a reflink).
    pub written: u64,
    pub method: CopyMethod,
    /// From holding the instances still to letting them go.
    pub ms: u64,
}

/// The answer of `copy-data`: every volume copied, on every node.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CopiedData {
    pub volumes: Vec<VolumeCopy>,
}

/// A signal to send to an instance's workload (`POST …/instances/{instance}/signal`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SignalRequest {
    pub signal: String,
}

// === nodes ===

/// Labels to set and to remove (`POST /v1/nodes/{id}/labels`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

// === DNS and routes ===

/// `POST /v1/envs/{env}/stacks/{stack}/rollback`: deploy release `to` again (default: the one
/// before the current) as a new release.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// Who asks (recorded with the release; `unknown` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// A service's last rollout (`GET /v1/envs/{env}/stacks/{stack}/rollouts`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RolloutView {
    pub service: String,
    /// The release rolled out.
    pub release: u64,
    /// The release it replaces, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Rolled by `rollback_config` (a rollback).
    #[serde(default)]
    pub rollback: bool,
    /// `running`, `paused`, `done` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Instances to replace when it started, replaced so far, failed.
    pub total: u32,
    pub replaced: u32,
    pub failed: u32,
    /// Instances being replaced now, and new ones in their monitor window.
    pub in_flight: u32,
    pub watching: u32,
    pub started_ms: u64,
    /// Canary and blue-green releases: steps, weight, and the ingress's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficView>,
}

/// What an agent sends with `PUT /v1/nodes/{id}/figures`: its proxies' figures and, per
/// environment, when a request last went through them (an older agent sends the list alone).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum NodeFiguresBody {
    Full {
        figures: Vec<NodeFigures>,
        /// Milliseconds since the Unix epoch of the last request per environment.
        #[serde(default)]
        last_requests: BTreeMap<String, u64>,
    },
    List(Vec<NodeFigures>),
}

impl NodeFiguresBody {
    /// The figures and the last requests (none from an older agent).
    pub fn into_parts(self) -> (Vec<NodeFigures>, BTreeMap<String, u64>) {
        match self {
            NodeFiguresBody::Full {
                figures,
                last_requests,
            } => (figures, last_requests),
            NodeFiguresBody::List(figures) => (figures, BTreeMap::new()),
        }
    }
}

/// What an agent's proxies counted for one release of a service (cumulative), sent with
/// `PUT /v1/nodes/{id}/figures` so that a canary is judged by every ingress's requests.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeFigures {
    pub service: ServiceKey,
    pub release: u64,
    pub figures: skiff_catalog::Figures,
}

/// How a canary or blue-green release moves traffic, and what the ingress saw of it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TrafficView {
    /// `canary` or `blue-green`.
    pub strategy: String,
    /// The step being taken (1-based) of `steps`; blue-green: 1 before the switch, 2 after.
    pub step: u32,
    pub steps: u32,
    /// Percent of requests to the new release now.
    pub weight: u32,
    /// The last judgement of the analysis, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// What this server's ingress counted for the new release and for the one it replaces,
    /// since the rollout started splitting traffic.
    pub new: ReleaseFigures,
    pub stable: ReleaseFigures,
}

/// Requests, errors (5xx) and p99 latency of one release through the ingress.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseFigures {
    pub release: u64,
    pub requests: u64,
    pub errors: u64,
    /// Upper bound of the 99th percentile's latency bucket, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
}

/// `GET /v1/catalog`: which services, and whether to block (a blocking query).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Answer only once the catalog's index is past this one (or `wait` ran out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Only services with a stable address and a TCP port (what a node's proxies serve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressed: Option<bool>,
    /// How long to block, e.g. `30s`, `500ms` (default 60s, at most 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// `GET /v1/nodes/{id}/allocations`: a blocking query on the node's allocation index.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    #[serde(default)]
    pub index: u64,
    /// How long to block, e.g. `30s`, `500ms` (default: answer at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<String>,
}

/// `POST /v1/agent/instances/{env}/{stack}/{instance}/drain` on an agent's listener.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DrainQuery {
    /// How long to wait for the requests in flight (at most 30 s).
    #[serde(default)]
    pub timeout_ms: u64,
    /// The server's catalog index once the instance left it: a copy of the catalog answered
    /// before that (still listing it) does not bring it back on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// A blocking query's `wait` parameter: `1500ms`.
pub fn wait_ms(wait: Duration) -> String {
    format!("{}ms", wait.as_millis())
}

/// `GET /v1/dns`: a name and a record type (default A).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsQuery {
    pub name: String,
    /// A, AAAA, SRV, SOA… (default A).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
}

/// What the DNS server answers for a name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DnsView {
    pub name: String,
    #[serde(rename = "type")]
    pub qtype: String,
    /// NOERROR, NXDOMAIN or REFUSED.
    pub rcode: String,
    /// Records in zone-file form.
    pub answers: Vec<String>,
    pub authorities: Vec<String>,
    pub additionals: Vec<String>,
}

/// `GET /v1/routes`: the whole table, or only the route a request for `host` (and `path`)
/// takes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoutesQuery {
    /// Only the route a request for this host (and `path`) takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// With `host`: the request path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

// === environments ===

/// An environment as `GET /v1/envs[/{env}]` shows it: its record and what runs in it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EnvView {
    #[serde(flatten)]
    pub env: Environment,
    /// `default` has no record: owner `unknown`, created 0, never expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
    /// Its stacks (deployed at least once, running or down), by name.
    pub stacks: Vec<StackView>,
    /// Instances passing readiness, of the replicas its current releases want.
    pub ready: u32,
    pub desired: u32,
    /// The last request through an ingress or service port to one of its services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request_ms: Option<u64>,
    /// When the reaper downs it (while active), and why (`ttl` or `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_by: Option<String>,
}

/// A new environment (`PUT /v1/envs/{env}`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewEnv {
    /// Copy this environment's values and override files first (`--from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Values over those copied `from`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// Override files after those copied `from`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideFile>,
    /// Who asks: the owner (`unknown` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

/// Values to set and to remove (`POST /v1/envs/{env}/values`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ValuesChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// A copy of an environment (`POST /v1/envs/{env}/clone`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloneEnv {
    /// The new environment's name.
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
    /// Copy the environment's volumes too (`--with-data`), before the clone's instances start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_data: bool,
}

/// What a clone did: the new environment and the releases it deployed into it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CloneResult {
    pub env: EnvView,
    pub releases: Vec<skiff_model::Release>,
    /// The volumes copied (`with_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<CopiedData>,
}
