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
mod env;
pub use env::{
    DEFAULT_ENV, EnvState, Environment, Expiry, MAX_OVERRIDE_BYTES, MAX_OVERRIDES, MAX_VALUE_BYTES,
    MAX_VALUES, OverrideFile, check_env_name, check_value, human_duration,
};
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
        check_env_name(env)?;
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
    /// The environment's values at release time (config templates read them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
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
    /// Compose `configs` granted to the service, with their contents (resolved where `skiff
    /// up` runs: releases carry them to every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigFile>,
    /// `x-skiff.reload`: a change of `configs` alone is applied to running instances by
    /// rewriting the files and sending this signal, instead of replacing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadSpec>,
    /// `x-skiff.seed`: a data-directory snapshot unpacked into one of the service's named
    /// volumes before the first start that finds it unseeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedSpec>,
}

/// A config file an instance gets: compose's `configs` grant with its content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The config's key under the top-level `configs` (names `SKIFF_CONFIG_<NAME>`).
    pub name: String,
    /// Absolute path inside a container (compose's default `/<name>`); for a process, the
    /// place under the instance directory's `configs/`.
    pub target: String,
    /// The file's content (UTF-8 text).
    pub content: String,
    /// Permission bits (compose's default 0444).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// `x-skiff: {template: true}`: `content` is a minijinja template rendered per instance
    /// (strict) with `values`, `service("x")`, `instance` and `env`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    /// The environment's values this template reads (only those: a change of another value
    /// leaves the file, and so the instance, as it is).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

impl ConfigFile {
    /// `SKIFF_CONFIG_<NAME>`: the name upper-cased, anything but ASCII letters and digits
    /// as `_`.
    pub fn env_var(&self) -> String {
        format!("SKIFF_CONFIG_{}", env_name_part(&self.name))
    }

    /// The target as a path relative to a root: without its leading `/`, `.` segments
    /// dropped. `None` for a target that would leave the root (`..`) or names no file.
    pub fn relative_target(&self) -> Option<String> {
        let mut parts = Vec::new();
        for seg in self.target.split('/') {
            match seg {
                "" | "." => {}
                ".." => return None,
                s => parts.push(s),
            }
        }
        (!parts.is_empty()).then(|| parts.join("/"))
    }
}

/// `x-skiff.seed`: where a volume's first contents come from, and how its data is held still
/// while an environment's volumes are copied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedSpec {
    /// An absolute path on the node, or an `http://` URL: a tar archive, optionally
    /// zstd-compressed.
    pub from: String,
    /// The key of the named volume it fills (one the service mounts).
    pub into: String,
    #[serde(default)]
    pub consistency: Consistency,
}

/// How the instances using a volume are held still while it is copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Frozen through the cgroup freezer for the copy, thawed after: same processes.
    #[default]
    Freeze,
    /// Stopped (deregistered, drained, signalled) for the copy, started again after.
    Stop,
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Freeze => "freeze",
            Consistency::Stop => "stop",
        })
    }
}

/// `SKIFF_VOLUME_<NAME>` for the volume keyed `key`: upper-cased, anything but ASCII letters
/// and digits as `_`.
pub fn volume_env_var(key: &str) -> String {
    format!("SKIFF_VOLUME_{}", env_name_part(key))
}

/// A name as part of an environment variable's: upper-cased, anything but ASCII letters and
/// digits as `_` (`my-db.x` → `MY_DB_X`).
pub fn env_name_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `x-skiff.reload`: how a running instance takes new config files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadSpec {
    /// A signal name as `skiff kill` takes it (`SIGHUP`, `HUP`, `USR1`…).
    pub signal: String,
}

/// What a new release's spec means for an instance running an older one
/// ([`ServiceSpec::change_to`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadChange {
    /// Nothing the instance runs with differs (replicas, release policies): re-stamp it.
    Keep,
    /// Only config files differ and the new spec reloads: rewrite `configs` (names, sorted)
    /// and send `signal`; the instance stays.
    Reload {
        configs: Vec<String>,
        signal: String,
    },
    /// Anything else: a new instance replaces it.
    Replace,
}

/// Names of the configs of `new` that differ from `old`'s of that name, sorted.
fn changed_configs(old: &[ConfigFile], new: &[ConfigFile]) -> Vec<String> {
    let mut names: Vec<String> = new
        .iter()
        .filter(|c| !old.contains(c))
        .map(|c| c.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
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
    /// What becomes of an instance started for `self` when `new` is wanted: kept when
    /// everything but the replica count and the release policies (how a change rolls out) is
    /// the same; reloaded when, besides those, only the contents or modes of `configs` differ
    /// and `new` declares `reload`; replaced otherwise (also when a config is added, removed
    /// or moved).
    pub fn change_to(&self, new: &ServiceSpec) -> WorkloadChange {
        let strip = |s: &ServiceSpec| ServiceSpec {
            replicas: 0,
            update: UpdatePolicy::default(),
            rollback: UpdatePolicy::default(),
            release: ReleasePolicy::default(),
            configs: Vec::new(),
            reload: None,
            // A seed only matters before a volume's first start.
            seed: None,
            ..s.clone()
        };
        // Which files exist and where is part of how an instance runs (a process learns
        // each path from its environment): only contents and modes can change in place.
        let places = |s: &ServiceSpec| -> Vec<(String, String)> {
            let mut v: Vec<_> = s
                .configs
                .iter()
                .map(|c| (c.name.clone(), c.target.clone()))
                .collect();
            v.sort();
            v
        };
        if strip(self) != strip(new) || places(self) != places(new) {
            return WorkloadChange::Replace;
        }
        let changed = changed_configs(&self.configs, &new.configs);
        if changed.is_empty() {
            // The reload setting itself only matters to the next config change.
            return WorkloadChange::Keep;
        }
        match &new.reload {
            Some(r) => WorkloadChange::Reload {
                configs: changed,
                signal: r.signal.clone(),
            },
            None => WorkloadChange::Replace,
        }
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
        /// The volume's key under the top-level `volumes` (the process driver's directory
        /// and `SKIFF_VOLUME_<KEY>`); empty for an anonymous volume.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        key: String,
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

    fn config(name: &str, content: &str) -> ConfigFile {
        ConfigFile {
            name: name.into(),
            target: format!("/{name}"),
            content: content.into(),
            mode: None,
            ..Default::default()
        }
    }

    fn reloading(configs: Vec<ConfigFile>) -> ServiceSpec {
        ServiceSpec {
            image: Some("app:1".into()),
            replicas: 2,
            configs,
            reload: Some(ReloadSpec {
                signal: "SIGHUP".into(),
            }),
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn a_config_change_with_reload_is_a_reload_of_the_changed_configs() {
        let old = reloading(vec![config("app", "a=1"), config("log", "x")]);
        let new = reloading(vec![config("app", "a=2"), config("log", "x")]);
        assert_eq!(
            old.change_to(&new),
            WorkloadChange::Reload {
                configs: vec!["app".into()],
                signal: "SIGHUP".into()
            }
        );
        // An added or moved config replaces: its path reaches a process in its environment.
        let added = reloading(vec![
            config("app", "a=1"),
            config("log", "x"),
            config("new", "n"),
        ]);
        assert_eq!(old.change_to(&added), WorkloadChange::Replace);
        let mut moved = old.clone();
        moved.configs[0].target = "/etc/app".into();
        assert_eq!(old.change_to(&moved), WorkloadChange::Replace);
    }

    #[test]
    fn a_config_change_without_reload_replaces() {
        let mut old = reloading(vec![config("app", "a=1")]);
        let mut new = reloading(vec![config("app", "a=2")]);
        old.reload = None;
        new.reload = None;
        assert_eq!(old.change_to(&new), WorkloadChange::Replace);
        // What counts is the new spec's reload.
        old.reload = Some(ReloadSpec {
            signal: "SIGHUP".into(),
        });
        assert_eq!(old.change_to(&new), WorkloadChange::Replace);
    }

    #[test]
    fn a_config_change_together_with_the_image_replaces() {
        let old = reloading(vec![config("app", "a=1")]);
        let mut new = reloading(vec![config("app", "a=2")]);
        new.image = Some("app:2".into());
        assert_eq!(old.change_to(&new), WorkloadChange::Replace);
        let mut env = reloading(vec![config("app", "a=2")]);
        env.environment.insert("X".into(), "1".into());
        assert_eq!(old.change_to(&env), WorkloadChange::Replace);
    }

    #[test]
    fn a_replicas_only_change_keeps() {
        let old = reloading(vec![config("app", "a=1")]);
        let mut new = old.clone();
        new.replicas = 5;
        assert_eq!(old.change_to(&new), WorkloadChange::Keep);
        // Adding or dropping reload alone changes nothing that runs.
        new.reload = None;
        assert_eq!(old.change_to(&new), WorkloadChange::Keep);
    }

    #[test]
    fn config_env_vars_and_targets_are_derived_safely() {
        let mut c = config("app.conf-v2", "");
        assert_eq!(c.env_var(), "SKIFF_CONFIG_APP_CONF_V2");
        assert_eq!(c.relative_target().as_deref(), Some("app.conf-v2"));
        c.target = "/etc/./nginx//nginx.conf".into();
        assert_eq!(c.relative_target().as_deref(), Some("etc/nginx/nginx.conf"));
        c.target = "/etc/../../passwd".into();
        assert_eq!(c.relative_target(), None);
        c.target = "/".into();
        assert_eq!(c.relative_target(), None);
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
