//! The bring-up of a whole stack by `skiff up`: batches in dependency order gated on health
//! (and on one-shots that complete), a failure reported at once with its cause, its last log
//! lines and health check output (the instance kept running for `skiff exec`), a resume that
//! leaves healthy services alone, and the critical path — all from what the server recorded.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The stack's events as the server recorded them.
fn events(dev: &Dev, stack: &str) -> Vec<Value> {
    let (code, body) = http(
        &dev.addr,
        "GET",
        &format!("/v1/events?env=default&stack={stack}&limit=10000"),
        "",
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Time of the first event of `kind` of an instance of `service`.
fn time_of(events: &[Value], service: &str, kind: &str) -> Option<u64> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter(|e| {
            e["instance"]
                .as_str()
                .is_some_and(|i| i.rsplit_once('-').is_some_and(|(s, _)| s == service))
        })
        .map(|e| e["time_ms"].as_u64().unwrap())
        .min()
}

/// service → (state, pid) of each instance of the stack.
fn instances(dev: &Dev, stack: &str) -> BTreeMap<String, (String, u64)> {
    let (code, body) = http(
        &dev.addr,
        "GET",
        &format!("/v1/instances?env=default&stack={stack}"),
        "",
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"]["service"].as_str().unwrap().to_string(),
                (
                    i["state"].as_str().unwrap().to_string(),
                    i["pid"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// `skiff up --timeout 90` in `dir`, which must fail well before its timeout; its stderr.
fn up_failing_fast(dev: &Dev, dir: &std::path::Path) -> String {
    let started = Instant::now();
    let (ok, out, err) = skiff_in(dev, dir, &[], &["up", "--timeout", "90"]);
    assert!(!ok, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed after {:?}",
        started.elapsed()
    );
    err
}

const HEALTH: &str = "healthcheck: {test: [CMD, skiff-demo, probe, /health], interval: 1s, \
                      timeout: 1s, retries: 3, start_period: 10s}";

/// Six services, three batches: a and b; c (a) and d (a, b); e (c) and f (c, d).
fn graph() -> String {
    let svc = |name: &str, delay: &str, deps: &[&str]| {
        let mut s = format!(
            "  {name}:\n    command: [skiff-demo, --name, {name}, --start-delay, {delay}]\n    expose: [\"8080\"]\n    {HEALTH}\n"
        );
        if !deps.is_empty() {
            s.push_str("    depends_on:\n");
            for d in deps {
                s.push_str(&format!("      {d}: {{condition: service_healthy}}\n"));
            }
        }
        s
    };
    format!(
        "name: order\nx-skiff: {{driver: process}}\nservices:\n{}{}{}{}{}{}",
        svc("a", "0ms", &[]),
        svc("b", "300ms", &[]),
        svc("c", "0ms", &["a"]),
        svc("d", "100ms", &["a", "b"]),
        svc("e", "0ms", &["c"]),
        svc("f", "0ms", &["c", "d"]),
    )
}

#[test]
fn a_graph_comes_up_in_dependency_order_and_up_reports_its_critical_path() {
    ensure_demo_built();
    let project = project(&graph());
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(report["healthy"], 6, "{report}");

    // Every dependent started after each of its dependencies was ready (server times).
    let ev = events(&dev, "order");
    let deps: &[(&str, &[&str])] = &[
        ("c", &["a"]),
        ("d", &["a", "b"]),
        ("e", &["c"]),
        ("f", &["c", "d"]),
    ];
    for (svc, on) in deps {
        let started = time_of(&ev, svc, "started").expect("started event");
        for d in *on {
            let ready = time_of(&ev, d, "ready").expect("ready event");
            assert!(
                started >= ready,
                "{svc} started at {started}, before {d} was ready at {ready}"
            );
        }
    }

    // The critical path: three batches, each held by the last ready service of it (b and d
    // start slowly), and their times add up to the total.
    let cp = &report["critical_path"];
    let batches = cp["batches"].as_array().unwrap();
    let names: Vec<Vec<&str>> = batches
        .iter()
        .map(|b| {
            b["services"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(names, vec![vec!["a", "b"], vec!["c", "d"], vec!["e", "f"]]);
    let ready_of = |s: &str| time_of(&ev, s, "ready").unwrap();
    for b in batches {
        let held = b["held_by"]["service"].as_str().unwrap();
        let latest = b["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| ready_of(s.as_str().unwrap()))
            .max()
            .unwrap();
        assert_eq!(ready_of(held), latest, "{b}");
        assert_eq!(b["held_by"]["ready_ms"].as_u64(), Some(latest), "{b}");
    }
    assert_eq!(batches[0]["held_by"]["service"], "b", "{cp}");
    let sum: u64 = batches.iter().map(|b| b["ms"].as_u64().unwrap()).sum();
    assert_eq!(sum, cp["total_ms"].as_u64().unwrap(), "{cp}");
    // b waits 300 ms before it listens: the first batch cannot be shorter.
    assert!(batches[0]["ms"].as_u64().unwrap() >= 300, "{cp}");
}

#[test]
fn a_one_shot_that_exits_0_gates_its_dependent_and_one_that_exits_1_fails_the_up_with_its_logs() {
    ensure_demo_built();
    let stack = |exit: u32| {
        format!(
            "name: migrate\nx-skiff: {{driver: process}}\nservices:\n  migrate:\n    command: [sh, -c, 'echo applying 042_add_index; sleep 0.3; echo duplicate key in orders >&2; exit {exit}']\n    restart: \"no\"\n  api:\n    command: [skiff-demo, --name, api]\n    expose: [\"8080\"]\n    depends_on: {{migrate: {{condition: service_completed_successfully}}}}\n"
        )
    };
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());

    let good = project(&stack(0));
    let (ok, out, err) = skiff_in(&dev, good.path(), &[], &["up", "--timeout", "30"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("critical path"), "{out}");
    let ev = events(&dev, "migrate");
    let completed = time_of(&ev, "migrate", "completed").expect("completed event");
    let api = time_of(&ev, "api", "started").expect("api started");
    assert!(
        api >= completed,
        "api started {api} before migrate completed {completed}"
    );
    let (ok, _, err) = skiff(&dev, &["down", "migrate", "-n", "default"]);
    assert!(ok, "{err}");

    let bad = project(&stack(1));
    let err = up_failing_fast(&dev, bad.path());
    assert!(
        err.contains("service migrate failed the bring-up: migrate-1 ended: exited with code 1"),
        "{err}"
    );
    assert!(
        err.contains("applying 042_add_index") && err.contains("duplicate key in orders"),
        "its log lines: {err}"
    );
    assert!(err.contains("not started because of it: api"), "{err}");
    assert!(!instances(&dev, "migrate").contains_key("api"));
}

/// db is healthy; cache's check never passes; api needs both; web needs api.
fn stuck(cache_check: &str) -> String {
    format!(
        "name: shop
x-skiff: {{driver: process}}
services:
  db:
    command: [skiff-demo, --name, db]
    expose: [\"8080\"]
    {HEALTH}
  cache:
    command: [sh, -c, 'echo cache warming up; echo loaded 0 keys >&2; exec skiff-demo --name cache']
    expose: [\"8080\"]
    healthcheck: {{test: {cache_check}, interval: 300ms, timeout: 1s, retries: 2, start_period: 500ms}}
  api:
    command: [skiff-demo, --name, api]
    expose: [\"8080\"]
    {HEALTH}
    depends_on: {{db: {{condition: service_healthy}}, cache: {{condition: service_healthy}}}}
  web:
    command: [skiff-demo, --name, web]
    expose: [\"8080\"]
    depends_on: {{api: {{condition: service_healthy}}}}
"
    )
}

#[test]
fn a_check_that_never_passes_fails_the_up_fast_keeps_the_instance_and_a_fixed_up_resumes() {
    ensure_demo_built();
    let broken = "[CMD-SHELL, 'echo checking cache; echo redis: connection refused >&2; exit 1']";
    let project = project(&stuck(broken));
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());

    // start_period 500 ms + 2 retries x 300 ms, not the 90 s timeout.
    let err = up_failing_fast(&dev, project.path());
    assert!(
        err.contains("service cache failed the bring-up: cache-1 never became ready"),
        "{err}"
    );
    assert!(
        err.contains("checking cache") && err.contains("redis: connection refused"),
        "its health check output: {err}"
    );
    assert!(
        err.contains("cache warming up") && err.contains("loaded 0 keys"),
        "its log lines: {err}"
    );
    assert!(err.contains("not started because of it: api, web"), "{err}");

    // Kept running out of traffic, for exec and logs; its dependents never started.
    let running = instances(&dev, "shop");
    assert_eq!(running["cache"].0, "unhealthy", "{running:?}");
    assert_eq!(running["db"].0, "healthy", "{running:?}");
    assert!(
        !running.contains_key("api") && !running.contains_key("web"),
        "{running:?}"
    );
    let (ok, out, err) = skiff(&dev, &["exec", "cache", "--", "echo", "inside"]);
    assert!(ok && out.contains("inside"), "{out}{err}");
    let (ok, out, err) = skiff(&dev, &["logs", "cache", "--stack", "shop"]);
    assert!(ok && out.contains("cache warming up"), "{out}{err}");

    // Fixed: db is left alone (same pid), cache is replaced, api and web come up.
    let db_pid = running["db"].1;
    let cache_pid = running["cache"].1;
    std::fs::write(
        project.path().join("compose.yaml"),
        stuck("[CMD, skiff-demo, probe, /health]"),
    )
    .unwrap();
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up", "--timeout", "60"]);
    assert!(ok, "{out}{err}");
    let after = instances(&dev, "shop");
    assert_eq!(after["db"].1, db_pid, "db was touched: {after:?}");
    assert_ne!(after["cache"].1, cache_pid, "cache was not replaced");
    assert!(after.values().all(|(s, _)| s == "healthy"), "{after:?}");
    // The resumed bring-up's critical path: db kept, cache then api then web started.
    assert!(out.contains("critical path"), "{out}");
    assert!(
        out.contains("held longest by cache") && out.contains("kept: db"),
        "{out}"
    );
    assert!(out.contains("held longest by web"), "{out}");
}
