//! End to end with the real `dig` (Debian's dnsutils) against `skiff dev`: answers come from
//! the live catalog and change when an instance is killed, made unhealthy, or scaled.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const STACK: &str = "name: shop
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    deploy: {replicas: 3}
    x-skiff:
      readiness:
        http: {path: /health}
        interval: 200ms
        timeout: 500ms
        retries: 2
  worker:
    command: [sleep, '300']
    x-skiff:
      liveness: {test: [CMD, 'false'], interval: 300ms, retries: 2}
      keep_failed: true
";

fn dig(dev: &Dev, args: &[&str]) -> String {
    dig_with(dev, "+short", args)
}

fn dig_with(dev: &Dev, style: &str, args: &[&str]) -> String {
    let (host, port) = dev.dns.rsplit_once(':').unwrap();
    let out = Command::new("dig")
        .arg(format!("@{host}"))
        .args(["-p", port, style, "+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("dig (apt-get install dnsutils; scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SRV ports of `web`, sorted.
fn srv_ports(dev: &Dev) -> Vec<u16> {
    let mut ports: Vec<u16> = dig(dev, &["SRV", "web.shop.default.skiff"])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect();
    ports.sort_unstable();
    ports
}

fn host_port(dev: &Dev, project: &std::path::Path, index: u64) -> u16 {
    let (_, out, _) = skiff_in(dev, project, &[], &["ps", "-o", "json"]);
    let ps: serde_json::Value = serde_json::from_str(&out).unwrap();
    ps.as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"]["service"] == "web" && i["id"]["index"] == index)
        .and_then(|i| i["ports"]["http"].as_u64())
        .unwrap() as u16
}

#[test]
fn dig_sees_ready_instances_and_answers_follow_kills_health_and_scaling() {
    let (dev, project, _data) = up_stack(STACK);

    // A and SRV of every ready instance; SRV targets resolve; unknown names are NXDOMAIN.
    assert_eq!(dig(&dev, &["web.shop.default.skiff"]).trim(), "127.0.0.1");
    let ports: Vec<u16> = (1..=3)
        .map(|i| host_port(&dev, project.path(), i))
        .collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(srv_ports(&dev), sorted);
    let named = dig(&dev, &["SRV", "_http._tcp.web.shop.default.skiff"]);
    assert_eq!(named.lines().count(), 3, "{named}");
    assert_eq!(
        dig(&dev, &["web-2.web.shop.default.skiff"]).trim(),
        "127.0.0.1"
    );
    let nx = dig_with(&dev, "+comments", &["nope.shop.default.skiff"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let tcp = dig(&dev, &["+tcp", "SRV", "web.shop.default.skiff"]);
    assert_eq!(tcp.lines().count(), 3, "TCP answers too: {tcp}");

    // Killed: gone from the answers at once (the exit is seen, not probed), back after the
    // restart.
    let pid = instance_pid(&dev, "web", 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("web-1 gone from SRV", || {
        !srv_ports(&dev).contains(&ports[0])
    });
    wait_for("web-1 back in SRV", || srv_ports(&dev).len() == 3);

    // Unhealthy: out of the answers while it fails, in again when it passes.
    let port2 = host_port(&dev, project.path(), 2);
    let (code, _) = http(&format!("127.0.0.1:{port2}"), "POST", "/health/fail", "");
    assert_eq!(code, 200);
    wait_for("web-2 gone while unhealthy", || {
        !srv_ports(&dev).contains(&port2)
    });
    let (_, out, _) = skiff_in(&dev, project.path(), &[], &["ps"]);
    assert!(out.contains("unhealthy"), "{out}");
    http(&format!("127.0.0.1:{port2}"), "POST", "/health/ok", "");
    wait_for("web-2 back when healthy", || {
        srv_ports(&dev).contains(&port2)
    });

    // Scaled: the answers grow and shrink with the replica count.
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["scale", "web=5"]);
    assert!(ok, "{out}{err}");
    wait_for("5 SRV", || srv_ports(&dev).len() == 5);
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["scale", "web=2"]);
    assert!(ok, "{out}{err}");
    wait_for("2 SRV", || srv_ports(&dev).len() == 2);

    // keep_failed: the failed worker stays running, out of traffic, saying why.
    wait_for("worker kept after failing liveness", || {
        let (_, out, _) = skiff_in(&dev, project.path(), &[], &["ps"]);
        out.contains("kept running for inspection")
    });
    let worker = instance_pid(&dev, "worker", 1);
    assert!(alive(worker));

    // skiff dns answers the same without DNS.
    let (ok, out, err) = skiff(&dev, &["dns", "web.shop.default.skiff", "SRV"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" SRV ")).count(),
        2,
        "{out}"
    );
    let (ok, out, _) = skiff(&dev, &["dns", "api.shop.default.skiff"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
}

#[test]
fn the_catalog_api_blocks_until_the_next_change() {
    let (dev, _project, _data) = up_stack(STACK);
    let addr = dev.addr.trim_start_matches("http://").to_string();
    let (code, body) = http(&addr, "GET", "/v1/catalog?service=web", "");
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let index = view["index"].as_u64().unwrap();
    assert_eq!(
        view["services"][0]["endpoints"].as_array().unwrap().len(),
        3
    );

    // Nothing changes: the query returns at its deadline with the same index.
    let started = Instant::now();
    let (_, body) = http(
        &addr,
        "GET",
        &format!("/v1/catalog?service=web&index={index}&wait=300ms"),
        "",
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let same: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(same["index"].as_u64(), Some(index));

    // A kill wakes a waiting query with the instance gone.
    let pid = instance_pid(&dev, "web", 3);
    let waiter = std::thread::spawn(move || {
        http(
            &addr,
            "GET",
            &format!("/v1/catalog?service=web&index={index}&wait=30s"),
            "",
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (_, body) = waiter.join().unwrap();
    let next: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(next["index"].as_u64() > Some(index), "{next}");
    let indexes: Vec<u64> = next["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, vec![1, 2], "{next}");

    let (code, body) = http(
        dev.addr.trim_start_matches("http://"),
        "GET",
        "/v1/catalog?wait=soon&index=0",
        "",
    );
    assert_eq!(code, 400, "{body}");
}

#[test]
fn service_healthy_dependents_wait_for_an_x_skiff_http_readiness_to_pass() {
    ensure_demo_built();
    // db answers /ready with 503 until told otherwise; api depends on it being healthy.
    let project = project(
        "name: gate
x-skiff: {driver: process}
services:
  db:
    command: [skiff-demo, --name, db, --fail-health]
    ports: [{name: http, target: 8080}]
    x-skiff:
      readiness: {http: {path: /health, status: 200}, interval: 200ms, retries: 1}
  api:
    command: [sleep, '300']
    depends_on: {db: {condition: service_healthy}}
",
    );
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up", "--detach"]);
    assert!(ok, "{out}{err}");
    let state = |service: &str| -> Option<String> {
        let (_, out, _) = skiff_in(&dev, project.path(), &[], &["ps", "-o", "json"]);
        let ps: serde_json::Value = serde_json::from_str(&out).ok()?;
        ps.as_array()?
            .iter()
            .find(|i| i["id"]["service"] == service)
            .and_then(|i| i["state"].as_str().map(str::to_string))
    };
    let db_port = || -> Option<u16> {
        let (_, out, _) = skiff_in(&dev, project.path(), &[], &["ps", "-o", "json"]);
        let ps: serde_json::Value = serde_json::from_str(&out).ok()?;
        ps.as_array()?
            .iter()
            .find(|i| i["id"]["service"] == "db")
            .and_then(|i| i["ports"]["http"].as_u64())
            .map(|p| p as u16)
    };
    wait_for("db started", || db_port().is_some());
    // Well past several probes: api has not started.
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(state("db").as_deref(), Some("healthy"));
    assert!(
        matches!(state("api").as_deref(), None | Some("pending")),
        "api must wait for db's readiness: {:?}",
        state("api")
    );
    assert!(
        !dig(&dev, &["SRV", "db.gate.default.skiff"]).contains(' '),
        "not ready: not in DNS"
    );

    // db passes its readiness: it enters DNS and api starts.
    let port = db_port().expect("db has its port");
    let (code, _) = http(&format!("127.0.0.1:{port}"), "POST", "/health/ok", "");
    assert_eq!(code, 200);
    wait_for("api started once db is ready", || {
        state("api").as_deref() == Some("healthy")
    });
    assert_eq!(state("db").as_deref(), Some("healthy"));
    assert!(dig(&dev, &["SRV", "db.gate.default.skiff"]).contains(&port.to_string()));
}
