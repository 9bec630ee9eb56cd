//! The typed HTTP client of skiff's API, used by agents, the server (to reach agents'
//! listeners), the CLI (through [`blocking::Client`]) and the tests, and the wire types of
//! the API ([`wire`], re-exported here):
//!
//! ```text
//!   agent ── PUT  /v1/nodes/{id}                    register (resources, labels, drivers)
//!         ── PUT  /v1/nodes/{id}/heartbeat          every second; 404 → register again
//!         ── GET  /v1/nodes/{id}/allocations?index=&wait=   long poll: what to run
//!         ── GET  /v1/envs/{env}/stacks/{stack}/releases/{n} the specs (immutable: cached)
//!         ── POST /v1/nodes/{id}/report             instance states and events, in order
//!         ── POST /v1/envs/{env}/stacks/{stack}/instances/{i}/drain?timeout_ms=
//!                                                   wait until no request is in flight
//!   CLI   ── releases, stacks, scale, service controls and status, instances, events,
//!            logs (streamed), exec, signals, nodes, allocations, DNS, routes, plan preview
//! ```
//!
//! Errors are typed ([`ClientError`]): the server's `{code, message}` bodies come back as
//! [`ClientError::Api`], so a caller can tell "unknown node" from "server unreachable".

pub mod author;
pub mod blocking;
pub mod wire;
pub use wire::*;

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as Http;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use skiff_model::{
    Allocation, Event, Instance, InstanceId, InstanceStats, Node, OverrideFile, Release, StackKey,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer: the connection failed, broke, or the answer took longer than the
    /// client's timeout.
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    /// The server answered with an error status. `code` and `message` are those of its
    /// `{code, message}` body; a body that is not one gives code [`ClientError::NO_CODE`]
    /// and the body's text as the message.
    #[error("{method} {url}: {status}: {message}")]
    Api {
        method: Method,
        url: String,
        status: StatusCode,
        code: String,
        message: String,
    },
    /// A success whose body is not what the endpoint answers.
    #[error("{method} {url}: unreadable answer: {reason}")]
    Decode {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("invalid server address {0:?}: use http://HOST:PORT")]
    Address(String),
    /// The blocking client could not build its runtime.
    #[error("cannot start the HTTP client: {0}")]
    Runtime(String),
}

impl ClientError {
    /// The `code` of an [`ClientError::Api`] whose body was not a `{code, message}` body.
    pub const NO_CODE: &'static str = "http";

    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's error code (`stack_not_found`…), if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } if code != Self::NO_CODE => Some(code),
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
    /// Longest a request may take, answer body included (not a log stream's).
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the agent listener of `node` (its address, `agent_port`).
    pub fn of_agent(node: &Node) -> Result<Client> {
        let host = match node.address.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => node.address.clone(),
        };
        Client::new(&format!("http://{host}:{}", node.agent_port))
    }

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
        Ok(Client {
            base,
            http,
            timeout: None,
        })
    }

    /// Gives up on a request (but not a log stream) after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
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
    ) -> Result<hyper::Response<Incoming>> {
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
        Err(api_error(method, url, status, &bytes))
    }

    /// Sends a request and reads the whole answer: its status and body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let work = async {
            let resp = self.send(method.clone(), path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    method: method.clone(),
                    url: format!("{}{path}", self.base),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        match self.timeout {
            None => work.await,
            Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                Err(ClientError::Transport {
                    method: method.clone(),
                    url: format!("{}{path}", self.base),
                    reason: format!("no answer within {}s", limit.as_secs_f64()),
                })
            }),
        }
    }

    /// A call whose answer is JSON: the status it came with and the value.
    async fn call_status<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, T)> {
        let (status, bytes) = self.exchange(method.clone(), path, body).await?;
        let value = decode(&bytes).map_err(|reason| ClientError::Decode {
            method,
            url: format!("{}{path}", self.base),
            reason,
        })?;
        Ok((status, value))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        Ok(self.call_status(method, path, body).await?.1)
    }

    /// A call whose answer's body does not matter (204 No Content).
    async fn call_empty(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<()> {
        self.exchange(method, path, body).await.map(drop)
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

    /// What this node's proxies counted per service and release (for canary analysis), and
    /// when a request last went through them per environment (for the idle reaper).
    pub async fn node_figures(
        &self,
        node_id: &str,
        figures: &[NodeFigures],
        last_requests: &std::collections::BTreeMap<String, u64>,
    ) -> Result<()> {
        let body = NodeFiguresBody::Full {
            figures: figures.to_vec(),
            last_requests: last_requests.clone(),
        };
        let _: serde_json::Value = self
            .call(
                Method::PUT,
                &format!("/v1/nodes/{node_id}/figures"),
                Self::json(&body),
            )
            .await?;
        Ok(())
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
        let query = PollQuery {
            index,
            wait: Some(wait_ms(wait)),
        };
        self.call(
            Method::GET,
            &with_query(&format!("/v1/nodes/{node_id}/allocations"), &query),
            None,
        )
        .await
    }

    /// Each service's last rollout in `stack`.
    pub async fn rollouts(&self, stack: &StackKey) -> Result<Vec<RolloutView>> {
        self.call(
            Method::GET,
            &format!("/v1/envs/{}/stacks/{}/rollouts", stack.env, stack.stack),
            None,
        )
        .await
    }

    /// Deploys release `req.to` again (default: the one before the current) as a new release.
    pub async fn rollback(&self, stack: &StackKey, req: &RollbackRequest) -> Result<Release> {
        self.call(
            Method::POST,
            &format!("/v1/envs/{}/stacks/{}/rollback", stack.env, stack.stack),
            Self::json(req),
        )
        .await
    }

    /// `pause` a service's running rollout or `resume` its paused one.
    pub async fn steer_rollout(
        &self,
        stack: &StackKey,
        service: &str,
        action: &str,
    ) -> Result<RolloutView> {
        self.call(
            Method::POST,
            &format!(
                "/v1/envs/{}/stacks/{}/rollouts/{}/{action}",
                stack.env,
                stack.stack,
                segment(service)
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
        let query = CatalogQuery {
            env: stack.map(|s| s.env.clone()),
            stack: stack.map(|s| s.stack.clone()),
            ..CatalogQuery::default()
        };
        self.call(Method::GET, &with_query("/v1/catalog", &query), None)
            .await
    }

    /// The services with a stable address once that part of the catalog changed past
    /// `index` (at most `wait`; a blocking query): what a node's proxies serve.
    pub async fn addressed_catalog(&self, index: u64, wait: Duration) -> Result<CatalogView> {
        let query = CatalogQuery {
            addressed: Some(true),
            index: Some(index),
            wait: Some(wait_ms(wait)),
            ..CatalogQuery::default()
        };
        self.call(Method::GET, &with_query("/v1/catalog", &query), None)
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

/// What the CLI asks: stacks, releases, services, instances, nodes, DNS and routes.
impl Client {
    fn stack_path(stack: &StackKey, rest: &str) -> String {
        format!(
            "/v1/envs/{}/stacks/{}{rest}",
            segment(&stack.env),
            segment(&stack.stack)
        )
    }

    fn instance_path(id: &InstanceId, what: &str) -> String {
        Self::stack_path(
            &id.stack,
            &format!("/instances/{}/{what}", segment(&id.short())),
        )
    }

    fn env_path(env: &str, rest: &str) -> String {
        format!("/v1/envs/{}{rest}", segment(env))
    }

    /// Every environment (`default` too), by name.
    pub async fn envs(&self) -> Result<Vec<EnvView>> {
        self.call(Method::GET, "/v1/envs", None).await
    }

    /// One environment; `None` when it does not exist.
    pub async fn env(&self, env: &str) -> Result<Option<EnvView>> {
        match self.call(Method::GET, &Self::env_path(env, ""), None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code() == Some("env_not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates an environment (an error with code `env_exists` when it exists).
    pub async fn create_env(&self, env: &str, new: &NewEnv) -> Result<EnvView> {
        self.call(Method::PUT, &Self::env_path(env, ""), Self::json(new))
            .await
    }

    /// Sets and removes values.
    pub async fn change_values(&self, env: &str, change: &ValuesChange) -> Result<EnvView> {
        self.call(
            Method::POST,
            &Self::env_path(env, "/values"),
            Self::json(change),
        )
        .await
    }

    /// Replaces the environment's override files.
    pub async fn put_overrides(&self, env: &str, files: &[OverrideFile]) -> Result<EnvView> {
        self.call(
            Method::PUT,
            &Self::env_path(env, "/overrides"),
            Self::json(&files),
        )
        .await
    }

    /// Takes every stack of the environment down (history and data kept).
    pub async fn down_env(&self, env: &str) -> Result<EnvView> {
        self.call(Method::POST, &Self::env_path(env, "/down"), None)
            .await
    }

    /// Removes the environment: its stacks' releases, controls and instance records, and
    /// its record.
    pub async fn remove_env(&self, env: &str) -> Result<()> {
        self.call_empty(Method::DELETE, &Self::env_path(env, ""), None)
            .await
    }

    /// Creates `req.to` with `env`'s values and override files and deploys every stack
    /// current in `env` into it.
    pub async fn clone_env(&self, env: &str, req: &CloneEnv) -> Result<CloneResult> {
        self.call(
            Method::POST,
            &Self::env_path(env, "/clone"),
            Self::json(req),
        )
        .await
    }

    /// Every stack with its current release.
    pub async fn stacks(&self) -> Result<Vec<StackView>> {
        self.call(Method::GET, "/v1/stacks", None).await
    }

    /// Records a release (durably) unless it equals the current one: the release, and
    /// whether it is new (`false`: the current release, unchanged).
    pub async fn create_release(
        &self,
        stack: &StackKey,
        release: &NewRelease,
    ) -> Result<(Release, bool)> {
        let (status, r) = self
            .call_status(
                Method::POST,
                &Self::stack_path(stack, "/releases"),
                Self::json(release),
            )
            .await?;
        Ok((r, status == StatusCode::CREATED))
    }

    /// Where `release` would run if it were deployed now; nothing is recorded.
    pub async fn preview_placement(
        &self,
        stack: &StackKey,
        release: &NewRelease,
    ) -> Result<PlacementPreview> {
        self.call(
            Method::POST,
            &Self::stack_path(stack, "/plan"),
            Self::json(release),
        )
        .await
    }

    /// The stack's releases, oldest first.
    pub async fn releases(&self, stack: &StackKey) -> Result<Vec<ReleaseSummary>> {
        self.call(Method::GET, &Self::stack_path(stack, "/releases"), None)
            .await
    }

    /// Takes the stack down (its history stays).
    pub async fn down(&self, stack: &StackKey) -> Result<StackView> {
        self.call(Method::DELETE, &Self::stack_path(stack, ""), None)
            .await
    }

    /// Records a release with `req.service` at `req.replicas`: the release, and whether it is
    /// new.
    pub async fn scale(&self, stack: &StackKey, req: &ScaleRequest) -> Result<(Release, bool)> {
        let (status, r) = self
            .call_status(
                Method::POST,
                &Self::stack_path(stack, "/scale"),
                Self::json(req),
            )
            .await?;
        Ok((r, status == StatusCode::CREATED))
    }

    /// Stops, starts or restarts a service.
    pub async fn control_service(
        &self,
        stack: &StackKey,
        service: &str,
        action: ServiceAction,
    ) -> Result<ServiceControlView> {
        let path = Self::stack_path(
            stack,
            &format!("/services/{}/{}", segment(service), action.as_str()),
        );
        self.call(Method::POST, &path, Self::json(&serde_json::json!({})))
            .await
    }

    /// A service's spec, control state and instances with their resource usage.
    pub async fn service_status(&self, stack: &StackKey, service: &str) -> Result<ServiceStatus> {
        let path = Self::stack_path(stack, &format!("/services/{}", segment(service)));
        self.call(Method::GET, &path, None).await
    }

    /// Instances as last reported.
    pub async fn instances(&self, filter: &StackFilter) -> Result<Vec<Instance>> {
        self.call(Method::GET, &with_query("/v1/instances", filter), None)
            .await
    }

    /// Work the scheduler could place on no node, and why.
    pub async fn unplaced(&self, filter: &StackFilter) -> Result<Vec<UnplacedView>> {
        self.call(Method::GET, &with_query("/v1/unplaced", filter), None)
            .await
    }

    /// Events after a sequence number.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<Event>> {
        self.call(Method::GET, &with_query("/v1/events", query), None)
            .await
    }

    /// Runs a command in an instance: its exit code and combined output.
    pub async fn exec(&self, id: &InstanceId, cmd: &[String]) -> Result<Exec> {
        self.call(
            Method::POST,
            &Self::instance_path(id, "exec"),
            Self::json(&ExecRequest { cmd: cmd.to_vec() }),
        )
        .await
    }

    /// Copies environment `from`'s volumes into environment `to`, each held still as its
    /// service's `x-skiff.seed.consistency` says (`POST /v1/envs/{from}/copy-data`).
    pub async fn copy_env_data(&self, from: &str, to: &str) -> Result<CopiedData> {
        self.call(
            Method::POST,
            &format!("/v1/envs/{from}/copy-data"),
            Self::json(&CopyDataRequest { to: to.to_string() }),
        )
        .await
    }

    /// The same, of one node's volumes, asked of its agent's listener.
    pub async fn agent_copy_env_data(&self, from: &str, to: &str) -> Result<CopiedData> {
        self.call(
            Method::POST,
            &format!("/v1/agent/envs/{from}/copy-data"),
            Self::json(&CopyDataRequest { to: to.to_string() }),
        )
        .await
    }

    /// Removes an agent's volumes of environment `env` (`skiff env rm`).
    pub async fn agent_remove_env_data(&self, env: &str) -> Result<()> {
        self.call_empty(
            Method::DELETE,
            &format!("/v1/agent/envs/{env}/volumes"),
            None,
        )
        .await
    }

    /// Sends a signal (`SIGHUP`, `HUP`…) to an instance's workload.
    pub async fn signal(&self, id: &InstanceId, signal: &str) -> Result<()> {
        self.call_empty(
            Method::POST,
            &Self::instance_path(id, "signal"),
            Self::json(&SignalRequest {
                signal: signal.to_string(),
            }),
        )
        .await
    }

    /// An instance's log records, line by line as the server sends them (with `follow`, until
    /// the instance is gone or the stream is dropped). No timeout applies.
    pub async fn logs(&self, id: &InstanceId, query: &LogQuery) -> Result<LogLines> {
        let path = with_query(&Self::instance_path(id, "logs"), query);
        let resp = self.send(Method::GET, &path, None).await?;
        Ok(LogLines {
            url: format!("{}{path}", self.base),
            body: resp.into_body(),
            buf: Vec::new(),
            ended: false,
        })
    }

    /// A node by id or name.
    pub async fn node(&self, node: &str) -> Result<Node> {
        self.call(Method::GET, &format!("/v1/nodes/{}", segment(node)), None)
            .await
    }

    /// Takes no new work on a node and moves its instances elsewhere.
    pub async fn drain_node(&self, node: &str) -> Result<Node> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{}/drain", segment(node)),
            Self::json(&()),
        )
        .await
    }

    /// Lets a drained node take work again.
    pub async fn undrain_node(&self, node: &str) -> Result<Node> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{}/undrain", segment(node)),
            Self::json(&()),
        )
        .await
    }

    pub async fn label_node(&self, node: &str, change: &LabelChange) -> Result<Node> {
        self.call(
            Method::POST,
            &format!("/v1/nodes/{}/labels", segment(node)),
            Self::json(change),
        )
        .await
    }

    /// Every node's allocations.
    pub async fn all_allocations(&self) -> Result<Vec<Allocation>> {
        self.call(Method::GET, "/v1/allocations", None).await
    }

    /// What skiff's DNS server answers for a name.
    pub async fn dns(&self, query: &DnsQuery) -> Result<DnsView> {
        self.call(Method::GET, &with_query("/v1/dns", query), None)
            .await
    }

    /// The ingress's live route table, or the route one host and path take.
    pub async fn routes(&self, query: &RoutesQuery) -> Result<Vec<RouteInfo>> {
        self.call(Method::GET, &with_query("/v1/routes", query), None)
            .await
    }
}

/// An instance's log stream, line by line ([`Client::logs`]).
#[derive(Debug)]
pub struct LogLines {
    url: String,
    body: Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl LogLines {
    /// The next line (without its line end) as soon as it is whole; `None` at the end of the
    /// stream.
    pub async fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(line) = take_line(&mut self.buf, self.ended) {
                return Ok(Some(line));
            }
            if self.ended {
                return Ok(None);
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::Transport {
                        method: Method::GET,
                        url: self.url.clone(),
                        reason: error_chain(&e),
                    });
                }
            }
        }
    }
}

/// The first whole line of `buf`, taken out of it (at the end of the stream, also a last
/// line without a line end).
fn take_line(buf: &mut Vec<u8>, ended: bool) -> Option<String> {
    let end = match buf.iter().position(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if ended && !buf.is_empty() => buf.len(),
        None => return None,
    };
    let line: Vec<u8> = buf.drain(..end).collect();
    let text = line.strip_suffix(b"\n").unwrap_or(&line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    Some(String::from_utf8_lossy(text).into_owned())
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
        let done: Exec = self
            .call(
                Method::POST,
                &Self::agent_path(id, "exec"),
                Self::json(&ExecRequest { cmd: cmd.to_vec() }),
            )
            .await?;
        Ok((done.exit_code, done.output))
    }

    pub async fn agent_signal(&self, id: &InstanceId, signal: &str) -> Result<()> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &Self::agent_path(id, "signal"),
                Self::json(&SignalRequest {
                    signal: signal.to_string(),
                }),
            )
            .await?;
        Ok(())
    }

    /// Withdraws `id` from this node's proxies and waits until none of them has a request
    /// or connection in flight to it, at most `timeout`.
    /// `index`: the server's catalog index after the instance left it (see [`DrainQuery`]).
    pub async fn agent_drain(
        &self,
        id: &InstanceId,
        timeout: Duration,
        index: Option<u64>,
    ) -> Result<Drained> {
        let query = DrainQuery {
            timeout_ms: timeout.as_millis() as u64,
            index,
        };
        self.call(
            Method::POST,
            &with_query(&Self::agent_path(id, "drain"), &query),
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

/// The error of a non-success answer: the server's `{code, message}`, or the body's text.
fn api_error(method: Method, url: String, status: StatusCode, body: &[u8]) -> ClientError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => (
            ClientError::NO_CODE.to_string(),
            String::from_utf8_lossy(body).into_owned(),
        ),
    };
    ClientError::Api {
        method,
        url,
        status,
        code,
        message,
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// `path?query`, or `path` when the query is empty.
fn with_query(path: &str, query: &impl Serialize) -> String {
    let q = serde_urlencoded::to_string(query).expect("query types serialize");
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

/// A path segment, percent-encoded but for RFC 3986's unreserved characters (names that
/// skiff accepts pass unchanged).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers every request with `status` and `body` (one connection).
    async fn answering(status: &'static str, body: &'static str) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(resp.as_bytes()).await.unwrap();
        });
        Client::new(&format!("http://{addr}")).unwrap()
    }

    fn stack() -> StackKey {
        StackKey::new("default", "shop").unwrap()
    }

    #[tokio::test]
    async fn an_error_body_is_an_api_error_with_its_code() {
        let client = answering(
            "404 Not Found",
            r#"{"code":"stack_not_found","message":"no stack default/shop"}"#,
        )
        .await;
        match client.releases(&stack()).await.unwrap_err() {
            ClientError::Api {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(code, "stack_not_found");
                assert_eq!(message, "no stack default/shop");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answer_without_an_error_body_has_no_code() {
        let client = answering("502 Bad Gateway", "upstream gone").await;
        let e = client.stacks().await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
        assert_eq!(e.code(), None);
        assert!(matches!(&e, ClientError::Api { message, .. } if message == "upstream gone"));
    }

    #[tokio::test]
    async fn a_success_that_does_not_parse_is_a_decode_error() {
        let client = answering("200 OK", r#"{"not":"a list"}"#).await;
        let e = client.stacks().await.unwrap_err();
        assert!(matches!(e, ClientError::Decode { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn created_tells_a_new_release_from_the_current_one() {
        let release = r#"{"stack":{"env":"default","stack":"shop"},"number":3,"created_ms":1,
            "spec":{"services":{},"batches":[]},"source":""}"#;
        for (status, created) in [("201 Created", true), ("200 OK", false)] {
            let client = answering(status, release).await;
            let new = NewRelease {
                spec: Default::default(),
                source: String::new(),
                author: None,
            };
            match client.create_release(&stack(), &new).await {
                Ok((r, c)) => assert_eq!((r.number, c), (3, created)),
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_transport_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = Client::new(&format!("http://{addr}"))
            .unwrap()
            .with_timeout(Duration::from_millis(50));
        let e = client.stacks().await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Transport { reason, .. } if reason.contains("no answer")),
            "{e:?}"
        );
        drop(listener);
    }

    #[test]
    fn queries_and_segments_are_encoded() {
        let q = DnsQuery {
            name: "web.shop.default.skiff".into(),
            qtype: Some("SRV".into()),
        };
        assert_eq!(
            with_query("/v1/dns", &q),
            "/v1/dns?name=web.shop.default.skiff&type=SRV"
        );
        let q = RoutesQuery {
            host: Some("web.localhost:7780".into()),
            path: Some("/api?x=1&y".into()),
        };
        assert_eq!(
            with_query("/v1/routes", &q),
            "/v1/routes?host=web.localhost%3A7780&path=%2Fapi%3Fx%3D1%26y"
        );
        assert_eq!(
            with_query("/v1/instances", &StackFilter::default()),
            "/v1/instances"
        );
        assert_eq!(segment("node-1.a_b~"), "node-1.a_b~");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn log_lines_split_on_line_ends() {
        let mut buf = b"1 o one\r\n2 e two\n3 o thr".to_vec();
        assert_eq!(take_line(&mut buf, false).as_deref(), Some("1 o one"));
        assert_eq!(take_line(&mut buf, false).as_deref(), Some("2 e two"));
        assert_eq!(take_line(&mut buf, false), None);
        assert_eq!(take_line(&mut buf, true).as_deref(), Some("3 o thr"));
        assert_eq!(take_line(&mut buf, true), None);
    }
}
