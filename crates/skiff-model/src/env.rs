//! Environments as records the control plane keeps: owner, lifetime (`ttl`, `idle`), values
//! for interpolation and override files, and the pure decision of when one is past its time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Author, NameError};

/// The environment every command uses without `-n`; it exists without a record.
pub const DEFAULT_ENV: &str = "default";

/// Override files one environment keeps at most.
pub const MAX_OVERRIDES: usize = 16;

/// Bytes of one override file at most.
pub const MAX_OVERRIDE_BYTES: usize = 1 << 20;

/// Values one environment keeps at most.
pub const MAX_VALUES: usize = 1_000;

/// Bytes of one value at most.
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// Whether an environment's stacks should run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvState {
    #[default]
    Active,
    /// Every stack down (by `skiff env down` or the reaper); history and data kept.
    Down,
}

impl EnvState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvState::Active => "active",
            EnvState::Down => "down",
        }
    }
}

/// A compose file kept with an environment, merged after the user's `-f` files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideFile {
    /// The name errors print (`override-1.yaml`; shown as `env:<env>/<name>`).
    pub name: String,
    /// Compose YAML text.
    pub content: String,
}

/// An environment: an isolated namespace of stacks with its own values and lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    pub owner: Author,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it last became active (its creation, or an `up` after it was downed): the ttl
    /// and the idle time count from here.
    pub active_ms: u64,
    /// Downed this long after `active_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Downed after this long without a request through an ingress or service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Variables for the interpolation of every stack deployed into it.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Compose files merged after the user's, in order.
    #[serde(default)]
    pub overrides: Vec<OverrideFile>,
    #[serde(default)]
    pub state: EnvState,
    /// The environment it was created (`--from`) or cloned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Why the reaper downed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_reason: Option<String>,
}

/// Why an environment is (or will be) past its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// `ttl` after it became active.
    Ttl { at_ms: u64 },
    /// `idle` after its last request (or after it became active, without one since).
    Idle { at_ms: u64 },
}

impl Expiry {
    pub fn at_ms(self) -> u64 {
        match self {
            Expiry::Ttl { at_ms } | Expiry::Idle { at_ms } => at_ms,
        }
    }
}

impl Environment {
    /// A new, active environment.
    pub fn new(name: &str, owner: Author, now_ms: u64) -> Environment {
        Environment {
            name: name.to_string(),
            owner,
            created_ms: now_ms,
            active_ms: now_ms,
            ttl_ms: None,
            idle_ms: None,
            values: BTreeMap::new(),
            overrides: Vec::new(),
            state: EnvState::Active,
            from: None,
            down_reason: None,
        }
    }

    /// When it expires, the earlier of its ttl and idle deadlines (`None`: neither is set).
    /// `last_request_ms` is the last request through any proxy to one of its services.
    pub fn expiry(&self, last_request_ms: Option<u64>) -> Option<Expiry> {
        let ttl = self.ttl_ms.map(|t| Expiry::Ttl {
            at_ms: self.active_ms.saturating_add(t),
        });
        let since = last_request_ms.unwrap_or(0).max(self.active_ms);
        let idle = self.idle_ms.map(|i| Expiry::Idle {
            at_ms: since.saturating_add(i),
        });
        match (ttl, idle) {
            (Some(a), Some(b)) => Some(if b.at_ms() < a.at_ms() { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The reaper's decision: why an active environment must be downed at `now_ms`, or
    /// `None` while it may run (a downed one is never reaped again).
    pub fn reap(&self, now_ms: u64, last_request_ms: Option<u64>) -> Option<String> {
        if self.state != EnvState::Active {
            return None;
        }
        match self.expiry(last_request_ms)? {
            Expiry::Ttl { at_ms } if at_ms <= now_ms => Some(format!(
                "its ttl of {} ran out",
                human_duration(self.ttl_ms.unwrap_or(0))
            )),
            Expiry::Idle { at_ms } if at_ms <= now_ms => Some(format!(
                "no request for {}",
                human_duration(self.idle_ms.unwrap_or(0))
            )),
            _ => None,
        }
    }
}

/// `72h`, `90s`, `1h30m`, `250ms`: a duration in its largest whole units.
pub fn human_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

/// An environment name: a DNS label (`[a-z0-9-]`, 1–63 characters, not starting or ending
/// with `-`), since it becomes one in DNS names and ingress hosts.
pub fn check_env_name(name: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        what: "environment",
        value: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 63 {
        return Err(err("must be 1-63 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(err(
            "use lowercase letters, digits and '-' only (a DNS label)",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(err("must not start or end with '-'"));
    }
    Ok(())
}

/// Why a value or override file cannot be kept.
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    let mut c = key.chars();
    let ok = matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if !ok || key.len() > 255 {
        return Err(format!(
            "value name {key:?}: a variable name (letters, digits and '_', not starting with a \
             digit, at most 255)"
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value {key}: {} bytes, at most {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

impl Environment {
    /// Why its values or override files are more than an environment keeps, if they are.
    pub fn check_contents(&self) -> Result<(), String> {
        if self.values.len() > MAX_VALUES {
            return Err(format!(
                "{} values, at most {MAX_VALUES}",
                self.values.len()
            ));
        }
        for (k, v) in &self.values {
            check_value(k, v)?;
        }
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(format!(
                "{} override files, at most {MAX_OVERRIDES}",
                self.overrides.len()
            ));
        }
        for f in &self.overrides {
            let name_ok = !f.name.is_empty()
                && f.name.len() <= 255
                && f.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !name_ok {
                return Err(format!(
                    "override file name {:?}: letters, digits, '.', '-' and '_' (at most 255)",
                    f.name
                ));
            }
            if f.content.len() > MAX_OVERRIDE_BYTES {
                return Err(format!(
                    "override file {}: {} bytes, at most {MAX_OVERRIDE_BYTES}",
                    f.name,
                    f.content.len()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ttl: Option<u64>, idle: Option<u64>) -> Environment {
        let mut e = Environment::new("alice", Author::unknown(), 1_000);
        e.ttl_ms = ttl;
        e.idle_ms = idle;
        e
    }

    #[test]
    fn env_names_are_dns_labels() {
        for ok in ["a", "alice", "pr-123", "0", &"a".repeat(63)] {
            assert!(check_env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Alice", "a_b", "a.b", "ä", &"a".repeat(64)] {
            let e = check_env_name(bad).unwrap_err();
            assert_eq!(e.what, "environment", "{bad}");
        }
        assert!(
            check_env_name("a_b")
                .unwrap_err()
                .to_string()
                .contains("DNS label")
        );
    }

    #[test]
    fn an_environment_without_ttl_or_idle_never_expires() {
        let e = env(None, None);
        assert_eq!(e.expiry(None), None);
        assert_eq!(e.reap(u64::MAX, None), None);
    }

    #[test]
    fn ttl_reaps_at_its_deadline_whatever_the_requests() {
        let e = env(Some(2_000), None);
        assert_eq!(e.expiry(Some(2_500)), Some(Expiry::Ttl { at_ms: 3_000 }));
        assert_eq!(e.reap(2_999, Some(2_900)), None);
        let why = e.reap(3_000, Some(2_999)).unwrap();
        assert!(why.contains("ttl of 2s"), "{why}");
    }

    #[test]
    fn idle_counts_from_the_last_request_or_from_activation() {
        let e = env(None, Some(2_000));
        // No request yet: from when it became active.
        assert_eq!(e.expiry(None), Some(Expiry::Idle { at_ms: 3_000 }));
        assert_eq!(e.reap(2_999, None), None);
        assert!(e.reap(3_000, None).unwrap().contains("no request for 2s"));
        // A request moves the deadline.
        assert_eq!(e.reap(3_000, Some(2_000)), None);
        assert!(e.reap(4_000, Some(2_000)).is_some());
        // A request older than the activation does not count against it.
        assert_eq!(e.expiry(Some(10)), Some(Expiry::Idle { at_ms: 3_000 }));
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let e = env(Some(10_000), Some(2_000));
        assert_eq!(e.expiry(None), Some(Expiry::Idle { at_ms: 3_000 }));
        assert_eq!(e.expiry(Some(9_500)), Some(Expiry::Ttl { at_ms: 11_000 }));
    }

    #[test]
    fn a_downed_environment_is_not_reaped_again() {
        let mut e = env(Some(1), None);
        e.state = EnvState::Down;
        assert_eq!(e.reap(u64::MAX, None), None);
    }

    #[test]
    fn durations_read_in_their_largest_units() {
        assert_eq!(human_duration(250), "250ms");
        assert_eq!(human_duration(2_000), "2s");
        assert_eq!(human_duration(72 * 3_600_000), "3d");
        assert_eq!(human_duration(5_400_000), "1h30m");
    }

    #[test]
    fn values_and_overrides_are_bounded() {
        let mut e = env(None, None);
        e.values.insert("DB_HOST".into(), "x".into());
        assert!(e.check_contents().is_ok());
        e.values.insert("1X".into(), "x".into());
        assert!(e.check_contents().unwrap_err().contains("1X"));
        e.values.clear();
        e.overrides.push(OverrideFile {
            name: "o.yaml".into(),
            content: "x".repeat(MAX_OVERRIDE_BYTES + 1),
        });
        assert!(e.check_contents().unwrap_err().contains("o.yaml"));
        e.overrides = vec![
            OverrideFile {
                name: "a.yaml".into(),
                content: String::new()
            };
            MAX_OVERRIDES + 1
        ];
        assert!(e.check_contents().unwrap_err().contains("override files"));
    }
}
