//! How a new release of a service replaces the instances that run: compose's
//! `deploy.update_config` / `rollback_config` and `x-skiff.release`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration_ms;

/// Compose `update_config` (or `rollback_config`), with Docker Swarm's defaults: one
/// instance at a time, no delay, a 5 s monitor window, no failure tolerated, pause on
/// failure, stop-first.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdatePolicy {
    /// Instances replaced per batch; 0 replaces all at once.
    pub parallelism: Parallelism,
    /// Wait between one batch being done and the next starting.
    #[serde(with = "duration_ms")]
    pub delay: Duration,
    /// How long a new instance is watched after it is ready: failing within it counts as a
    /// failed update.
    #[serde(with = "duration_ms")]
    pub monitor: Duration,
    /// Failed updates tolerated, as a share of the instances to replace (0 to 1).
    pub max_failure_ratio: f64,
    pub failure_action: FailureAction,
    pub order: UpdateOrder,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            parallelism: Parallelism::Count(1),
            delay: Duration::ZERO,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            failure_action: FailureAction::Pause,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// A batch size: a count (0: all at once) or a percentage of the replicas (rounded up, at
/// least one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parallelism {
    Count(u32),
    Percent(u32),
}

impl Parallelism {
    /// Instances per batch out of `replicas` (never 0 while there is something to replace).
    pub fn batch(self, replicas: u32) -> u32 {
        let n = match self {
            Parallelism::Count(0) => replicas,
            Parallelism::Count(n) => n,
            Parallelism::Percent(p) => (u64::from(replicas) * u64::from(p)).div_ceil(100) as u32,
        };
        n.max(1)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Rollback,
    Continue,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old instance is withdrawn, drained and stopped, then the new one starts in its
    /// place (same index, same node).
    #[default]
    StopFirst,
    /// The new instance starts beside the old one (an index of its own) and the old one is
    /// withdrawn, drained and stopped once the new one is ready.
    StartFirst,
}

/// `x-skiff.release`: how traffic moves to a new release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleasePolicy {
    pub strategy: ReleaseStrategy,
    /// Canary: the new release's share of traffic (percent, rising), each held for `pause`
    /// (`None`: until `skiff rollout promote`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// Blue-green: switch traffic as soon as the new set is ready, or on `promote`.
    pub switch: Switch,
    /// Blue-green: how long the previous set stays up after the switch.
    #[serde(with = "duration_ms")]
    pub keep_previous: Duration,
    /// Judge each step by the ingress's figures of the new release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

/// `x-skiff.release.analysis`: limits the new release's requests through the ingress must
/// keep over each step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Analysis {
    /// Errors (responses of 500 or more) per request, 0–1.
    pub max_error_rate: Option<f64>,
    #[serde(with = "opt_duration_ms")]
    pub max_p99: Option<Duration>,
    /// Fewer requests than this over a step judge nothing.
    pub min_requests: u64,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    pub on_no_traffic: NoTraffic,
    /// How long a step waits for `min_requests` before `on_no_traffic`.
    #[serde(with = "duration_ms")]
    pub max_wait: Duration,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            max_error_rate: None,
            max_p99: None,
            min_requests: 100,
            interval: Duration::from_secs(10),
            on_no_traffic: NoTraffic::Pause,
            max_wait: Duration::from_secs(300),
        }
    }
}

/// What a canary step that got too little traffic to judge does after `max_wait`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoTraffic {
    #[default]
    Pause,
    Promote,
    Abort,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseStrategy {
    #[default]
    Rolling,
    Canary,
    BlueGreen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub weight: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration_ms"
    )]
    pub pause: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[default]
    Auto,
    Manual,
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_ms::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_count_or_a_share_of_the_replicas_and_never_empty() {
        assert_eq!(Parallelism::Count(2).batch(10), 2);
        assert_eq!(Parallelism::Count(0).batch(10), 10, "0: all at once");
        assert_eq!(Parallelism::Percent(25).batch(10), 3, "rounded up");
        assert_eq!(Parallelism::Percent(1).batch(3), 1);
        assert_eq!(Parallelism::Count(0).batch(0), 1);
    }

    #[test]
    fn policies_round_trip_and_default_to_swarms() {
        let p = UpdatePolicy {
            parallelism: Parallelism::Percent(50),
            order: UpdateOrder::StartFirst,
            ..UpdatePolicy::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<UpdatePolicy>(&json).unwrap(), p);
        let d: UpdatePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(d.parallelism, Parallelism::Count(1));
        assert_eq!(d.monitor, Duration::from_secs(5));
        assert_eq!(d.failure_action, FailureAction::Pause);
        assert_eq!(d.order, UpdateOrder::StopFirst);
    }
}
