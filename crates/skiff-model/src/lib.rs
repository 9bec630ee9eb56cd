//! skiff's domain model: what the control plane stores and the agents act on.
//!
//! A **stack** (a compose project) in an **environment** gets numbered, immutable
//! **releases**; each release carries a [`StackSpec`], the runtime view of the compose file
//! (the spec crate converts compose into it). Running copies of a service are **instances**,
//! `<service>-<index>` within stack and environment. Desired and observed state use different
//! words: a release says what should run, an [`Instance`]'s `state` says what does.
//!
//! **Invariant:** this crate does no I/O and has no async runtime: serde and thiserror only.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod node;
pub use node::{
    Allocation, Constraint, ConstraintError, ConstraintField, DeployMode, Desired, Node,
    NodeResources, NodeStatus, PlacementSpec, Reservations, Strategy,
};
pub mod diff;
mod release;
pub use release::{
    Analysis, CanaryStep, FailureAction, NoTraffic, Parallelism, ReleasePolicy, ReleaseStrategy,
    Switch, UpdateOrder, UpdatePolicy,
};

// === names ===

/// Error for names and ids that do not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// A DNS-label-safe name: lowercase letters, digits and `-`, 1–63 chars, starting with a
/// letter or digit. Environments and stacks both use it (they become DNS labels).
fn check_label(what: &'static str, s: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        what,
        value: s.to_string(),
        reason,
    };
    if s.is_empty() || s.len() > 63 {
        return Err(err("must be 1-63 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(err("use lowercase letters, digits, '-' and '_' only"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(err("must start with a letter or digit"));
    }
    Ok(())
}

/// A compose service name: starts with a letter or digit, then letters, digits, `_`, `.`,
/// `-`; at most 255 characters (it names directories and cgroups).
pub fn valid_service_name(n: &str) -> bool {
    let mut c = n.chars();
    n.len() <= 255
        && matches!(c.next(), Some(ch) if ch.is_ascii_alphanumeric())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
}

/// A stack within an environment: the unit that releases apply to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StackKey {
    pub env: String,
    pub stack: String,
}

impl StackKey {
    pub fn new(env: &str, stack: &str) -> Result<Self, NameError> {
        check_label("environment", env)?;
        check_label("stack", stack)?;
        Ok(StackKey {
            env: env.to_string(),
            stack: stack.to_string(),
        })
    }
}

impl fmt::Display for StackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.stack)
    }
}

/// An instance: `<env>/<stack>/<service>-<index>`, index from 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId {
    pub stack: StackKey,
    pub service: String,
    pub index: u32,
}

impl InstanceId {
    /// The name people see: `web-2`.
    pub fn short(&self) -> String {
        format!("{}-{}", self.service, self.index)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}-{}", self.stack, self.service, self.index)
    }
}

impl FromStr for InstanceId {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let err = |reason| NameError {
            what: "instance id",
            value: s.to_string(),
            reason,
        };
        let mut parts = s.splitn(3, '/');
        let (Some(env), Some(stack), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected <env>/<stack>/<service>-<index>"));
        };
        let (service, index) = rest
            .rsplit_once('-')
            .ok_or_else(|| err("expected <service>-<index>"))?;
        let index: u32 = index
            .parse()
            .ok()
            .filter(|i| *i >= 1)
            .ok_or_else(|| err("index must be a number from 1"))?;
        if !valid_service_name(service) {
            return Err(err(
                "a service name starts with a letter or digit and has only letters, digits, \
                 '_', '.' and '-'",
            ));
        }
        Ok(InstanceId {
            stack: StackKey::new(env, stack)?,
            service: service.to_string(),
            index,
        })
    }
}

// === release and spec ===

/// An immutable, numbered release of a stack: the resolved spec as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub stack: StackKey,
    /// 1, 2, 3… per stack; never reused.
    pub number: u64,
    /// Milliseconds since the Unix epoch, as recorded by the server.
    pub created_ms: u64,
    pub spec: StackSpec,
    /// The resolved compose file (`skiff config` output) this release was made from.
    pub source: String,
    /// Who made it (`unknown` in records older than authors).
    #[serde(default)]
    pub author: Author,
    /// How it was made (`unknown` in records older than causes).
    #[serde(default)]
    pub cause: Cause,
}

/// Who made a release: the user and host a client said it runs as, or the server itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub user: String,
    pub host: String,
}

impl Author {
    /// What a release records when its request named nobody.
    pub fn unknown() -> Author {
        Author {
            user: "unknown".into(),
            host: "unknown".into(),
        }
    }
}

impl Default for Author {
    fn default() -> Self {
        Author::unknown()
    }
}

impl fmt::Display for Author {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.host)
    }
}

/// How a release came to be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// `skiff up`: a compose file.
    Up,
    /// `skiff scale`: the current release with one service's replica count changed.
    Scale { service: String, replicas: u32 },
    /// `skiff rollback`: release `to`'s spec again, replacing release `from`.
    Rollback { to: u64, from: u64 },
    /// The rollout of release `from` failed and its `failure_action` rolled back to `to`.
    AutomaticRollback { to: u64, from: u64 },
    /// Not recorded (an older release, or a kind this version does not know).
    #[default]
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Unknown => f.write_str("unknown"),
            Cause::Up => f.write_str("up"),
            Cause::Scale { service, replicas } => write!(f, "scale {service}={replicas}"),
            Cause::Rollback { to, .. } => write!(f, "rollback to {to}"),
            Cause::AutomaticRollback { to, from } => {
                write!(f, "automatic rollback to {to} (rollout of {from} failed)")
            }
        }
    }
}

/// What an operator asked of one service, apart from its release: `skiff stop`/`start` and
/// `skiff restart` (which bumps the generation; instances of an older one are replaced).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceControl {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The runtime view of a stack.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StackSpec {
    pub services: BTreeMap<String, ServiceSpec>,
    /// Deploy order: batches of service names that may start in parallel.
    pub batches: Vec<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Docker,
    Process,
}

/// What an agent needs to run one service's instances.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub driver: Driver,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Build the image from this context (Docker driver), tagged per release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    /// Compose `entrypoint` (exec form); `None` keeps the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Compose `command` (exec form); `None` keeps the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Process driver: `x-skiff.executable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Values may hold `{{ service("x").address }}` templates, rendered at start.
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    /// Bind mounts, volumes and tmpfs (Docker driver).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    pub replicas: u32,
    pub depends_on: BTreeMap<String, WaitFor>,
    /// Readiness: gates traffic, `service_healthy` dependents and rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// Liveness: failing `retries` times in a row restarts the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<HealthSpec>,
    /// A failed liveness check leaves the instance running, out of traffic, for inspection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_failed: bool,
    /// Ingress routes from `x-skiff.routes`, besides the service's default host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    pub restart: RestartPolicy,
    pub stop_signal: String,
    #[serde(with = "duration_ms")]
    pub stop_grace: Duration,
    pub limits: ResourceLimits,
    /// What each instance holds on its node, for placement.
    #[serde(default, skip_serializing_if = "is_default")]
    pub reservations: Reservations,
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: PlacementSpec,
    /// How a new release replaces running instances (compose `deploy.update_config`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub update: UpdatePolicy,
    /// How a rollback does (compose `deploy.rollback_config`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollback: UpdatePolicy,
    /// How traffic moves to a new release (`x-skiff.release`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub release: ReleasePolicy,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Docker => "docker",
            Driver::Process => "process",
        })
    }
}

impl ServiceSpec {
    /// Whether instances started for `other` run as this spec wants: everything but the
    /// replica count and the release policies (how a change rolls out) is the same. A new
    /// release that differs in nothing else keeps its instances.
    pub fn same_workload(&self, other: &ServiceSpec) -> bool {
        let strip = |s: &ServiceSpec| ServiceSpec {
            replicas: 0,
            update: UpdatePolicy::default(),
            rollback: UpdatePolicy::default(),
            release: ReleasePolicy::default(),
            ..s.clone()
        };
        strip(self) == strip(other)
    }

    /// What the process driver runs: executable (else entrypoint) followed by the command.
    pub fn process_argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = match (&self.executable, &self.entrypoint) {
            (Some(exe), _) => vec![exe.clone()],
            (None, Some(ep)) => ep.clone(),
            (None, None) => Vec::new(),
        };
        argv.extend(self.command.iter().flatten().cloned());
        argv
    }
}

/// A port of the service. Each instance gets its own host port for `target`.
/// A file system a container gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSpec {
    /// A host path (absolute).
    Bind {
        source: String,
        target: String,
        #[serde(default)]
        read_only: bool,
    },
    /// A named volume (`name` as compose resolves it, e.g. `shop_data`), or an anonymous one
    /// (`name` empty). Outside the default environment a non-external volume is per
    /// environment.
    Volume {
        name: String,
        #[serde(default)]
        external: bool,
        target: String,
        #[serde(default)]
        read_only: bool,
    },
    Tmpfs {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_bytes: Option<u64>,
    },
}

/// Where an image is built from: a directory on the machine that runs `skiff up`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Absolute path of the build context.
    pub context: String,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The long syntax's `name:`, else the target port number as text.
    pub name: String,
    pub target: u16,
    pub protocol: String,
    /// Service port (swarm-style routing mesh) when published in ingress mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// `mode: host`: the instance binds the published port itself.
    #[serde(default)]
    pub host_mode: bool,
}

/// An ingress route to a service: requests for `host` (the service's default host when
/// unset; a leading `*.` matches any one or more labels) whose path starts with `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Prefix, `/` for everything.
    pub path: String,
    /// Port name (as in [`PortSpec::name`]).
    pub port: String,
    /// Remove `path` from the request path before forwarding.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    Started,
    Healthy,
    CompletedSuccessfully,
}

/// A health check: a command (`test`), an HTTP GET (`http`) or a TCP connect (`tcp`) —
/// exactly one of them is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// `["CMD", …]` or `["CMD-SHELL", "…"]`; empty for http and tcp checks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// A TCP connect to the instance's port of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "duration_ms")]
    pub start_period: Duration,
    #[serde(with = "duration_ms")]
    pub start_interval: Duration,
}

/// `GET path` on the instance's port named `port`; passes on `status`, else on any 2xx/3xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub port: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// Give up after this many restarts within `window` (`None`: never give up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(with = "duration_ms")]
    pub delay: Duration,
    #[serde(with = "duration_ms")]
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: None,
            delay: Duration::from_millis(100),
            window: Duration::ZERO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

// === instances and events ===

/// Resource usage of a running instance (from its cgroup).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default)]
    pub oom_kills: u64,
    /// CPU time used since the instance started, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ns: Option<u64>,
    /// CPU in use now (over a short sample), in thousandths of a CPU: 1000 is one full core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

/// Observed state of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed, not started yet (waiting for dependencies).
    Pending,
    Starting,
    /// Running and passing readiness.
    Healthy,
    /// Running, readiness not (yet) passing.
    Unhealthy,
    /// Out of traffic, draining its requests before its stop signal.
    Stopping,
    /// Exited; restart may follow by policy.
    Exited,
    /// Stopped on purpose (stop, scale down, down).
    Stopped,
    /// Restart policy gave up.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    /// The id of the node it runs on (empty in records older than nodes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    pub release: u64,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Host port per port name.
    pub ports: BTreeMap<String, u16>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub updated_ms: u64,
}

/// Something that happened, in the order the server recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic sequence number assigned by the store.
    pub seq: u64,
    pub time_ms: u64,
    pub stack: StackKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub kind: String,
    pub message: String,
}

/// An event before the store numbers it (as agents report it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    pub time_ms: u64,
    pub stack: StackKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub kind: String,
    pub message: String,
}

impl NewEvent {
    pub fn numbered(self, seq: u64) -> Event {
        Event {
            seq,
            time_ms: self.time_ms,
            stack: self.stack,
            instance: self.instance,
            kind: self.kind,
            message: self.message,
        }
    }
}

/// Durations as integer milliseconds on the wire and in the store.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_round_trip_through_text() {
        let id: InstanceId = "default/shop/web-2".parse().unwrap();
        assert_eq!(id.short(), "web-2");
        assert_eq!(id.to_string(), "default/shop/web-2");
        let id: InstanceId = "dev/shop/api-gw-10".parse().unwrap();
        assert_eq!((id.service.as_str(), id.index), ("api-gw", 10));
    }

    #[test]
    fn bad_ids_and_names_say_why() {
        for bad in [
            "shop/web-1",
            "default/shop/web",
            "default/shop/web-0",
            "Default/shop/web-1",
        ] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad}");
        }
        let e = StackKey::new("default", "Shop").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid stack \"Shop\": use lowercase letters, digits, '-' and '_' only"
        );
    }

    #[test]
    fn process_argv_joins_executable_or_entrypoint_with_command() {
        let mut s = ServiceSpec {
            command: Some(vec!["--name".into(), "web".into()]),
            ..ServiceSpec::default()
        };
        assert_eq!(s.process_argv(), vec!["--name", "web"]);
        s.entrypoint = Some(vec!["demo".into()]);
        assert_eq!(s.process_argv(), vec!["demo", "--name", "web"]);
        s.executable = Some("./bin/demo".into());
        assert_eq!(s.process_argv(), vec!["./bin/demo", "--name", "web"]);
    }

    #[test]
    fn releases_without_author_or_cause_load_as_unknown() {
        let old = r#"{"stack":{"env":"default","stack":"shop"},"number":1,"created_ms":5,
            "spec":{"services":{},"batches":[]},"source":""}"#;
        let r: Release = serde_json::from_str(old).unwrap();
        assert_eq!(r.author.to_string(), "unknown@unknown");
        assert_eq!(r.cause, Cause::Unknown);
        let later: Cause = serde_json::from_str(r#"{"kind":"canary_promotion"}"#).unwrap();
        assert_eq!(later, Cause::Unknown, "a kind from a newer version loads");
        let c = Cause::Rollback { to: 2, from: 4 };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"kind":"rollback","to":2,"from":4}"#);
        assert_eq!(serde_json::from_str::<Cause>(&json).unwrap(), c);
        assert_eq!(c.to_string(), "rollback to 2");
    }

    #[test]
    fn releases_serialize_durations_as_milliseconds() {
        let spec = ServiceSpec {
            stop_grace: Duration::from_secs(10),
            ..ServiceSpec::default()
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["stop_grace"], 10_000);
        let back: ServiceSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }
}
