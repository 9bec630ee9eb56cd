//! Canary and blue-green releases end to end through the ingress of `skiff dev`, under a
//! mixed load (every 5th request a POST with a body): a canary's weight is the share of
//! requests its release gets, `promote` takes it to 100 %, `abort` sends every request back
//! before its instances stop, a blue-green switch is atomic and a rollback while the previous
//! set is warm switches back to the same instances — and no request fails. A canary judged by
//! the ingress's own figures aborts itself when its release answers errors.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const WEB: &str = "web.shop.default.localhost";

/// `@VERSION@`, `@RELEASE@` and `@ERRORS@` are filled in per step.
const STACK: &str = "name: shop
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    environment: {DEMO_VERSION: '@VERSION@', DEMO_ERROR_RATE: '@ERRORS@'}
    deploy:
      replicas: 4
    stop_grace_period: 5s
    x-skiff:
      readiness: {http: {path: /health}, interval: 500ms, retries: 3}
      release: @RELEASE@
";

const CANARY: &str = "{strategy: canary, steps: [{weight: 25}]}";
const BLUE_GREEN: &str = "{strategy: blue-green, keep_previous: 10m}";
const JUDGED: &str = "{strategy: canary, steps: [{weight: 50, pause: 1m}], analysis: {max_error_rate: 5%, min_requests: 50, interval: 500ms}}";

fn file(version: &str, release: &str, errors: u32) -> String {
    STACK
        .replace("@VERSION@", version)
        .replace("@RELEASE@", release)
        .replace("@ERRORS@", &errors.to_string())
}

/// Closed-loop keep-alive load through the ingress: every 5th request a POST of a small body
/// to /echo, the others GET / (whose answers name the version). Counts answers per version
/// over time and every failure (socket errors, statuses of 400 and more).
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    threads: Vec<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    fn start(addr: &str, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let (mut ok, mut failures, mut n) = (0usize, Vec::new(), 0u64);
                    let mut conn: Option<HttpConn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match HttpConn::connect(&addr) {
                                Ok(c) => conn.insert(c),
                                Err(e) => {
                                    failures.push(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        n += 1;
                        let post = n % 5 == 0;
                        let answer = if post {
                            c.post(WEB, "/echo", "hello canary")
                        } else {
                            c.get(WEB, "/")
                        };
                        match answer {
                            Ok((code, body)) if (200..400).contains(&code) => {
                                ok += 1;
                                if !post {
                                    let version = body.split_whitespace().nth(1).unwrap_or("");
                                    seen.lock()
                                        .unwrap()
                                        .push((Instant::now(), version.to_string()));
                                }
                            }
                            Ok((code, body)) => failures.push(format!("{code}: {}", body.trim())),
                            Err(e) => {
                                failures.push(format!("socket: {e}"));
                                conn = None;
                            }
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load {
            stop,
            seen,
            threads,
        }
    }

    /// Answers per version seen from `since` on.
    fn versions_since(&self, since: Instant) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (at, v) in self.seen.lock().unwrap().iter() {
            if *at >= since {
                *out.entry(v.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Stops: (requests that went through, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut ok = 0;
        let mut failures = Vec::new();
        for t in self.threads {
            let (n, f) = t.join().unwrap();
            ok += n;
            failures.extend(f);
        }
        (ok, failures)
    }
}

fn up(dev: &Dev, project: &std::path::Path, compose: &str) -> String {
    std::fs::write(project.join("compose.yaml"), compose).unwrap();
    let (ok, out, err) = skiff_in(dev, project, &[], &["up", "--timeout", "60"]);
    assert!(ok, "{out}{err}");
    out
}

fn skiff_ok(dev: &Dev, project: &std::path::Path, args: &[&str]) -> String {
    let (ok, out, err) = skiff_in(dev, project, &[], args);
    assert!(ok, "skiff {args:?}: {out}{err}");
    out
}

/// The pids of the healthy instances of web.
fn healthy_pids(dev: &Dev, project: &std::path::Path) -> Vec<u64> {
    let out = skiff_ok(dev, project, &["ps", "-o", "json"]);
    let ps: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut pids: Vec<u64> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["id"]["service"] == "web" && i["state"] == "healthy")
        .filter_map(|i| i["pid"].as_u64())
        .collect();
    pids.sort_unstable();
    pids
}

fn is_subset(small: &[u64], big: &[u64]) -> bool {
    small.iter().all(|p| big.contains(p))
}

fn share(counts: &BTreeMap<String, usize>, version: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(version).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

#[test]
fn canary_promote_abort_and_blue_green_switch_and_back_under_mixed_load_fail_no_request() {
    let (dev, project, _data) = up_stack(&file("v1", CANARY, 0));
    let p = project.path();
    let load = Load::start(&dev.ingress, 4);
    std::thread::sleep(Duration::from_millis(500));

    // Canary: `up` hands over at the promote gate with 25 % of requests on one new instance.
    let out = up(&dev, p, &file("v2", CANARY, 0));
    assert!(out.contains("skiff rollout promote shop web"), "{out}");
    let status = skiff_ok(&dev, p, &["rollout", "status", "shop"]);
    assert!(
        status.contains("canary") && status.contains("25%"),
        "{status}"
    );
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let counts = load.versions_since(since);
    let v2 = share(&counts, "v2");
    assert!((0.15..=0.35).contains(&v2), "25% to the canary: {counts:?}");
    let status = skiff_ok(&dev, p, &["rollout", "status", "shop", "web"]);
    assert!(
        status.contains("req"),
        "the ingress's figures of both releases: {status}"
    );

    // Promote: the full release, then the old set goes; every answer from v2.
    skiff_ok(&dev, p, &["rollout", "promote", "shop", "web"]);
    wait_for("the canary promoted to 100%", || {
        skiff_ok(&dev, p, &["rollout", "status", "shop", "web"]).contains("done")
    });
    let since = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let counts = load.versions_since(since);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["v2"], "{counts:?}");

    // Abort a canary: every request back to v2 as its instance stops, and a rollback release.
    let v2_pids = healthy_pids(&dev, p);
    assert_eq!(v2_pids.len(), 4, "{v2_pids:?}");
    up(&dev, p, &file("v3", CANARY, 0));
    assert_eq!(
        healthy_pids(&dev, p).len(),
        5,
        "the stable set whole beside the canary"
    );
    skiff_ok(&dev, p, &["rollout", "abort", "shop", "web"]);
    let aborted = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let counts = load.versions_since(aborted + Duration::from_millis(100));
    assert!(
        !counts.contains_key("v3"),
        "no request to the aborted canary: {counts:?}"
    );
    wait_for("the rollback release recorded", || {
        skiff_ok(&dev, p, &["history", "shop"]).lines().count() >= 5
    });
    wait_for("the canary gone", || healthy_pids(&dev, p) == v2_pids);

    // Blue-green: a whole new set beside the old, switched at once when ready.
    let out = up(&dev, p, &file("v4", BLUE_GREEN, 0));
    assert!(out.contains("healthy"), "{out}");
    let switched = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let counts = load.versions_since(switched);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["v4"],
        "switched: {counts:?}"
    );
    assert!(
        is_subset(&v2_pids, &healthy_pids(&dev, p)),
        "the previous set stays warm"
    );
    // And back: the warm set takes every request again, its instances the same.
    skiff_ok(&dev, p, &["rollback", "shop", "-d"]);
    let back = Instant::now();
    wait_for("back on v2", || {
        let c = load.versions_since(Instant::now() - Duration::from_millis(100));
        c.keys().collect::<Vec<_>>() == ["v2"]
    });
    eprintln!("switched back in {:?}", back.elapsed());
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "switching back is instant"
    );
    wait_for("the blue-green set gone", || {
        healthy_pids(&dev, p) == v2_pids
    });

    let (ok, failures) = load.finish();
    eprintln!("{ok} requests, {} failed", failures.len());
    assert!(ok > 2_000, "only {ok} requests went through");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_canary_judged_by_the_ingress_aborts_itself_when_its_release_answers_errors() {
    let (dev, project, _data) = up_stack(&file("v1", JUDGED, 0));
    let p = project.path();
    let load = Load::start(&dev.ingress, 2);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(p.join("compose.yaml"), file("v2", JUDGED, 50)).unwrap();
    let (ok, out, err) = skiff_in(&dev, p, &[], &["up", "--timeout", "60"]);
    assert!(!ok, "up fails with the rollout: {out}{err}");
    assert!(err.contains("error rate over 5.00%"), "says why: {err}");
    let (_, events, _) = skiff_in(&dev, p, &[], &["events"]);
    assert!(events.contains("aborted"), "{events}");
    // Back on v1 (a rollback release), and the errors stopped with the canary.
    wait_for("every answer from v1", || {
        let c = load.versions_since(Instant::now() - Duration::from_millis(200));
        c.keys().collect::<Vec<_>>() == ["v1"]
    });
    let settled = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (_, failures) = load.finish();
    let _ = settled;
    assert!(
        failures.iter().all(|f| f.starts_with("500")),
        "only the bad release's own answers failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    let status = skiff_ok(&dev, p, &["rollout", "status", "shop", "web"]);
    assert!(
        status.contains("failed") || status.contains("rollback"),
        "{status}"
    );
}

#[test]
fn a_restart_rolls_one_instance_at_a_time_under_mixed_load_without_a_failed_request() {
    let (dev, project, _data) = up_stack(&file("v1", "{strategy: rolling}", 0));
    let p = project.path();
    let before = healthy_pids(&dev, p);
    let load = Load::start(&dev.ingress, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = skiff_ok(&dev, p, &["restart", "web"]);
    assert!(out.contains("web"), "{out}");
    let after = healthy_pids(&dev, p);
    assert_eq!(after.len(), 4);
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "every instance replaced"
    );
    let (_, events, _) = skiff_in(&dev, p, &[], &["events"]);
    assert!(events.contains("restarting 4 instance(s)"), "{events}");
    let (ok, failures) = load.finish();
    assert!(ok > 500, "only {ok} requests went through");
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn a_canary_resumes_its_step_and_weight_after_a_kill_9_of_the_server() {
    let (dev, project, data) = up_stack(&file("v1", CANARY, 0));
    let p = project.path();
    up(&dev, p, &file("v2", CANARY, 0));
    let before = pids(&dev);
    assert_eq!(before.len(), 5, "four old and one canary");
    let mut dev = dev;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    drop(dev);
    let dev = start_dev(data.path());
    wait_for("re-adoption", || pids(&dev) == before);
    // Re-adopted instances are probed again before they take traffic.
    wait_for("the adopted instances ready again", || {
        healthy_pids(&dev, p).len() == 5
            && HttpConn::connect(&dev.ingress)
                .and_then(|mut c| c.get(WEB, "/"))
                .is_ok_and(|(code, _)| code == 200)
    });
    let status = skiff_ok(&dev, p, &["rollout", "status", "shop", "web"]);
    assert!(
        status.contains("running") && status.contains("25%") && status.contains("1/2"),
        "{status}"
    );
    let load = Load::start(&dev.ingress, 4);
    std::thread::sleep(Duration::from_millis(300));
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let counts = load.versions_since(since);
    let v2 = share(&counts, "v2");
    assert!(
        (0.15..=0.35).contains(&v2),
        "still 25% to the canary: {counts:?}"
    );
    skiff_ok(&dev, p, &["rollout", "promote", "shop", "web"]);
    wait_for("the canary promoted to 100%", || {
        skiff_ok(&dev, p, &["rollout", "status", "shop", "web"]).contains("done")
    });
    let (ok, failures) = load.finish();
    assert!(ok > 500, "only {ok} requests went through");
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(pids(&dev).len(), 4);
}

#[test]
fn scaling_down_after_a_start_first_rollout_waits_by_count_not_by_index() {
    let stack = |version: &str| {
        file(version, "{strategy: rolling}", 0).replace(
            "      replicas: 4\n",
            "      replicas: 4\n      update_config: {order: start-first, parallelism: 2, monitor: 0s}\n",
        )
    };
    let (dev, project, _data) = up_stack(&stack("v1"));
    let p = project.path();
    up(&dev, p, &stack("v2"));
    let started = Instant::now();
    let out = skiff_ok(&dev, p, &["scale", "web=2", "--timeout", "20"]);
    assert!(out.contains("scaled to 2"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(healthy_pids(&dev, p).len(), 2);
}
