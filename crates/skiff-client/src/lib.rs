//! The typed HTTP client of skiff's API, used by agents (and, as they move over, the CLI and
//! the tests), and the wire types of the agent ↔ server protocol:
//!
//! ```text
//!   agent ── PUT  /v1/nodes/{id}                    register (resources, labels, drivers)
//!         ── PUT  /v1/nodes/{id}/heartbeat          every second; 404 → register again
//!         ── GET  /v1/nodes/{id}/allocations?index=&wait=   long poll: what to run
//!         ── GET  /v1/envs/{env}/stacks/{stack}/releases/{n} the specs (immutable: cached)
//!         ── POST /v1/nodes/{id}/report             instance states and events, in order
//!         ── POST /v1/envs/{env}/stacks/{stack}/instances/{i}/drain?timeout_ms=
//!                                                   wait until no request is in flight
//! ```
//!
//! Errors are typed ([`ClientError`]): the server's `{code, message}` bodies come back as
//! [`ClientError::Api`], so a caller can tell "unknown node" from "server unreachable".

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as Http;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
pub use skiff_catalog::{Endpoint, ServiceEntry, ServiceInfo, ServiceKey};
use skiff_model::{
    Allocation, Driver, Instance, InstanceId, InstanceStats, NewEvent, Node, NodeResources,
    Release, RouteSpec, StackKey,
};

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
    /// It runs proxies on its own copy of the catalog ([`Node::proxies`]).
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

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: {status}: {message}")]
    Api {
        method: Method,
        url: String,
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("{method} {url}: unreadable answer: {reason}")]
    Decode {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("invalid server address {0:?}: use http://HOST:PORT")]
    Address(String),
}

impl ClientError {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A client of one server. Cheap to clone (connections are pooled and shared).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: Http<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// `base` is the server's URL, `http://HOST:PORT`.
    pub fn new(base: &str) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            return Err(ClientError::Address(base));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = Http::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Client { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; a success comes back as the response (body unread), anything else
    /// as the error it is.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let transport = |reason: String| ClientError::Transport {
            method: method.clone(),
            url: url.clone(),
            reason,
        };
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| transport(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (e.code, e.message),
            Err(_) => (
                "http".to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        Err(ClientError::Api {
            method,
            url,
            status,
            code,
            message,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let resp = self.send(method.clone(), path, body).await?;
        let url = format!("{}{path}", self.base);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                method: method.clone(),
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            method,
            url,
            reason: e.to_string(),
        })
    }

    fn json(value: &impl Serialize) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(value).expect("wire types serialize"))
    }

    pub async fn register(&self, node_id: &str, reg: &NodeRegistration) -> Result<Node> {
        self.call(
            Method::PUT,
            &format!("/v1/nodes/{node_id}"),
            Self::json(reg),
        )
        .await
    }

    pub async fn heartbeat(&self, node_id: &str) -> Result<Node> {
        self.call(Method::PUT, &format!("/v1/nodes/{node_id}/heartbeat"), None)
            .await
    }

    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.call(Method::GET, "/v1/nodes", None).await
    }

    /// The node's allocations once their index passes `index` (at once when it already
    /// has), or as they are after `wait`.
    pub async fn allocations(
        &self,
        node_id: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Allocations> {
        self.call(
            Method::GET,
            &format!(
                "/v1/nodes/{node_id}/allocations?index={index}&wait={}ms",
                wait.as_millis()
            ),
            None,
        )
        .await
    }

    pub async fn release(&self, stack: &StackKey, number: u64) -> Result<Release> {
        self.call(
            Method::GET,
            &format!(
                "/v1/envs/{}/stacks/{}/releases/{number}",
                stack.env, stack.stack
            ),
            None,
        )
        .await
    }

    /// The catalog of one stack now (`None`: of every stack).
    pub async fn catalog(&self, stack: Option<&StackKey>) -> Result<CatalogView> {
        let path = match stack {
            Some(s) => format!("/v1/catalog?env={}&stack={}", s.env, s.stack),
            None => "/v1/catalog".to_string(),
        };
        self.call(Method::GET, &path, None).await
    }

    /// The services with a stable address once that part of the catalog changed past
    /// `index` (at most `wait`; a blocking query): what a node's proxies serve.
    pub async fn addressed_catalog(&self, index: u64, wait: Duration) -> Result<CatalogView> {
        self.call(
            Method::GET,
            &format!(
                "/v1/catalog?addressed=true&index={index}&wait={}ms",
                wait.as_millis()
            ),
            None,
        )
        .await
    }

    pub async fn report(&self, node_id: &str, report: &Report) -> Result<ReportAnswer> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{node_id}/report"),
            Self::json(report),
        )
        .await
    }

    /// Waits until no request is in flight on `id` (withdrawn from traffic by a report
    /// that it is stopping), at most `timeout`.
    pub async fn drain(&self, id: &InstanceId, timeout: Duration) -> Result<Drained> {
        self.call(
            Method::POST,
            &format!(
                "/v1/envs/{}/stacks/{}/instances/{}/drain?timeout_ms={}",
                id.stack.env,
                id.stack.stack,
                id.short(),
                timeout.as_millis()
            ),
            None,
        )
        .await
    }
}

/// Calls of an agent's own listener (`skiff_agent::listener`), for the server's proxy.
impl Client {
    fn agent_path(id: &InstanceId, what: &str) -> String {
        format!(
            "/v1/agent/instances/{}/{}/{}/{what}",
            id.stack.env,
            id.stack.stack,
            id.short()
        )
    }

    pub async fn agent_stats(&self, id: &InstanceId) -> Result<InstanceStats> {
        self.call(Method::GET, &Self::agent_path(id, "stats"), None)
            .await
    }

    /// Runs `cmd` in the instance: its exit code and combined output.
    pub async fn agent_exec(&self, id: &InstanceId, cmd: &[String]) -> Result<(i64, String)> {
        #[derive(Deserialize)]
        struct Done {
            exit_code: i64,
            output: String,
        }
        let done: Done = self
            .call(
                Method::POST,
                &Self::agent_path(id, "exec"),
                Self::json(&serde_json::json!({ "cmd": cmd })),
            )
            .await?;
        Ok((done.exit_code, done.output))
    }

    pub async fn agent_signal(&self, id: &InstanceId, signal: &str) -> Result<()> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &Self::agent_path(id, "signal"),
                Self::json(&serde_json::json!({ "signal": signal })),
            )
            .await?;
        Ok(())
    }

    /// Withdraws `id` from this node's proxies and waits until none of them has a request
    /// or connection in flight to it, at most `timeout`.
    pub async fn agent_drain(&self, id: &InstanceId, timeout: Duration) -> Result<Drained> {
        self.call(
            Method::POST,
            &format!(
                "{}?timeout_ms={}",
                Self::agent_path(id, "drain"),
                timeout.as_millis()
            ),
            None,
        )
        .await
    }

    /// The instance's log records as a stream (the response as the agent sent it, for a
    /// proxy to pass on); an error answer is a [`ClientError::Api`].
    pub async fn agent_logs(
        &self,
        id: &InstanceId,
        follow: bool,
        since_ms: u64,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let path = format!(
            "{}?follow={follow}&since_ms={since_ms}",
            Self::agent_path(id, "logs")
        );
        self.send(Method::GET, &path, None).await
    }
}

/// An error with its causes, as one line ("connection refused" sits a few sources down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
