//! What changed between two releases of a stack, service by service: the one line
//! `skiff history` prints per release and the per-service lines of `skiff history STACK N`
//! and `skiff diff`. Pure: two [`StackSpec`]s in, words out.
//!
//! Environment values may be secrets, so an environment change names its keys only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    HealthSpec, MountSpec, Parallelism, PortSpec, ReleaseStrategy, ResourceLimits, RouteSpec,
    ServiceSpec, StackSpec, UpdateOrder, UpdatePolicy, WaitFor,
};

/// A value longer than this (old and new together) is shown by its field name only.
const MAX_DETAIL: usize = 60;

/// How one service differs from one release to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDiff {
    pub service: String,
    pub change: Change,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    /// Changed fields, in the order of [`ServiceSpec`]'s fields. `replaces`: running
    /// instances are replaced ([`ServiceSpec::change_to`] says `Replace`); else they are
    /// kept (replicas or release policies only) or reloaded (config contents, `reload`).
    Changed {
        fields: Vec<FieldChange>,
        replaces: bool,
    },
    Unchanged,
}

/// One field that differs: `image demo:1→demo:2`, `environment +TOKEN ~DEBUG`, or just
/// `health` when the values are too long to show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{} {d}", self.field),
            None => f.write_str(&self.field),
        }
    }
}

impl ServiceDiff {
    /// `+ web`, `- old`, `~ web: image a→b, replicas 2→3`, `= web`.
    pub fn line(&self) -> String {
        match &self.change {
            Change::Added => format!("+ {}", self.service),
            Change::Removed => format!("- {}", self.service),
            Change::Changed { fields, .. } => format!("~ {}: {}", self.service, join(fields)),
            Change::Unchanged => format!("= {}", self.service),
        }
    }
}

fn join(fields: &[FieldChange]) -> String {
    fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every service of either release, by name, with how it changed from `old` to `new`.
pub fn compare(old: &StackSpec, new: &StackSpec) -> Vec<ServiceDiff> {
    let names: BTreeSet<&String> = old.services.keys().chain(new.services.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let change = match (old.services.get(name), new.services.get(name)) {
                (None, _) => Change::Added,
                (Some(_), None) => Change::Removed,
                (Some(a), Some(b)) => {
                    let fields = service_fields(a, b);
                    if fields.is_empty() {
                        Change::Unchanged
                    } else {
                        Change::Changed {
                            fields,
                            replaces: a.change_to(b) == crate::WorkloadChange::Replace,
                        }
                    }
                }
            };
            ServiceDiff {
                service: name.clone(),
                change,
            }
        })
        .collect()
}

/// The change from `old` (`None`: there is no release before) to `new` in one line of at
/// most `max_chars` characters: `web: image demo:1→demo:2; api: replicas 2→3; +worker;
/// -old`, `no change` or `initial`.
pub fn summary(old: Option<&StackSpec>, new: &StackSpec, max_chars: usize) -> String {
    let Some(old) = old else {
        return "initial".into();
    };
    let diffs = compare(old, new);
    let mut parts = Vec::new();
    for d in &diffs {
        if let Change::Changed { fields, .. } = &d.change {
            parts.push(format!("{}: {}", d.service, join(fields)));
        }
    }
    for (change, sign) in [(Change::Added, '+'), (Change::Removed, '-')] {
        for d in diffs.iter().filter(|d| d.change == change) {
            parts.push(format!("{sign}{}", d.service));
        }
    }
    if parts.is_empty() {
        return "no change".into();
    }
    truncate(&parts.join("; "), max_chars)
}

/// `text` cut to `max_chars` characters, the last one `…` when anything was cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// How a change that replaces instances rolls out by `new`'s policies: `rolling update,
/// start-first, 2 at a time`, `canary (10%, 50%, 100%)`, `blue-green (switch auto)`.
pub fn rollout_words(new: &ServiceSpec) -> String {
    match new.release.strategy {
        ReleaseStrategy::Rolling => format!("rolling update, {}", update_words(&new.update)),
        ReleaseStrategy::Canary => {
            let steps: Vec<String> = new
                .release
                .steps
                .iter()
                .map(|s| format!("{}%", s.weight))
                .collect();
            format!("canary ({})", steps.join(", "))
        }
        ReleaseStrategy::BlueGreen => format!(
            "blue-green (switch {})",
            match new.release.switch {
                crate::Switch::Auto => "auto",
                crate::Switch::Manual => "manual",
            }
        ),
    }
}

/// `start-first, 2 at a time`.
fn update_words(u: &UpdatePolicy) -> String {
    let order = match u.order {
        UpdateOrder::StartFirst => "start-first",
        UpdateOrder::StopFirst => "stop-first",
    };
    let batch = match u.parallelism {
        Parallelism::Count(0) => "all at once".to_string(),
        Parallelism::Count(n) => format!("{n} at a time"),
        Parallelism::Percent(p) => format!("{p}% at a time"),
    };
    format!("{order}, {batch}")
}

/// The fields that differ, collected in [`ServiceSpec`]'s field order.
struct Fields(Vec<FieldChange>);

impl Fields {
    /// `field old→new` when the rendered values differ and are short, else `field` alone;
    /// nothing when `differs` is false.
    fn value(&mut self, field: &str, differs: bool, old: String, new: String) {
        if !differs {
            return;
        }
        let detail = (old != new && old.chars().count() + new.chars().count() <= MAX_DETAIL)
            .then(|| format!("{old}→{new}"));
        self.0.push(FieldChange {
            field: field.into(),
            detail,
        });
    }

    /// A field that differs when its values do, shown by `show`.
    fn by<T: PartialEq>(&mut self, field: &str, old: &T, new: &T, show: impl Fn(&T) -> String) {
        self.value(field, old != new, show(old), show(new));
    }

    /// A field shown by name only.
    fn named(&mut self, field: &str, differs: bool) {
        if differs {
            self.0.push(FieldChange {
                field: field.into(),
                detail: None,
            });
        }
    }

    /// A keyed collection: `+added ~changed -removed` by key (values never shown).
    fn keyed<V: PartialEq>(
        &mut self,
        field: &str,
        old: &BTreeMap<String, V>,
        new: &BTreeMap<String, V>,
    ) {
        let mut words = Vec::new();
        for (k, v) in new {
            match old.get(k) {
                None => words.push(format!("+{k}")),
                Some(o) if o != v => words.push(format!("~{k}")),
                Some(_) => {}
            }
        }
        words.extend(
            old.keys()
                .filter(|k| !new.contains_key(*k))
                .map(|k| format!("-{k}")),
        );
        if words.is_empty() {
            return;
        }
        let detail = words.join(" ");
        self.0.push(FieldChange {
            field: field.into(),
            detail: (detail.chars().count() <= MAX_DETAIL).then_some(detail),
        });
    }
}

fn service_fields(a: &ServiceSpec, b: &ServiceSpec) -> Vec<FieldChange> {
    let waits = |s: &ServiceSpec| -> BTreeMap<String, &'static str> {
        s.depends_on
            .iter()
            .map(|(k, w)| (k.clone(), wait_words(*w)))
            .collect()
    };
    let mut f = Fields(Vec::new());
    f.by("driver", &a.driver, &b.driver, |d| d.to_string());
    f.by("image", &a.image, &b.image, opt);
    f.named("build", a.build != b.build);
    f.by("entrypoint", &a.entrypoint, &b.entrypoint, argv);
    f.by("command", &a.command, &b.command, argv);
    f.by("executable", &a.executable, &b.executable, opt);
    f.by("working_dir", &a.working_dir, &b.working_dir, opt);
    f.keyed("environment", &a.environment, &b.environment);
    f.by("ports", &a.ports, &b.ports, |p| list(p, port));
    f.keyed(
        "mounts",
        &by_key(&a.mounts, mount),
        &by_key(&b.mounts, mount),
    );
    f.by("replicas", &a.replicas, &b.replicas, |r| r.to_string());
    f.keyed("depends_on", &waits(a), &waits(b));
    f.by("health", &a.health, &b.health, opt_health);
    f.by("liveness", &a.liveness, &b.liveness, opt_health);
    f.by("keep_failed", &a.keep_failed, &b.keep_failed, |k| {
        k.to_string()
    });
    f.keyed(
        "routes",
        &by_key(&a.routes, route),
        &by_key(&b.routes, route),
    );
    f.by("restart", &a.restart, &b.restart, restart);
    f.by("stop_signal", &a.stop_signal, &b.stop_signal, Clone::clone);
    f.by("stop_grace", &a.stop_grace, &b.stop_grace, |d| duration(*d));
    f.by("limits", &a.limits, &b.limits, limits);
    f.named("reservations", a.reservations != b.reservations);
    f.named("placement", a.placement != b.placement);
    f.by("update_config", &a.update, &b.update, update_words);
    f.by("rollback_config", &a.rollback, &b.rollback, update_words);
    f.by("release", &a.release, &b.release, |r| {
        strategy(r.strategy).into()
    });
    // By name only: a config's content may be a secret.
    let configs = |s: &ServiceSpec| -> BTreeMap<String, (String, String, Option<u32>)> {
        s.configs
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    (c.target.clone(), c.content.clone(), c.mode),
                )
            })
            .collect()
    };
    f.keyed("configs", &configs(a), &configs(b));
    f.by("reload", &a.reload, &b.reload, |r| {
        r.as_ref().map_or("none".into(), |r| r.signal.clone())
    });
    f.0
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "none".into())
}

/// `serve --port 80`; an argument with spaces or quotes is quoted.
fn argv(v: &Option<Vec<String>>) -> String {
    let Some(args) = v else {
        return "default".into();
    };
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn list<T>(items: &[T], show: fn(&T) -> String) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(show).collect::<Vec<_>>().join(",")
}

/// Items keyed by their rendering (for a `+x -y` comparison).
fn by_key<T>(items: &[T], show: fn(&T) -> String) -> BTreeMap<String, ()> {
    items.iter().map(|i| (show(i), ())).collect()
}

/// `8080:80`, `80`, `53/udp`, `9000:9000 (host)`.
fn port(p: &PortSpec) -> String {
    let mut s = match p.published {
        Some(published) => format!("{published}:{}", p.target),
        None => p.target.to_string(),
    };
    if p.protocol != "tcp" {
        s += &format!("/{}", p.protocol);
    }
    if p.host_mode {
        s += " (host)";
    }
    s
}

fn mount(m: &MountSpec) -> String {
    match m {
        MountSpec::Bind {
            source,
            target,
            read_only,
        } => format!("{source}:{target}{}", if *read_only { ":ro" } else { "" }),
        MountSpec::Volume {
            name,
            target,
            read_only,
            ..
        } => format!("{name}:{target}{}", if *read_only { ":ro" } else { "" }),
        MountSpec::Tmpfs { target, .. } => format!("tmpfs:{target}"),
    }
}

fn route(r: &RouteSpec) -> String {
    format!("{}{}→{}", r.host.as_deref().unwrap_or(""), r.path, r.port)
}

fn wait_words(w: WaitFor) -> &'static str {
    match w {
        WaitFor::Started => "started",
        WaitFor::Healthy => "healthy",
        WaitFor::CompletedSuccessfully => "completed",
    }
}

/// `http web/healthz every 1s`, `tcp web every 500ms`, `cmd every 5s`, `none`.
fn opt_health(h: &Option<HealthSpec>) -> String {
    let Some(h) = h else {
        return "none".into();
    };
    let probe = match (&h.http, &h.tcp) {
        (Some(http), _) => format!("http {}{}", http.port, http.path),
        (None, Some(port)) => format!("tcp {port}"),
        (None, None) => "cmd".into(),
    };
    format!("{probe} every {}", duration(h.interval))
}

fn restart(r: &crate::RestartPolicy) -> String {
    let condition = match r.condition {
        crate::RestartCondition::Never => "no",
        crate::RestartCondition::OnFailure => "on-failure",
        crate::RestartCondition::Always => "always",
    };
    match r.max_attempts {
        Some(n) => format!("{condition} (max {n})"),
        None => condition.into(),
    }
}

fn limits(l: &ResourceLimits) -> String {
    let mut parts = Vec::new();
    if let Some(c) = l.cpus {
        parts.push(format!("cpus={c}"));
    }
    if let Some(m) = l.memory_bytes {
        parts.push(format!("memory={}", bytes(m)));
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids={p}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

fn strategy(s: ReleaseStrategy) -> &'static str {
    match s {
        ReleaseStrategy::Rolling => "rolling",
        ReleaseStrategy::Canary => "canary",
        ReleaseStrategy::BlueGreen => "blue-green",
    }
}

/// `256MiB`, `1GiB`, `1500B`.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

/// `10s`, `1500ms`, `2m`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HttpProbe, ReleasePolicy};

    fn svc(image: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            image: Some(image.into()),
            replicas,
            stop_signal: "SIGTERM".into(),
            ..ServiceSpec::default()
        }
    }

    fn stack(services: &[(&str, ServiceSpec)]) -> StackSpec {
        StackSpec {
            services: services
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
            batches: Vec::new(),
            values: Default::default(),
        }
    }

    fn lines(old: &StackSpec, new: &StackSpec) -> Vec<String> {
        compare(old, new).iter().map(ServiceDiff::line).collect()
    }

    #[test]
    fn a_config_change_names_the_config_never_its_content_and_a_reload_keeps_instances() {
        let with = |content: &str, reload: bool| {
            let mut s = svc("demo:1", 2);
            s.configs = vec![crate::ConfigFile {
                name: "app".into(),
                target: "/app".into(),
                content: content.into(),
                mode: None,
            }];
            s.reload = reload.then(|| crate::ReloadSpec {
                signal: "SIGHUP".into(),
            });
            s
        };
        let old = stack(&[("web", with("secret=1", true))]);
        let new = stack(&[("web", with("secret=2", true))]);
        let diffs = compare(&old, &new);
        assert_eq!(diffs[0].line(), "~ web: configs ~app");
        assert!(matches!(
            diffs[0].change,
            Change::Changed {
                replaces: false,
                ..
            }
        ));
        let plain = stack(&[("web", with("secret=2", false))]);
        assert!(matches!(
            compare(&stack(&[("web", with("secret=1", false))]), &plain)[0].change,
            Change::Changed { replaces: true, .. }
        ));
    }

    #[test]
    fn an_image_change_replaces_instances_and_shows_old_and_new() {
        let old = stack(&[("web", svc("demo:1", 2))]);
        let new = stack(&[("web", svc("demo:2", 2))]);
        let diffs = compare(&old, &new);
        assert_eq!(diffs[0].line(), "~ web: image demo:1→demo:2");
        assert!(matches!(
            diffs[0].change,
            Change::Changed { replaces: true, .. }
        ));
        assert_eq!(summary(Some(&old), &new, 200), "web: image demo:1→demo:2");
    }

    #[test]
    fn a_replicas_change_keeps_instances() {
        let old = stack(&[("api", svc("api:1", 2))]);
        let new = stack(&[("api", svc("api:1", 3))]);
        let diffs = compare(&old, &new);
        assert_eq!(diffs[0].line(), "~ api: replicas 2→3");
        assert!(matches!(
            diffs[0].change,
            Change::Changed {
                replaces: false,
                ..
            }
        ));
    }

    #[test]
    fn added_and_removed_services_come_after_changed_ones_in_the_summary() {
        let old = stack(&[("old", svc("o", 1)), ("web", svc("demo:1", 1))]);
        let new = stack(&[("web", svc("demo:2", 1)), ("worker", svc("w", 1))]);
        assert_eq!(
            lines(&old, &new),
            ["- old", "~ web: image demo:1→demo:2", "+ worker"]
        );
        assert_eq!(
            summary(Some(&old), &new, 200),
            "web: image demo:1→demo:2; +worker; -old"
        );
    }

    #[test]
    fn the_same_spec_is_no_change_and_no_release_before_is_initial() {
        let s = stack(&[("web", svc("demo:1", 1))]);
        assert_eq!(lines(&s, &s), ["= web"]);
        assert_eq!(summary(Some(&s), &s, 200), "no change");
        assert_eq!(summary(None, &s, 200), "initial");
    }

    #[test]
    fn environment_changes_name_keys_and_never_values() {
        let mut a = svc("demo:1", 1);
        a.environment.insert("KEEP".into(), "same".into());
        a.environment.insert("TOKEN".into(), "s3cret-old".into());
        a.environment.insert("GONE".into(), "x".into());
        let mut b = a.clone();
        b.environment.insert("TOKEN".into(), "s3cret-new".into());
        b.environment.remove("GONE");
        b.environment.insert("ADDED".into(), "hunter2".into());
        let line = summary(Some(&stack(&[("web", a)])), &stack(&[("web", b)]), 200);
        assert_eq!(line, "web: environment +ADDED ~TOKEN -GONE");
        assert!(!line.contains("s3cret") && !line.contains("hunter2"));
    }

    #[test]
    fn command_ports_limits_health_and_mounts_show_old_and_new() {
        let a = svc("demo:1", 1);
        let mut b = a.clone();
        b.command = Some(vec!["serve".into(), "--fast".into()]);
        let mut quoted = a.clone();
        quoted.command = Some(vec!["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(
            lines(&stack(&[("web", a.clone())]), &stack(&[("web", quoted)])),
            ["~ web: command default→sh -c \"exit 3\""]
        );
        b.ports = vec![PortSpec {
            name: "http".into(),
            target: 80,
            protocol: "tcp".into(),
            published: Some(8080),
            host_mode: false,
        }];
        b.limits.memory_bytes = Some(256 << 20);
        b.health = Some(HealthSpec {
            test: Vec::new(),
            http: Some(HttpProbe {
                port: "http".into(),
                path: "/healthz".into(),
                status: None,
            }),
            tcp: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::ZERO,
            start_interval: Duration::ZERO,
        });
        b.mounts = vec![MountSpec::Tmpfs {
            target: "/tmp".into(),
            size_bytes: None,
        }];
        let l = lines(&stack(&[("web", a)]), &stack(&[("web", b)]));
        assert_eq!(
            l,
            ["~ web: command default→serve --fast, ports none→8080:80, \
                 mounts +tmpfs:/tmp, health none→http http/healthz every 1s, \
                 limits none→memory=256MiB"]
        );
    }

    #[test]
    fn a_long_value_is_shown_by_its_field_name() {
        let a = svc(
            &format!("registry.example.com/team/{}:1", "x".repeat(40)),
            1,
        );
        let b = svc(
            &format!("registry.example.com/team/{}:2", "x".repeat(40)),
            1,
        );
        assert_eq!(
            lines(&stack(&[("web", a)]), &stack(&[("web", b)])),
            ["~ web: image"]
        );
    }

    #[test]
    fn policy_changes_keep_instances_and_say_how_the_next_change_rolls() {
        let a = svc("demo:1", 4);
        let mut b = a.clone();
        b.update.order = UpdateOrder::StartFirst;
        b.update.parallelism = Parallelism::Count(2);
        b.release = ReleasePolicy::default();
        let diffs = compare(&stack(&[("web", a)]), &stack(&[("web", b.clone())]));
        assert_eq!(
            diffs[0].line(),
            "~ web: update_config stop-first, 1 at a time→start-first, 2 at a time"
        );
        assert!(matches!(
            diffs[0].change,
            Change::Changed {
                replaces: false,
                ..
            }
        ));
        assert_eq!(
            rollout_words(&b),
            "rolling update, start-first, 2 at a time"
        );
        b.release.strategy = ReleaseStrategy::BlueGreen;
        assert_eq!(rollout_words(&b), "blue-green (switch auto)");
    }

    #[test]
    fn the_summary_is_bounded_and_ends_with_an_ellipsis_when_cut() {
        let old = stack(&[]);
        let names: Vec<String> = (0..100).map(|i| format!("service-{i:03}")).collect();
        let new = StackSpec {
            services: names.iter().map(|n| (n.clone(), svc("x", 1))).collect(),
            batches: Vec::new(),
            values: Default::default(),
        };
        let line = summary(Some(&old), &new, 200);
        assert_eq!(line.chars().count(), 200);
        assert!(line.starts_with("+service-000; +service-001"));
        assert!(line.ends_with('…'));
        assert_eq!(truncate("äöü", 3), "äöü");
        assert_eq!(truncate("äöüß", 3), "äö…");
    }
}
