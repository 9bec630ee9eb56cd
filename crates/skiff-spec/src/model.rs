//! The typed compose model: every field of the compose-spec, in canonical (long) form.
//!
//! Reading accepts every spelling the spec allows (short and long syntax, list and map forms,
//! numbers as strings); writing emits one canonical spelling, so `skiff config` output reads back
//! to an equal model. Fields skiff does not act on are kept as opaque JSON values: they are
//! accepted, echoed by `config` and listed as warnings by `validate` ([`NOT_ACTED_ON`]).

mod syntax;
#[cfg(test)]
mod tests;

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer, Serialize};

use crate::de::Extensions;
use crate::units::{Bytes, Cpus, Duration, Parallelism};

pub use syntax::{parse_port, parse_volume};

/// An opaque value of a field skiff accepts but does not interpret (yet).
pub type Json = serde_json::Value;

/// Ordered string map: labels, build args, driver options.
pub type StringMap = IndexMap<String, String>;

// === Project ===

/// A whole compose project after interpolation, merge, `extends` and `include`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Project {
    /// Obsolete in the compose-spec; accepted with a warning and dropped from output.
    #[serde(skip_serializing)]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `include:` is resolved while loading; what remains here is only kept for reference.
    #[serde(skip_serializing)]
    pub include: Option<Box<Json>>,
    pub services: IndexMap<String, Service>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub networks: IndexMap<String, Network>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub volumes: IndexMap<String, Volume>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub configs: IndexMap<String, FileObject>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub secrets: IndexMap<String, FileObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Box<Json>>,
    #[serde(rename = "x-skiff", skip_serializing_if = "Option::is_none")]
    pub x_skiff: Option<XSkiffProject>,
    #[serde(flatten)]
    pub x: Extensions,
}

// === Service ===

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Service {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(
        deserialize_with = "build_short",
        skip_serializing_if = "Option::is_none"
    )]
    pub build: Option<Box<Build>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    #[serde(
        deserialize_with = "list_or_dict",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub environment: Environment,
    #[serde(deserialize_with = "env_files", skip_serializing_if = "Vec::is_empty")]
    pub env_file: EnvFiles,
    #[serde(deserialize_with = "ports", skip_serializing_if = "Vec::is_empty")]
    pub ports: Ports,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ScalarString>,
    #[serde(deserialize_with = "volumes", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ServiceVolume>,
    #[serde(
        deserialize_with = "string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tmpfs: StringOrList,
    #[serde(
        deserialize_with = "depends_on",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub depends_on: DependsOn,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Box<Healthcheck>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Box<Deploy>>,
    #[serde(
        deserialize_with = "labels",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<Duration>,
    #[serde(deserialize_with = "file_refs", skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    #[serde(deserialize_with = "file_refs", skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    #[serde(
        deserialize_with = "service_networks",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub networks: ServiceNetworks,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// Resolved while loading; never present in a loaded project.
    #[serde(skip_serializing)]
    pub extends: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_reservation: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memswap_limit: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging: Option<Box<Logging>>,
    #[serde(rename = "x-skiff", skip_serializing_if = "Option::is_none")]
    pub x_skiff: Option<Box<XSkiffService>>,

    // Accepted, echoed, not acted on (see NOT_ACTED_ON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blkio_config: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_add: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_drop: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_rt_period: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_rt_runtime: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_spec: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub develop: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_cgroup_rules: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_opt: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_search: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domainname: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_links: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_add: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_file: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_swappiness: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill_disable: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_start: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_start: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_refresh_after: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_opt: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin_open: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_opt: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctls: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ulimits: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_api_socket: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes_from: Option<Box<Json>>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// Service fields that skiff accepts and keeps but does not act on yet: `validate` warns about
/// each one it finds.
pub const NOT_ACTED_ON: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "hostname",
    "ipc",
    "isolation",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "platform",
    "post_start",
    "pre_start",
    "pre_stop",
    "privileged",
    "provider",
    "pull_policy",
    "pull_refresh_after",
    "runtime",
    "security_opt",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "sysctls",
    "tty",
    "ulimits",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// Every field name of the compose-spec and of `x-skiff`, for "did you mean" hints.
const ALL_FIELDS: &[&str] = &[
    "reload",
    "signal",
    "readiness",
    "liveness",
    "keep_failed",
    "placement",
    "strategy",
    "http",
    "tcp",
    "status",
    "version",
    "name",
    "include",
    "services",
    "networks",
    "volumes",
    "configs",
    "secrets",
    "models",
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "tmpfs",
    "depends_on",
    "healthcheck",
    "deploy",
    "labels",
    "stop_signal",
    "stop_grace_period",
    "profiles",
    "extends",
    "restart",
    "user",
    "working_dir",
    "init",
    "read_only",
    "mem_limit",
    "mem_reservation",
    "cpus",
    "pids_limit",
    "scale",
    "context",
    "dockerfile",
    "args",
    "target",
    "published",
    "host_ip",
    "protocol",
    "mode",
    "app_protocol",
    "source",
    "type",
    "bind",
    "volume",
    "consistency",
    "condition",
    "required",
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "start_interval",
    "disable",
    "replicas",
    "resources",
    "limits",
    "reservations",
    "memory",
    "pids",
    "restart_policy",
    "delay",
    "max_attempts",
    "window",
    "update_config",
    "rollback_config",
    "parallelism",
    "failure_action",
    "monitor",
    "max_failure_ratio",
    "order",
    "placement",
    "constraints",
    "preferences",
    "spread",
    "max_replicas_per_node",
    "endpoint_mode",
    "aliases",
    "ipv4_address",
    "ipv6_address",
    "driver",
    "driver_opts",
    "external",
    "internal",
    "ipam",
    "attachable",
    "enable_ipv6",
    "enable_ipv4",
    "file",
    "content",
    "uid",
    "gid",
    "service",
    "driver",
    "executable",
    "artifact",
    "url",
    "path",
    "sha256",
    "routes",
    "host",
    "port",
    "release",
    "strategy",
    "steps",
    "weight",
    "pause",
    "switch",
    "keep_previous",
    "analysis",
    "max_error_rate",
    "max_p99",
    "min_requests",
    "on_no_traffic",
    "max_wait",
    "domain",
    "strip_prefix",
];

/// The closest known field name to a misspelt one, if any is close.
pub fn suggest_field(unknown: &str) -> Option<&'static str> {
    ALL_FIELDS
        .iter()
        .copied()
        .filter(|k| *k != unknown)
        .map(|k| (strsim::damerau_levenshtein(unknown, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

// === scalars and simple collections ===

/// A scalar of any YAML type read as its text (`80`, `true`, `"x"` → `"80"`, `"true"`, `"x"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_string(ScalarVisitor).map(ScalarString)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// `string_or_list` of the spec: `tmpfs: /run` or `tmpfs: [/run, /tmp]`.
pub type StringOrList = Vec<String>;

pub(crate) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(ScalarString(s)) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// `list_or_dict` read as ordered `KEY → value`; `KEY` alone (list) or `KEY:` (map) gives `None`.
fn list_or_dict<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<IndexMap<String, Option<String>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = IndexMap<String, Option<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping or a list of KEY=VALUE strings")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(IndexMap::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = IndexMap::new();
            while let Some(k) = map.next_key::<String>()? {
                let v: Option<ScalarString> = map.next_value()?;
                out.insert(k, v.map(|s| s.0));
            }
            Ok(out)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = IndexMap::new();
            while let Some(ScalarString(item)) = seq.next_element()? {
                match item.split_once('=') {
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(item, None),
                };
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Environment variables; `None` means "take the value from the environment of `skiff`", as
/// `environment: [HOME]` does in compose. Resolved while loading when the variable is set.
pub type Environment = IndexMap<String, Option<String>>;

/// Labels and similar `list_or_dict` string maps; a key without a value is the empty string.
pub type Labels = StringMap;

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<StringMap, D::Error> {
    Ok(list_or_dict(d)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

// === build, command ===

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Build {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    #[serde(
        deserialize_with = "list_or_dict",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub args: IndexMap<String, Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(
        deserialize_with = "labels",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_contexts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_from: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_to: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entitlements: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_hosts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_cache_filter: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privileged: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ulimits: Option<Box<Json>>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// `build: ./dir` is `build: {context: ./dir}`.
fn build_short<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<Build>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Box<Build>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a build context path or a mapping")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Box::new(Build {
                context: Some(v.to_string()),
                ..Build::default()
            })))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Build::deserialize(MapAccessDeserializer::new(map)).map(|b| Some(Box::new(b)))
        }
    }
    d.deserialize_any(V)
}

/// A command in exec form. The shell-string form (`command: npm start`) is split into words as
/// compose splits it; `"CMD-SHELL"`-like wrapping is the healthcheck's business, not this type's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Command(pub Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Command, E> {
                shell_words::split(v)
                    .map(Command)
                    .map_err(|e| E::custom(format!("cannot split command {v:?} into words: {e}")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                let mut out = Vec::new();
                while let Some(ScalarString(s)) = seq.next_element()? {
                    out.push(s);
                }
                Ok(Command(out))
            }
        }
        d.deserialize_any(V)
    }
}

// === env_file ===

pub type EnvFiles = Vec<EnvFile>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvFile {
    pub path: String,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(flatten, default)]
    pub x: Extensions,
}

fn yes() -> bool {
    true
}

fn env_files<'de, D: Deserializer<'de>>(d: D) -> Result<EnvFiles, D::Error> {
    struct Item(EnvFile);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Item;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a path or a mapping with path")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                    Ok(Item(EnvFile {
                        path: v.to_string(),
                        required: true,
                        format: None,
                        x: Extensions::default(),
                    }))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                    EnvFile::deserialize(MapAccessDeserializer::new(map)).map(Item)
                }
            }
            d.deserialize_any(V)
        }
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = EnvFiles;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a path or a list of paths")
        }
        fn visit_unit<E: de::Error>(self) -> Result<EnvFiles, E> {
            Ok(Vec::new())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvFiles, E> {
            Ok(vec![
                Item::deserialize(de::value::StrDeserializer::<E>::new(v))?.0,
            ])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvFiles, A::Error> {
            let mut out = Vec::new();
            while let Some(Item(f)) = seq.next_element()? {
                out.push(f);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

// === ports ===

pub type Ports = Vec<Port>;

/// A port in long syntax. Short syntax (`"127.0.0.1:8080:80/udp"`, `80`, `"3000-3002"`) is
/// expanded into one entry per port, as compose does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub target: u16,
    /// A port (`"8080"`) or a range (`"8080-8090"`); `None` means any free port.
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub published: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default = "ingress")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    #[serde(flatten, default)]
    pub x: Extensions,
}

fn tcp() -> String {
    "tcp".into()
}

fn ingress() -> String {
    "ingress".into()
}

fn opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<ScalarString>::deserialize(d)?.map(|s| s.0))
}

fn ports<'de, D: Deserializer<'de>>(d: D) -> Result<Ports, D::Error> {
    struct Item(Vec<Port>);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Item;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a port such as \"8080:80\" or a mapping with target")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                    parse_port(v).map(Item).map_err(E::custom)
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Item, E> {
                    self.visit_str(&v.to_string())
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Item, E> {
                    self.visit_str(&v.to_string())
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                    let p = Port::deserialize(MapAccessDeserializer::new(map))?;
                    syntax::check_port(&p).map_err(de::Error::custom)?;
                    Ok(Item(vec![p]))
                }
            }
            d.deserialize_any(V)
        }
    }
    let items: Vec<Item> = Vec::deserialize(d)?;
    Ok(items.into_iter().flat_map(|i| i.0).collect())
}

// === volumes ===

/// A service mount in long syntax; short syntax (`db:/var/lib/db:ro`, `./src:/src`) is read
/// into this form.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceVolume {
    #[serde(rename = "type")]
    pub kind: VolumeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default)]
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Box<Json>>,
    #[serde(flatten, default)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Bind,
    #[default]
    Volume,
    Tmpfs,
    Cluster,
    Npipe,
    Image,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BindOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_host_path: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recursive: Option<String>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nocopy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Box<Json>>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TmpfsOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(flatten)]
    pub x: Extensions,
}

fn volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ServiceVolume>, D::Error> {
    struct Item(ServiceVolume);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Item;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a volume such as \"data:/var/lib/data\" or a mapping with type")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                    parse_volume(v).map(Item).map_err(E::custom)
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                    let v = ServiceVolume::deserialize(MapAccessDeserializer::new(map))?;
                    syntax::check_volume(&v).map_err(de::Error::custom)?;
                    Ok(Item(v))
                }
            }
            d.deserialize_any(V)
        }
    }
    let items: Vec<Item> = Vec::deserialize(d)?;
    Ok(items.into_iter().map(|i| i.0).collect())
}

// === depends_on ===

pub type DependsOn = IndexMap<String, Dependency>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    pub condition: Condition,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default)]
    pub restart: bool,
    #[serde(flatten, default)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

fn depends_on<'de, D: Deserializer<'de>>(d: D) -> Result<DependsOn, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = DependsOn;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of service names or a mapping of service to condition")
        }
        fn visit_unit<E: de::Error>(self) -> Result<DependsOn, E> {
            Ok(IndexMap::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DependsOn, A::Error> {
            let mut out = IndexMap::new();
            while let Some(name) = seq.next_element::<String>()? {
                out.insert(
                    name,
                    Dependency {
                        condition: Condition::ServiceStarted,
                        required: true,
                        restart: false,
                        x: Extensions::default(),
                    },
                );
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DependsOn, A::Error> {
            let mut out = IndexMap::new();
            while let Some(name) = map.next_key::<String>()? {
                out.insert(name, map.next_value()?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

// === healthcheck ===

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Healthcheck {
    /// Canonical: `["CMD", …]`, `["CMD-SHELL", "…"]` or `["NONE"]`.
    #[serde(
        deserialize_with = "health_test",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<Duration>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
    #[serde(flatten)]
    pub x: Extensions,
}

/// `test: curl -f localhost` is `["CMD-SHELL", "curl -f localhost"]`.
fn health_test<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a command string or a list starting with CMD, CMD-SHELL or NONE")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec!["CMD-SHELL".into(), v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(ScalarString(s)) = seq.next_element()? {
                out.push(s);
            }
            match out.first().map(String::as_str) {
                Some("CMD") | Some("CMD-SHELL") | Some("NONE") => Ok(out),
                Some(other) => Err(de::Error::custom(format!(
                    "the first item must be CMD, CMD-SHELL or NONE, got {other:?}"
                ))),
                None => Err(de::Error::custom(
                    "the test list is empty: start it with CMD, CMD-SHELL or NONE",
                )),
            }
        }
    }
    d.deserialize_any(V)
}

// === deploy ===

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deploy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<DeployMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(
        deserialize_with = "labels",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_mode: Option<EndpointMode>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployMode {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<Reservations>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reservations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generic_resources: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Box<Json>>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<RestartCondition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

/// `update_config` and `rollback_config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<Parallelism>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_action: Option<FailureAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failure_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<UpdateOrder>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Continue,
    Pause,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StartFirst,
    StopFirst,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Placement {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementPreference {
    pub spread: String,
    #[serde(flatten, default)]
    pub x: Extensions,
}

// === restart, logging ===

/// Compose's `restart:` (`no`, `always`, `on-failure[:N]`, `unless-stopped`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ScalarString", into = "String")]
pub enum Restart {
    No,
    Always,
    OnFailure(Option<u32>),
    UnlessStopped,
}

impl TryFrom<ScalarString> for Restart {
    type Error = String;
    fn try_from(s: ScalarString) -> Result<Self, String> {
        match s.0.as_str() {
            "no" | "false" => Ok(Restart::No),
            "always" => Ok(Restart::Always),
            "unless-stopped" => Ok(Restart::UnlessStopped),
            "on-failure" => Ok(Restart::OnFailure(None)),
            other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => Ok(Restart::OnFailure(Some(n))),
                _ => Err(format!(
                    "expected one of no, always, on-failure[:N], unless-stopped, got {other:?}"
                )),
            },
        }
    }
}

impl From<Restart> for String {
    fn from(r: Restart) -> String {
        match r {
            Restart::No => "no".into(),
            Restart::Always => "always".into(),
            Restart::UnlessStopped => "unless-stopped".into(),
            Restart::OnFailure(None) => "on-failure".into(),
            Restart::OnFailure(Some(n)) => format!("on-failure:{n}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Logging {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Box<Json>>,
    #[serde(flatten)]
    pub x: Extensions,
}

// === configs, secrets, networks ===

/// A service's grant of a config or secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub uid: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub gid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(flatten, default)]
    pub x: Extensions,
}

fn file_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FileRef>, D::Error> {
    struct Item(FileRef);
    impl<'de> Deserialize<'de> for Item {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Item;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a name or a mapping with source")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                    Ok(Item(FileRef {
                        source: v.to_string(),
                        ..FileRef::default()
                    }))
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                    FileRef::deserialize(MapAccessDeserializer::new(map)).map(Item)
                }
            }
            d.deserialize_any(V)
        }
    }
    let items: Vec<Item> = Vec::deserialize(d)?;
    Ok(items.into_iter().map(|i| i.0).collect())
}

pub type ServiceNetworks = IndexMap<String, Option<ServiceNetwork>>;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceNetwork {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_local_ips: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw_priority: Option<i64>,
    #[serde(flatten)]
    pub x: Extensions,
}

fn service_networks<'de, D: Deserializer<'de>>(d: D) -> Result<ServiceNetworks, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = ServiceNetworks;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of network names or a mapping of network to options")
        }
        fn visit_unit<E: de::Error>(self) -> Result<ServiceNetworks, E> {
            Ok(IndexMap::new())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ServiceNetworks, A::Error> {
            let mut out = IndexMap::new();
            while let Some(name) = seq.next_element::<String>()? {
                out.insert(name, None);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServiceNetworks, A::Error> {
            let mut out = IndexMap::new();
            while let Some(name) = map.next_key::<String>()? {
                out.insert(name, map.next_value()?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

// === top-level resources ===

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_ipv4: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_ipv6: Option<bool>,
    #[serde(
        deserialize_with = "labels",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub labels: Labels,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Volume {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Box<Json>>,
    #[serde(
        deserialize_with = "labels",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub labels: Labels,
    #[serde(flatten)]
    pub x: Extensions,
}

/// A top-level config or secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileObject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Box<Json>>,
    #[serde(
        deserialize_with = "labels",
        skip_serializing_if = "IndexMap::is_empty"
    )]
    pub labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_opts: Option<Box<Json>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
    #[serde(rename = "x-skiff", skip_serializing_if = "Option::is_none")]
    pub x_skiff: Option<XSkiffConfig>,
    #[serde(flatten)]
    pub x: Extensions,
}

// === x-skiff ===

/// Top-level `x-skiff`: defaults for the whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XSkiffProject {
    /// Driver for services that do not name one. Default: `docker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// Domain of DNS names and default ingress hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// Service-level `x-skiff`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XSkiffService {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// Process driver: the program to run; `command` gives its arguments. Relative paths are
    /// relative to the unpacked artifact, else to the project directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// When an instance is ready for traffic; replaces compose's `healthcheck` for that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Check>,
    /// When an instance is alive: failing it `retries` times in a row restarts the instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Check>,
    /// A failed liveness check keeps the instance running, out of traffic, for inspection.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_failed: bool,
    /// How the scheduler picks among the nodes that fit (compose's `deploy.placement` says
    /// where it may).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<XPlacement>,
    /// A change of only the service's `configs` rewrites the files of running instances and
    /// sends them this signal instead of replacing them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<Reload>,
    /// A data-directory snapshot unpacked into one of the service's named volumes before its
    /// first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// `x-skiff` of a top-level config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XSkiffConfig {
    /// The content is a minijinja template, rendered per instance (strict): the
    /// environment's `values`, `service("x")`, `instance` and the instance's `env`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
    #[serde(flatten)]
    pub x: Extensions,
}

/// `x-skiff.seed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Seed {
    /// A tar archive (optionally zstd-compressed): a path, relative to the project directory
    /// (absolute after loading), or an `http://` URL.
    pub from: String,
    /// The named volume (a key of the top-level `volumes`) it fills; the service must mount it.
    pub into: String,
    /// How the volume is held still while an environment's data is copied (default freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    #[serde(flatten, default)]
    pub x: Extensions,
}

/// `x-skiff.seed.consistency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The cgroup freezer holds the instances still for the copy.
    Freeze,
    /// The instances are stopped for the copy and started again after.
    Stop,
}

impl Seed {
    /// Is `from` a URL (`scheme://…`) rather than a path?
    pub fn is_url(&self) -> bool {
        self.from.contains("://")
    }
}

/// `x-skiff.reload`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// A signal name, as `skiff kill` takes it: `SIGHUP`, `HUP`, `USR1`…
    pub signal: String,
    #[serde(flatten, default)]
    pub x: Extensions,
}

/// `x-skiff.placement`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct XPlacement {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<PlacementStrategy>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// Replicas on as many nodes as possible (the default).
    Spread,
    /// The fullest node that fits first.
    Binpack,
}

/// A health check: exactly one of `http`, `tcp` or `test` (compose's form), with compose's
/// timing fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Check {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    #[serde(
        deserialize_with = "health_test",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period: Option<Duration>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// An HTTP GET of `path` on a port of the instance, passing on `status` (default: any 2xx
/// or 3xx).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A port `name` or target number; default the first port.
    #[serde(
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// A TCP connect to a port of the instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpCheck {
    /// A port `name` or target number; default the first port.
    #[serde(
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<String>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Docker,
    Process,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Docker => "docker",
            Driver::Process => "process",
        })
    }
}

/// A tarball to unpack before the process starts: by `path` or by http(s) `url`, checked
/// against `sha256`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub sha256: String,
    #[serde(flatten, default)]
    pub x: Extensions,
}

/// An ingress route to the service: requests whose host matches `host` (default: the
/// service's own `<service>.<stack>.<env>.<domain>` name) and whose path starts with `path`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The service port to send traffic to: a port `name` or target number. Default: the
    /// first port.
    #[serde(
        deserialize_with = "opt_scalar",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
    #[serde(flatten)]
    pub x: Extensions,
}

/// How a new release replaces the running one. Batch size, delay, monitor window and
/// failure action come from compose's `deploy.update_config`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Release {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Canary: traffic weights (percent) in order, each held for its `pause`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// Blue-green: `auto` switches traffic when the new set is healthy; `manual` waits for
    /// `skiff release promote`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch: Option<Switch>,
    /// Blue-green: how long the previous set stays up after the switch, for an instant way back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_previous: Option<Duration>,
    /// Canary and blue-green: judge the new release by the ingress's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    #[serde(flatten)]
    pub x: Extensions,
}

/// `x-skiff.release.analysis`: the new release passes a step when, over the step, it
/// answered at least `min_requests` with no more than `max_error_rate` errors (5xx) and a
/// p99 latency within `max_p99`; it fails the step as soon as a limit is passed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Analysis {
    /// Percent of requests (`1%`, `0.5%`, or a number of percent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Percent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// How often the figures are judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// What a step that saw fewer than `min_requests` for `max_wait` does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_no_traffic: Option<NoTraffic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Duration>,
    #[serde(flatten)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoTraffic {
    Pause,
    Promote,
    Abort,
}

/// A percentage: `1%`, `0.5%` or a bare number of percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(pub f64);

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage such as 1% or 0.5%")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Ok(Percent(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Ok(Percent(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                v.trim()
                    .trim_end_matches('%')
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite())
                    .map(Percent)
                    .ok_or_else(|| {
                        E::custom(format!("{v:?} is not a percentage such as 1% or 0.5%"))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Rolling,
    Canary,
    BlueGreen,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Duration>,
    #[serde(flatten, default)]
    pub x: Extensions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    Auto,
    Manual,
}
