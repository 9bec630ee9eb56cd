//! The proof, bounded for CI: releases of 10 replicas under wrk through the ingress
//! with the shared mixed load (`bench/mixed.lua`: 64 keep-alive connections, every 5th
//! request a POST with a body, every socket error and status >= 400 failed), about 20,000
//! requests per scenario: a rolling update (start-first, `parallelism: 20%`) and a
//! `skiff rollback`, 0 failed requests each. `bench/releases.sh` runs the same with 100,000.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const STACK: &str = "name: rel
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    environment: {DEMO_VERSION: '@VERSION@'}
    deploy:
      replicas: 10
      update_config: {parallelism: 20%, order: start-first, monitor: 500ms}
      rollback_config: {parallelism: 20%, order: start-first}
    stop_grace_period: 5s
    x-skiff:
      readiness: {http: {path: /health}, interval: 500ms, retries: 3}
";

const HOST: &str = "web.rel.default.localhost";
/// Requests per scenario the load is sized for.
const REQUESTS: f64 = 20_000.0;

/// wrk with the mixed load through `ingress` for `secs`.
fn load(ingress: &str, secs: u64, script: &std::path::Path) -> std::thread::JoinHandle<String> {
    let url = format!("http://{ingress}/");
    let script = script.to_path_buf();
    std::thread::spawn(move || {
        let out = Command::new("wrk")
            .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-s"])
            .arg(&script)
            .args(["-H", &format!("Host: {HOST}"), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    })
}

#[test]
fn a_rolling_update_and_a_rollback_of_10_replicas_under_mixed_load_fail_no_request() {
    if !have_wrk() {
        return;
    }
    let (dev, project, _data) = up_stack(&STACK.replace("@VERSION@", "v1"));
    let script = project.path().join("mixed.lua");
    std::fs::write(&script, MIXED_LUA).unwrap();
    // How long ~20,000 requests take here (a debug build, a busy machine): a short probe.
    let probe = Mixed::parse(&load(&dev.ingress, 1, &script).join().unwrap()).unwrap();
    assert_eq!(probe.failed, 0, "{probe:?}");
    let secs = ((REQUESTS * 1.3 / probe.rps()).ceil() as u64).clamp(5, 25);
    eprintln!("probe: {:.0} rps; {secs} s per scenario", probe.rps());

    let scenarios: [(&str, &str, &[&str]); 2] = [
        ("rolling update", "v2", &["up", "--timeout", "60"]),
        ("rollback", "v1", &["rollback", "rel", "--timeout", "60"]),
    ];
    for (what, version, command) in scenarios {
        std::fs::write(
            project.path().join("compose.yaml"),
            STACK.replace("@VERSION@", "v2"),
        )
        .unwrap();
        let wrk = load(&dev.ingress, secs, &script);
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let (ok, out, err) = skiff_in(&dev, project.path(), &[], command);
        let took = started.elapsed();
        assert!(ok, "{what}: {out}{err}");
        let out = wrk.join().unwrap();
        let m = Mixed::parse(&out).unwrap_or_else(|| panic!("{what}: wrk: {out}"));
        eprintln!(
            "{what}: {} requests, {} failed, p99 {} ms, the change took {took:?}",
            m.requests, m.failed, m.p99_ms
        );
        assert_eq!(
            m.failed, 0,
            "{what}: failed requests under the change:\n{out}"
        );
        assert!(
            took + Duration::from_millis(500) < Duration::from_secs(secs),
            "{what}: the change ({took:?}) outlasted the load ({secs} s)"
        );
        assert!(
            m.requests as f64 >= REQUESTS / 2.0,
            "{what}: only {} requests",
            m.requests
        );
        // Every answer comes from the new release now.
        let mut conn = HttpConn::connect(&dev.ingress).unwrap();
        for _ in 0..30 {
            let (code, body) = conn.get(HOST, "/").unwrap();
            assert!(
                code == 200 && body.contains(version),
                "{what}: {code} {body}"
            );
        }
    }
    let (ok, out, _) = skiff_in(&dev, project.path(), &[], &["history", "rel"]);
    assert!(ok && out.lines().count() == 4, "3 releases: {out}");
}
