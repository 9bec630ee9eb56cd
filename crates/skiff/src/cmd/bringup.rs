//! What `skiff up` says about a bring-up, from what the server recorded (never the client's
//! clock): the critical path once every service is ready (per dependency batch, its time and
//! the service that held it longest), or, when a service fails, which one, why, its last log
//! lines and health check output, and what did not start because of it.
//!
//! The times are the `started`, `ready` and `completed` events the agents report for each
//! instance; the failures are `readiness_failed` (a check that never passed within its start
//! period and retries), `exited`, `oom_killed` and `start_failed` of an instance of the
//! release that was never ready.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use skiff_client::blocking::Client;
use skiff_client::{EventQuery, LogQuery};
use skiff_model::{Event, Instance, InstanceId, StackKey, StackSpec};

/// Log lines shown for a failed instance.
pub const LOG_LINES: usize = 20;

/// The events of one stack, followed from a sequence number on.
pub struct Events {
    query: EventQuery,
    pub seen: Vec<Event>,
}

impl Events {
    /// The stack's events from now on: its newest event so far is where reading starts.
    pub fn from_now(client: &Client, stack: &StackKey) -> anyhow::Result<Events> {
        let mut query = EventQuery {
            after: 0,
            limit: Some(10_000),
            env: Some(stack.env.clone()),
            stack: Some(stack.stack.clone()),
        };
        loop {
            let page = client.events(&query)?;
            match page.last() {
                Some(last) if page.len() == 10_000 => query.after = last.seq,
                Some(last) => {
                    query.after = last.seq;
                    break;
                }
                None => break,
            }
        }
        Ok(Events {
            query,
            seen: Vec::new(),
        })
    }

    /// Reads what happened since the last call.
    pub fn poll(&mut self, client: &Client) -> anyhow::Result<()> {
        let page = client.events(&self.query)?;
        if let Some(last) = page.last() {
            self.query.after = last.seq;
        }
        self.seen.extend(page);
        Ok(())
    }
}

/// Dependency batches of `spec`: a service is in the batch after the last of its
/// dependencies (services without any are in the first).
pub fn batches(spec: &StackSpec) -> Vec<Vec<String>> {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    // Longest path by relaxation: at most one round per service (the graph is acyclic; a
    // cycle, which validation refuses, stops after that many rounds).
    for _ in 0..=spec.services.len() {
        let mut changed = false;
        for (name, s) in &spec.services {
            let l = s
                .depends_on
                .keys()
                .filter_map(|d| level.get(d.as_str()).map(|l| l + 1))
                .max()
                .unwrap_or(0);
            if level.get(name.as_str()) != Some(&l) {
                level.insert(name, l);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out: Vec<Vec<String>> = Vec::new();
    for (name, l) in level {
        if out.len() <= l {
            out.resize(l + 1, Vec::new());
        }
        out[l].push(name.to_string());
    }
    out
}

/// Services that depend on `failed`, directly or through others.
pub fn dependents(spec: &StackSpec, failed: &str) -> Vec<String> {
    let mut out: BTreeSet<&str> = BTreeSet::new();
    let mut frontier = vec![failed];
    while let Some(f) = frontier.pop() {
        for (name, s) in &spec.services {
            if s.depends_on.contains_key(f) && out.insert(name) {
                frontier.push(name);
            }
        }
    }
    out.into_iter().map(str::to_string).collect()
}

/// The service name of an event's instance (`web-2` → `web`).
fn service_of(instance: &str) -> &str {
    instance.rsplit_once('-').map_or(instance, |(s, _)| s)
}

/// One service's bring-up as the server recorded it (Unix ms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceTimes {
    pub service: String,
    /// The first start of one of its instances in this bring-up.
    pub started_ms: u64,
    /// When its last instance became ready (or a one-shot completed).
    pub ready_ms: u64,
}

/// One dependency batch of the critical path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Batch {
    /// 1 for services without dependencies.
    pub batch: usize,
    pub services: Vec<String>,
    /// From the end of the batch before (the release, for the first) to its last ready
    /// service; 0 when every service of it was kept as it ran.
    pub ms: u64,
    /// The service whose readiness ended the batch, with its own start and ready times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<ServiceTimes>,
    /// Services of the batch that were already running and were kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CriticalPath {
    pub batches: Vec<Batch>,
    /// From `since_ms` to the last service ready.
    pub total_ms: u64,
}

/// The critical path of a bring-up that began at `since_ms` (server time: the release's
/// record, or the first start when no release was recorded) from its `events`.
pub fn critical_path(spec: &StackSpec, events: &[Event], since_ms: u64) -> CriticalPath {
    let mut times: BTreeMap<&str, ServiceTimes> = BTreeMap::new();
    for e in events {
        let Some(inst) = e.instance.as_deref() else {
            continue;
        };
        let svc = service_of(inst);
        if !spec.services.contains_key(svc) {
            continue;
        }
        let t = times.entry(svc).or_insert_with(|| ServiceTimes {
            service: svc.to_string(),
            ..ServiceTimes::default()
        });
        match e.kind.as_str() {
            "started" if t.started_ms == 0 || e.time_ms < t.started_ms => t.started_ms = e.time_ms,
            "ready" | "completed" => t.ready_ms = t.ready_ms.max(e.time_ms),
            _ => {}
        }
    }
    let mut end = since_ms;
    let mut out = Vec::new();
    for (n, services) in batches(spec).into_iter().enumerate() {
        let (ran, kept): (Vec<&String>, Vec<&String>) = services.iter().partition(|s| {
            times
                .get(s.as_str())
                .is_some_and(|t| t.started_ms > 0 && t.ready_ms > 0)
        });
        let held_by = ran
            .iter()
            .filter_map(|s| times.get(s.as_str()))
            .max_by_key(|t| (t.ready_ms, t.ready_ms.saturating_sub(t.started_ms)))
            .cloned();
        let ms = held_by
            .as_ref()
            .map_or(0, |h| h.ready_ms.saturating_sub(end));
        if let Some(h) = &held_by {
            end = end.max(h.ready_ms);
        }
        out.push(Batch {
            batch: n + 1,
            services: services.clone(),
            ms,
            held_by,
            kept: kept.into_iter().cloned().collect(),
        });
    }
    CriticalPath {
        batches: out,
        total_ms: end.saturating_sub(since_ms),
    }
}

/// Whether every service of `spec` that started in `events` has its ready (or completed)
/// time there too.
pub fn all_timed(spec: &StackSpec, events: &[Event]) -> bool {
    let of = |kinds: &[&str]| -> BTreeSet<&str> {
        events
            .iter()
            .filter(|e| kinds.contains(&e.kind.as_str()))
            .filter_map(|e| e.instance.as_deref())
            .map(service_of)
            .filter(|s| spec.services.contains_key(*s))
            .collect()
    };
    of(&["started"]).is_subset(&of(&["ready", "completed"]))
}

/// When the first instance started in `events`.
pub fn first_start(events: &[Event]) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.kind == "started")
        .map(|e| e.time_ms)
        .min()
}

/// Prints the critical path for people.
pub fn print_critical_path(cp: &CriticalPath) {
    if cp.batches.iter().all(|b| b.held_by.is_none()) {
        return; // nothing started: every service kept running
    }
    let count = |n: usize| {
        if n == 1 {
            "1 service".to_string()
        } else {
            format!("{n} services")
        }
    };
    println!("critical path (times the server recorded):");
    for b in &cp.batches {
        match &b.held_by {
            Some(h) => println!(
                "  batch {} ({}): {:.2}s, held longest by {} (ready {:.2}s after its start)",
                b.batch,
                count(b.services.len()),
                b.ms as f64 / 1000.0,
                h.service,
                h.ready_ms.saturating_sub(h.started_ms) as f64 / 1000.0
            ),
            None => println!(
                "  batch {} ({}): kept running, nothing started",
                b.batch,
                count(b.services.len())
            ),
        }
        if b.held_by.is_some() && !b.kept.is_empty() {
            println!("    kept: {}", b.kept.join(", "));
        }
    }
    println!("  total: {:.2}s", cp.total_ms as f64 / 1000.0);
}

/// A service that failed the bring-up, with what the server knows about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub service: String,
    pub instance: String,
    /// `readiness_failed`, `exited`, `oom_killed` or `start_failed`.
    pub kind: String,
    /// The event's first line.
    pub reason: String,
    /// What the instance's health check said last (command output tail, HTTP status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_output: Option<String>,
    /// Its last log lines (at most [`LOG_LINES`]).
    pub logs: Vec<String>,
    /// Why the logs could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs_error: Option<String>,
    /// Services that did not start because of it (its dependents without an instance).
    pub not_started: Vec<String>,
    /// Whether the instance still runs (out of traffic) for `skiff exec` and `skiff logs`.
    pub kept_running: bool,
}

/// The first instance of the wanted services that failed in `events` (those of the bring-up):
/// a readiness check given up on, or an end (exit, OOM kill, failed start) of an instance that
/// is of `release` now. A one-shot that completed (`completed`) is not a failure; a stop by
/// skiff (`stopped`) is none either.
pub fn first_failure<'e>(
    events: &'e [Event],
    instances: &[Instance],
    release: u64,
    wanted: &dyn Fn(&str) -> bool,
) -> Option<&'e Event> {
    events.iter().find(|e| {
        let Some(inst) = e.instance.as_deref() else {
            return false;
        };
        let of_release = instances
            .iter()
            .find(|i| i.id.short() == inst)
            .is_none_or(|i| i.release == release);
        wanted(service_of(inst))
            && of_release
            && matches!(
                e.kind.as_str(),
                "readiness_failed" | "exited" | "oom_killed" | "start_failed"
            )
    })
}

/// The report of `event`'s failure: its logs through the server, its dependents from the
/// release's spec and what runs.
pub fn failure(
    client: &Client,
    stack: &StackKey,
    spec: &StackSpec,
    event: &Event,
    instances: &[Instance],
) -> Failure {
    let instance = event.instance.clone().unwrap_or_default();
    let service = service_of(&instance).to_string();
    let (reason, health_output) = match event.message.split_once("\nlast health check output:\n") {
        Some((why, out)) => (why.to_string(), Some(out.to_string())),
        None => (event.message.clone(), None),
    };
    let index = instance
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1);
    let id = InstanceId {
        stack: stack.clone(),
        service: service.clone(),
        index,
    };
    let (logs, logs_error) = match last_log_lines(client, &id) {
        Ok(l) => (l, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let running: BTreeSet<&str> = instances.iter().map(|i| i.id.service.as_str()).collect();
    let not_started = dependents(spec, &service)
        .into_iter()
        .filter(|d| !running.contains(d.as_str()))
        .collect();
    Failure {
        kept_running: event.kind == "readiness_failed",
        service,
        instance,
        kind: event.kind.clone(),
        reason,
        health_output,
        logs,
        logs_error,
        not_started,
    }
}

/// The last [`LOG_LINES`] lines an instance wrote (from its agent, through the server).
fn last_log_lines(client: &Client, id: &InstanceId) -> anyhow::Result<Vec<String>> {
    let mut last = std::collections::VecDeque::with_capacity(LOG_LINES + 1);
    for line in client.logs(
        id,
        &LogQuery {
            follow: false,
            since_ms: 0,
        },
    )? {
        let line = line?;
        let Some(r) = skiff_driver_process::parse_log_line(&line) else {
            continue;
        };
        last.push_back(r.text.to_string());
        if last.len() > LOG_LINES {
            last.pop_front();
        }
    }
    Ok(last.into())
}

/// Prints a failure for people (on stderr, as errors are).
pub fn print_failure(f: &Failure, stack: &str) {
    crate::output::print_error(&format!(
        "service {} failed the bring-up: {} {}: {}",
        f.service,
        f.instance,
        match f.kind.as_str() {
            "readiness_failed" => "never became ready",
            "start_failed" => "could not start",
            "oom_killed" => "was killed for memory",
            _ => "ended",
        },
        f.reason
    ));
    match &f.health_output {
        Some(out) => {
            eprintln!("  last health check output:");
            for l in out.lines() {
                eprintln!("    {l}");
            }
        }
        None => eprintln!("  no health check output (it ended before any check failed)"),
    }
    match &f.logs_error {
        Some(e) => eprintln!("  its logs could not be read: {e}"),
        None if f.logs.is_empty() => eprintln!("  it wrote no log lines"),
        None => {
            eprintln!("  last {} log lines of {}:", f.logs.len(), f.instance);
            for l in &f.logs {
                eprintln!("    {l}");
            }
        }
    }
    if !f.not_started.is_empty() {
        eprintln!("  not started because of it: {}", f.not_started.join(", "));
    }
    if f.kept_running {
        eprintln!(
            "  {} is kept running out of traffic: `skiff exec {} -- …`, `skiff logs {} --stack {stack}`; \
             fix the file and run `skiff up` again to resume",
            f.instance, f.service, f.service
        );
    } else {
        eprintln!(
            "  see `skiff logs {} --stack {stack}`; fix the file and run `skiff up` again to resume",
            f.service
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{ServiceSpec, WaitFor};

    fn spec(edges: &[(&str, &[&str])]) -> StackSpec {
        let mut s = StackSpec::default();
        for (name, deps) in edges {
            let svc = ServiceSpec {
                depends_on: deps
                    .iter()
                    .map(|d| (d.to_string(), WaitFor::Healthy))
                    .collect(),
                ..ServiceSpec::default()
            };
            s.services.insert(name.to_string(), svc);
        }
        s
    }

    fn event(seq: u64, time_ms: u64, instance: &str, kind: &str, message: &str) -> Event {
        Event {
            seq,
            time_ms,
            stack: StackKey::new("default", "shop").unwrap(),
            instance: Some(instance.into()),
            kind: kind.into(),
            message: message.into(),
        }
    }

    #[test]
    fn batches_follow_the_longest_dependency_chain() {
        let s = spec(&[
            ("db", &[]),
            ("cache", &[]),
            ("api", &["db", "cache"]),
            ("worker", &["db"]),
            ("web", &["api", "db"]),
        ]);
        assert_eq!(
            batches(&s),
            vec![
                vec!["cache".to_string(), "db".into()],
                vec!["api".into(), "worker".into()],
                vec!["web".into()],
            ]
        );
        assert_eq!(dependents(&s, "db"), vec!["api", "web", "worker"]);
        assert_eq!(dependents(&s, "cache"), vec!["api", "web"]);
        assert!(dependents(&s, "web").is_empty());
    }

    #[test]
    fn the_critical_path_names_the_last_ready_service_of_each_batch() {
        let s = spec(&[("db", &[]), ("cache", &[]), ("api", &["db", "cache"])]);
        let ev = [
            event(1, 1_010, "db-1", "started", ""),
            event(2, 1_020, "cache-1", "started", ""),
            event(3, 1_100, "cache-1", "ready", ""),
            event(4, 1_900, "db-1", "ready", ""),
            event(5, 1_950, "api-1", "started", ""),
            event(6, 2_000, "api-2", "started", ""),
            event(7, 2_300, "api-1", "ready", ""),
            event(8, 2_500, "api-2", "ready", ""),
        ];
        let cp = critical_path(&s, &ev, 1_000);
        assert_eq!(cp.total_ms, 1_500);
        assert_eq!(cp.batches.len(), 2);
        let first = &cp.batches[0];
        assert_eq!(first.ms, 900);
        let held = first.held_by.as_ref().unwrap();
        assert_eq!(
            (held.service.as_str(), held.started_ms, held.ready_ms),
            ("db", 1_010, 1_900)
        );
        let second = &cp.batches[1];
        assert_eq!(second.ms, 600);
        let held = second.held_by.as_ref().unwrap();
        assert_eq!(
            (held.service.as_str(), held.started_ms, held.ready_ms),
            ("api", 1_950, 2_500)
        );
    }

    #[test]
    fn kept_services_take_no_time_on_the_critical_path() {
        let s = spec(&[("db", &[]), ("api", &["db"])]);
        let ev = [
            event(1, 5_100, "api-1", "started", ""),
            event(2, 5_400, "api-1", "ready", ""),
        ];
        let cp = critical_path(&s, &ev, 5_000);
        assert_eq!(cp.batches[0].held_by, None);
        assert_eq!(cp.batches[0].kept, vec!["db"]);
        assert_eq!(cp.batches[0].ms, 0);
        assert_eq!(cp.batches[1].ms, 400);
        assert_eq!(cp.total_ms, 400);
    }

    fn instance(short: &str, release: u64) -> Instance {
        let (service, index) = short.rsplit_once('-').unwrap();
        Instance {
            id: InstanceId {
                stack: StackKey::new("default", "shop").unwrap(),
                service: service.into(),
                index: index.parse().unwrap(),
            },
            node: String::new(),
            release,
            state: skiff_model::InstanceState::Healthy,
            pid: None,
            ports: BTreeMap::new(),
            restarts: 0,
            exit_code: None,
            reason: None,
            updated_ms: 0,
        }
    }

    #[test]
    fn a_failure_is_an_end_or_a_readiness_given_up_of_the_release() {
        let all = |_: &str| true;
        let insts = [
            instance("db-1", 2),
            instance("old-1", 1),
            instance("api-1", 2),
        ];
        // A completed one-shot and a stop are no failure; an exit of an instance of another
        // release is not this one's.
        let ev = [
            event(1, 1, "db-1", "ready", ""),
            event(2, 2, "db-1", "stopped", "stopped"),
            event(3, 3, "migrate-1", "completed", "exited with code 0"),
            event(4, 4, "old-1", "exited", "exited with code 1"),
        ];
        assert_eq!(first_failure(&ev, &insts, 2, &all), None);
        let ev = [
            event(1, 1, "api-1", "exited", "exited with code 2"),
            event(2, 2, "db-1", "readiness_failed", "never"),
        ];
        assert_eq!(first_failure(&ev, &insts, 2, &all).map(|e| e.seq), Some(1));
        let only_db = |s: &str| s == "db";
        assert_eq!(
            first_failure(&ev, &insts, 2, &only_db).map(|e| e.seq),
            Some(2)
        );
    }
}
