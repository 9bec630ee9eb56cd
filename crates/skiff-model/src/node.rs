//! Machines and what runs on them: [`Node`]s register with the control plane, which places
//! each instance of a release on one as an [`Allocation`]; a service's [`PlacementSpec`] and
//! [`Reservations`] say where it may go.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Driver, InstanceId};

/// A machine running an agent, as the control plane knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Stable across restarts of its agent (kept in the agent's data dir).
    pub id: String,
    /// The host name unless `--name` says otherwise; unique in a cluster.
    pub name: String,
    /// Where its instances and its agent's listener are reached.
    pub address: String,
    /// The port of its agent's listener (logs, exec, signals, stats); 0: none.
    #[serde(default)]
    pub agent_port: u16,
    pub resources: NodeResources,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub drivers: Vec<Driver>,
    /// It runs proxies on its own copy of the catalog (stable addresses, an ingress): a
    /// drain of any instance waits for its requests in flight too.
    #[serde(default)]
    pub proxies: bool,
    pub status: NodeStatus,
    /// Milliseconds since the Unix epoch, as the server received it.
    pub last_heartbeat_ms: u64,
}

/// What a node offers to reservations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// 1,000 per CPU.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Host ports the agent hands out to instances, inclusive.
    pub ports: (u16, u16),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Ready,
    /// Takes no new work; its instances move elsewhere (`skiff node drain`).
    Draining,
    /// Silent for longer than the down timeout: its instances are placed elsewhere.
    Down,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Draining => "draining",
            NodeStatus::Down => "down",
        })
    }
}

/// One instance placed on one node by the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Unique for all time (an instance moved to another node gets a new allocation).
    pub id: String,
    pub instance: InstanceId,
    pub node: String,
    pub release: u64,
    /// The service's restart generation (`skiff restart` bumps it): the agent replaces an
    /// instance started for another one.
    #[serde(default)]
    pub generation: u64,
    pub desired: Desired,
    /// What it holds on its node while desired to run.
    #[serde(default)]
    pub reserved: Reservations,
    /// Host ports it holds on its node (`ports: mode: host` published ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
    /// Set on an allocation that is being replaced start-first (its node drains): the id of
    /// the allocation that replaces it. It keeps running, and serving, until that one is
    /// ready; then the control plane stops it. A replacement gets its own instance index, so
    /// the two copies never share a name, a directory or a catalog entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
}

/// What the control plane wants of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Run,
    Stop,
}

/// What an instance holds on its node: compose `deploy.resources.reservations`, else its
/// limits, else nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservations {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu_millis: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a service's instances may run and how they spread: compose `deploy.mode` and
/// `deploy.placement`, and `x-skiff.placement`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    #[serde(default, skip_serializing_if = "is_replicated")]
    pub mode: DeployMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Node label keys to spread replicas over, most important first
    /// (`preferences: [{spread: node.labels.zone}]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
    #[serde(default, skip_serializing_if = "is_spread")]
    pub strategy: Strategy,
}

fn is_replicated(m: &DeployMode) -> bool {
    *m == DeployMode::Replicated
}

fn is_spread(s: &Strategy) -> bool {
    *s == Strategy::Spread
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// `replicas` instances, wherever they fit.
    #[default]
    Replicated,
    /// One instance on every node that may run it.
    Global,
}

/// How the scheduler picks among the nodes that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Fewest replicas of the service first, then the emptiest node.
    #[default]
    Spread,
    /// The fullest node that fits first (fewer machines busy).
    Binpack,
}

/// One compose placement constraint: `node.labels.zone == b`, `node.hostname != x`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub field: ConstraintField,
    /// `true` for `==`, `false` for `!=`.
    pub equal: bool,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintField {
    /// `node.labels.<key>`
    Label(String),
    /// `node.hostname` (the node's name)
    Hostname,
    /// `node.id`
    Id,
}

/// Why a placement constraint does not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("{0:?} is no constraint: expected `node.labels.KEY == VALUE` or `!=`")]
    NoOperator(String),
    #[error("{0:?}: the value after the operator is empty")]
    EmptyValue(String),
    #[error("{text:?}: skiff places by node.labels.KEY, node.hostname and node.id, not {field:?}")]
    UnknownField { text: String, field: String },
}

impl Constraint {
    /// Parses compose's `<field> == <value>` / `<field> != <value>`.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let (lhs, equal, rhs) = if let Some((l, r)) = text.split_once("==") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("!=") {
            (l, false, r)
        } else {
            return Err(ConstraintError::NoOperator(text.to_string()));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(text.to_string()));
        }
        let field = match lhs {
            "node.hostname" => ConstraintField::Hostname,
            "node.id" => ConstraintField::Id,
            _ => match lhs.strip_prefix("node.labels.") {
                Some(key) if !key.is_empty() => ConstraintField::Label(key.to_string()),
                _ => {
                    return Err(ConstraintError::UnknownField {
                        text: text.to_string(),
                        field: lhs.to_string(),
                    });
                }
            },
        };
        Ok(Constraint {
            field,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies it (a missing label is unequal to any value).
    pub fn holds(&self, node: &Node) -> bool {
        let actual = match &self.field {
            ConstraintField::Label(k) => node.labels.get(k).map(String::as_str),
            ConstraintField::Hostname => Some(node.name.as_str()),
            ConstraintField::Id => Some(node.id.as_str()),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            ConstraintField::Label(k) => write!(f, "node.labels.{k}")?,
            ConstraintField::Hostname => f.write_str("node.hostname")?,
            ConstraintField::Id => f.write_str("node.id")?,
        }
        let op = if self.equal { "==" } else { "!=" };
        write!(f, " {op} {}", self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            id: format!("id-{name}"),
            name: name.into(),
            address: "10.231.0.2".into(),
            agent_port: 0,
            resources: NodeResources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                ports: (20000, 29999),
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            drivers: vec![Driver::Process],
            proxies: false,
            status: NodeStatus::Ready,
            last_heartbeat_ms: 0,
        }
    }

    #[test]
    fn compose_constraints_parse_and_hold_on_labels_hostname_and_id() {
        let a = node("a", &[("zone", "b")]);
        let b = node("b", &[]);
        let c = Constraint::parse("node.labels.zone == b").unwrap();
        assert_eq!(c.to_string(), "node.labels.zone == b");
        assert!(c.holds(&a) && !c.holds(&b));
        let c = Constraint::parse("node.labels.zone!=b").unwrap();
        assert!(!c.holds(&a) && c.holds(&b), "a missing label is unequal");
        assert!(Constraint::parse("node.hostname == a").unwrap().holds(&a));
        assert!(Constraint::parse("node.id != id-a").unwrap().holds(&b));
    }

    #[test]
    fn constraints_on_fields_skiff_does_not_know_are_rejected_with_the_field() {
        let e = Constraint::parse("node.role == manager").unwrap_err();
        assert!(e.to_string().contains("\"node.role\""), "{e}");
        assert_eq!(
            Constraint::parse("zone=b").unwrap_err(),
            ConstraintError::NoOperator("zone=b".into())
        );
        assert!(matches!(
            Constraint::parse("node.labels.zone =="),
            Err(ConstraintError::EmptyValue(_))
        ));
    }
}
