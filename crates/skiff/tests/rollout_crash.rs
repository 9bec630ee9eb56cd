//! A `kill -9` of `skiff dev` at each step of a rolling update (named crash points, each right
//! after the commit that makes the step durable): once the server is back, the rollout
//! resumes where it was and completes — every instance on the new release, none of the old
//! one left, never more copies running than the order allows, no release recorded twice, and
//! every step told once (no finished batch run again). The same for an automatic rollback:
//! the stack ends on one rollback release, not two.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const REPLICAS: usize = 4;

/// Four replicas of the demo workload, replaced one at a time; `@…@` filled in per case.
const STACK: &str = "name: @STACK@
x-skiff: {driver: process}
services:
  web:
    command: @COMMAND@
    ports: [{name: http, target: 8080}]
    environment: {DEMO_VERSION: '@VERSION@', CRASH_MARK: '@MARK@'}
    deploy:
      replicas: 4
      update_config: {parallelism: 1, order: @ORDER@, monitor: 200ms, failure_action: rollback}
      rollback_config: {parallelism: 1, order: @ORDER@}
    stop_grace_period: 5s
    x-skiff:
      readiness: {http: {path: /health}, interval: 300ms, retries: 3}
";

const DEMO: &str = "[skiff-demo, --name, web]";
/// A release whose instances exit at once: it fails, and `failure_action: rollback` acts.
const BROKEN: &str = "[sh, -c, 'exit 3']";

struct Case {
    stack: String,
    order: &'static str,
    data: tempfile::TempDir,
    project: tempfile::TempDir,
    mark: String,
}

impl Case {
    fn new(stack: &str, order: &'static str) -> Case {
        ensure_demo_built();
        let data = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let mark = data.path().display().to_string();
        Case {
            stack: stack.to_string(),
            order,
            data,
            project,
            mark,
        }
    }

    fn write(&self, version: &str, command: &str) {
        let text = STACK
            .replace("@STACK@", &self.stack)
            .replace("@ORDER@", self.order)
            .replace("@VERSION@", version)
            .replace("@COMMAND@", command)
            .replace("@MARK@", &self.mark);
        std::fs::write(self.project.path().join("compose.yaml"), text).unwrap();
    }

    fn cli(&self, dev: &Dev, args: &[&str]) -> (bool, String, String) {
        skiff_in(dev, self.project.path(), &[], args)
    }

    fn json_lines(&self, dev: &Dev, args: &[&str]) -> Vec<serde_json::Value> {
        let (ok, out, err) = self.cli(dev, args);
        assert!(ok, "{args:?}: {err}");
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Live workload processes of this case: (instance, version) by pid.
    fn workloads(&self) -> BTreeMap<i32, (String, String)> {
        workloads(&self.mark)
    }

    /// The state of web's last rollout and its release.
    fn rollout(&self, dev: &Dev) -> Option<(String, u64, bool)> {
        let (ok, out, _) = self.cli(dev, &["rollout", "status", &self.stack, "-o", "json"]);
        if !ok {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let web = v.as_array()?.iter().find(|r| r["service"] == "web")?;
        Some((
            web["state"].as_str()?.to_string(),
            web["release"].as_u64()?,
            web["rollback"].as_bool().unwrap_or(false),
        ))
    }

    /// Release numbers `skiff history` lists.
    fn releases(&self, dev: &Dev) -> Vec<u64> {
        let (ok, out, err) = self.cli(dev, &["history", &self.stack, "-o", "json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut n: Vec<u64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["number"].as_u64().unwrap())
            .collect();
        n.sort();
        n
    }

    /// This stack's events of `kind`, by message.
    fn events(&self, dev: &Dev, kind: &str) -> Vec<String> {
        self.json_lines(dev, &["events", "-o", "json"])
            .into_iter()
            .filter(|e| e["stack"]["stack"] == self.stack.as_str())
            .filter(|e| e["kind"] == kind)
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until web's rollout of `release` is done and exactly the replicas run, all of
    /// `version`.
    fn wait_done(&self, dev: &Dev, release: u64, version: &str, context: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let rollout = self.rollout(dev);
            let running = self.workloads();
            let versions: BTreeSet<&str> = running.values().map(|(_, v)| v.as_str()).collect();
            if rollout
                .as_ref()
                .is_some_and(|(s, r, _)| s == "done" && *r == release)
                && running.len() == REPLICAS
                && versions == BTreeSet::from([version])
            {
                return;
            }
            if Instant::now() >= deadline {
                let events: Vec<String> = self
                    .json_lines(dev, &["events", "-o", "json"])
                    .iter()
                    .map(|e| e.to_string())
                    .collect();
                panic!(
                    "{context}: the rollout did not complete: {rollout:?}, running {running:?}; \
                     events: {events:#?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        for pid in self.workloads().into_keys() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Live processes whose environment carries `CRASH_MARK=mark`: pid → (instance, version).
fn workloads(mark: &str) -> BTreeMap<i32, (String, String)> {
    processes()
        .into_iter()
        .filter(|(_, env)| env.get("CRASH_MARK").map(String::as_str) == Some(mark))
        .map(|(pid, mut env)| {
            let mut take = |k: &str| env.remove(k).unwrap_or_default();
            (pid, (take("SKIFF_INSTANCE"), take("DEMO_VERSION")))
        })
        .collect()
}

/// Samples the case's workload processes every few milliseconds until stopped: the most
/// that ever ran at once.
struct Sampler {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(mark: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, most, mark) = (stop.clone(), most.clone(), mark.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    most.fetch_max(workloads(&mark).len(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Sampler {
            stop,
            most,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.most.load(Ordering::Relaxed)
    }
}

/// Waits for the server to abort at its crash point.
fn wait_abort(dev: &mut Dev, point: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            assert_eq!(
                status.signal(),
                Some(6),
                "{point}: the server did not abort there ({status})"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{point}: the crash point was never reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a crash during the change to v2 leaves: the case, the restarted server, a name for
/// messages and the instances of v1.
struct Crashed {
    case: Case,
    dev: Dev,
    context: String,
    old: BTreeSet<String>,
}

/// `up` v1 on a server that aborts at `point`, `up -d` of v2 (`command`), the abort, and a
/// normal server on the same data dir; then waits until `release` runs `version` everywhere
/// and checks that never more copies ran at once than `order` allows (the replicas, one more
/// start-first), sampled from before v2 to the end.
fn crash_during_v2(
    prefix: &str,
    point: &str,
    order: &'static str,
    command: &str,
    release: u64,
    version: &str,
) -> Crashed {
    let stack = format!(
        "{prefix}-{}-{}",
        point.replace([':', '-'], ""),
        &order[..order.find('-').unwrap()]
    );
    let context = format!("{point} ({order})");
    let case = Case::new(&stack, order);
    case.write("v1", DEMO);
    let mut dev = start_dev_with(case.data.path(), &[("SKIFF_CRASH_AT", point)]);
    let (ok, out, err) = case.cli(&dev, &["up", "--timeout", "60"]);
    assert!(ok, "{context}: up v1: {out}{err}");
    assert_eq!(case.workloads().len(), REPLICAS);
    let old: BTreeSet<String> = case.workloads().into_values().map(|(i, _)| i).collect();

    let sampler = Sampler::start(&case.mark);
    case.write("v2", command);
    // The answer may be cut off by the crash; the release is recorded before it.
    case.cli(&dev, &["up", "-d"]);
    wait_abort(&mut dev, &context);
    drop(dev);
    let dev = start_dev(case.data.path());
    case.wait_done(&dev, release, version, &context);
    // The last instance's monitor window, then nothing more happens.
    std::thread::sleep(Duration::from_millis(400));
    let most = sampler.finish();
    let allowed = if order == "start-first" {
        REPLICAS + 1
    } else {
        REPLICAS
    };
    assert!(
        most <= allowed,
        "{context}: {most} copies ran at once (at most {allowed})"
    );
    Crashed {
        case,
        dev,
        context,
        old,
    }
}

/// `up` v1, `up -d` v2 on a server that aborts at `point`, a normal server on the same data
/// dir: the rollout completes as if nothing happened.
fn rollout_resumes_after(point: &str, order: &'static str) {
    let Crashed {
        case,
        dev,
        context,
        old,
    } = crash_during_v2("rc", point, order, DEMO, 2, "v2");
    let running = case.workloads();
    assert_eq!(running.len(), REPLICAS, "{context}: {running:?}");
    assert!(
        running.values().all(|(_, v)| v == "v2"),
        "{context}: an instance of v1 is left: {running:?}"
    );
    let names: BTreeSet<&String> = running.values().map(|(i, _)| i).collect();
    assert_eq!(names.len(), REPLICAS, "{context}: {running:?}");
    assert_eq!(case.releases(&dev), [1, 2], "{context}: no release twice");

    // Every step once: the start, one batch per old instance, the end.
    let events = case.events(&dev, "rollout");
    let count = |needle: &str| events.iter().filter(|m| m.contains(needle)).count();
    assert_eq!(
        count("web: rolling out release 2 over 4 instance(s)"),
        1,
        "{context}: {events:#?}"
    );
    let mut replaced: Vec<String> = events
        .iter()
        .filter_map(|m| m.strip_prefix("web: release 2: replacing "))
        .map(str::to_string)
        .collect();
    replaced.sort();
    let mut want: Vec<String> = old.into_iter().collect();
    want.sort();
    assert_eq!(
        replaced, want,
        "{context}: each old instance replaced in exactly one batch: {events:#?}"
    );
    assert_eq!(
        count("web: release 2: 4 instance(s) replaced"),
        1,
        "{context}: {events:#?}"
    );

    let (ok, _, err) = case.cli(&dev, &["down", &case.stack]);
    assert!(ok, "{err}");
    wait_for("the stack down", || case.workloads().is_empty());
}

#[test]
fn a_crash_right_after_a_rollout_starts_resumes_it_in_both_orders() {
    rollout_resumes_after("rollout-started", "start-first");
    rollout_resumes_after("rollout-started", "stop-first");
}

#[test]
fn a_crash_after_the_second_batch_is_committed_resumes_without_running_it_again() {
    rollout_resumes_after("rollout-batch:2", "start-first");
    rollout_resumes_after("rollout-batch:2", "stop-first");
}

#[test]
fn a_crash_after_a_replaced_copy_is_deleted_resumes_the_start_first_rollout() {
    // Stop-first re-stamps in place: it deletes no replaced copy.
    rollout_resumes_after("rollout-retire:2", "start-first");
}

#[test]
fn a_crash_right_after_a_rollout_is_done_keeps_it_done_in_both_orders() {
    rollout_resumes_after("rollout-done", "start-first");
    rollout_resumes_after("rollout-done", "stop-first");
}

/// v1, then a v2 that fails with `failure_action: rollback` on a server that aborts at
/// `point`: after the restart the stack runs one rollback release (3, v1's spec).
fn rollback_happens_once_after(point: &str, order: &'static str) {
    let Crashed {
        case, dev, context, ..
    } = crash_during_v2("rb", point, order, BROKEN, 3, "v1");
    assert_eq!(
        case.releases(&dev),
        [1, 2, 3],
        "{context}: one rollback release, not two"
    );
    let (state, release, rollback) = case.rollout(&dev).unwrap();
    assert_eq!(
        (state.as_str(), release, rollback),
        ("done", 3, true),
        "{context}"
    );
    let stacks: serde_json::Value =
        serde_json::from_str(&http(&dev.addr, "GET", "/v1/stacks", "").1).unwrap();
    let current = stacks
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stack"] == case.stack.as_str())
        .and_then(|s| s["current"].as_u64());
    assert_eq!(current, Some(3), "{context}: {stacks}");
    let rollbacks = case.events(&dev, "rollback");
    assert_eq!(
        rollbacks,
        ["release 3 runs release 1's spec again (from release 2)"],
        "{context}: the rollback told once"
    );
    let events = case.events(&dev, "rollout");
    assert_eq!(
        events
            .iter()
            .filter(|m| m.contains("rolling back to release 1"))
            .count(),
        1,
        "{context}: {events:#?}"
    );

    let (ok, _, err) = case.cli(&dev, &["down", &case.stack]);
    assert!(ok, "{err}");
    wait_for("the stack down", || case.workloads().is_empty());
}

#[test]
fn a_crash_after_a_failed_rollout_decides_its_rollback_rolls_back_once() {
    rollback_happens_once_after("rollout-failed", "start-first");
    rollback_happens_once_after("rollout-failed", "stop-first");
}

#[test]
fn a_crash_after_the_rollback_release_is_recorded_rolls_back_once() {
    rollback_happens_once_after("rollout-rollback", "start-first");
    rollback_happens_once_after("rollout-rollback", "stop-first");
}
