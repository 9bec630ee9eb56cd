//! End to end on the Docker driver, as a user runs it: `skiff dev`, then `up` of a stack whose
//! image is built from its compose file, against the real engine (scripts/test starts it).
//! `SKIFF_TEST_NO_DOCKER=1` skips explicitly; a missing engine otherwise fails.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const COMPOSE: &str = r#"
name: dockershop
services:
  db:
    build: .
    command: [--name, db]
    expose: ["8080"]
    mem_limit: 64m
    volumes:
      - data:/data
    tmpfs: /scratch
    healthcheck:
      test: ["CMD-SHELL", "/bin/busybox wget -qO- http://127.0.0.1:8080/health"]
      interval: 1s
      timeout: 2s
      retries: 3
  web:
    build: .
    command: [--name, web]
    expose: ["8080"]
    environment:
      DB_URL: "http://{{ service(\"db\").address }}"
    depends_on:
      db: {condition: service_healthy}
    deploy:
      replicas: 2
volumes:
  data: {}
"#;

/// The id of the one container of `service` in the cluster of `cluster_label`.
fn container_of(cluster_label: &str, service: &str) -> String {
    let out = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label={cluster_label}")])
        .args(["--filter", &format!("label=io.skiff.service={service}")])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 1, "{service}: {ids:?}");
    ids[0].clone()
}

fn docker_exec(id: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", id, "/bin/sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn json(dev: &Dev, dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = skiff_in(dev, dir, &[], args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// `skiff dev` and a project of the demo image's build context with `compose` and `files`;
/// `None` when `SKIFF_TEST_NO_DOCKER` skips the Docker tests.
fn demo_project(
    compose: &str,
    files: &[(&str, &str)],
) -> Option<(Dev, tempfile::TempDir, tempfile::TempDir)> {
    if std::env::var_os("SKIFF_TEST_NO_DOCKER").is_some() {
        return None;
    }
    let project = tempfile::tempdir().unwrap();
    demo_build_context(project.path());
    std::fs::write(project.path().join("compose.yaml"), compose).unwrap();
    for (name, text) in files {
        std::fs::write(project.path().join(name), text).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    Some((dev, project, data))
}

#[test]
fn a_built_stack_runs_as_containers_survives_kill_9_and_down_leaves_nothing() {
    let Some((dev, project, data)) = demo_project(COMPOSE, &[]) else {
        return;
    };
    let cluster = format!("io.skiff.cluster={}", dev.cluster);

    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up"]);
    assert!(ok, "up failed: {out}\n{err}");
    assert!(out.contains("3 instances healthy"), "{out}");
    let running = containers_labelled(&cluster);
    assert_eq!(running.len(), 3, "{running:?}");

    // The published port answers; dependencies are reached by service name on the network.
    let ps = json(&dev, project.path(), &["ps", "-o", "json"]);
    let web1 = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"]["service"] == "web" && i["id"]["index"] == 1)
        .unwrap()
        .clone();
    let port = web1["ports"]["http"]
        .as_u64()
        .or_else(|| web1["ports"].as_object()?.values().next()?.as_u64())
        .unwrap() as u16;
    let (code, body) = http(&format!("127.0.0.1:{port}"), "GET", "/env", "");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"DB_URL\":\"http://db:8080\""), "{body}");
    assert!(body.contains("\"DB_SERVICE_HOST\":\"db\""), "{body}");
    let (_, logs, _) = skiff_in(&dev, project.path(), &[], &["logs", "web"]);
    assert!(logs.contains("web-1 | web 0.1.0 listening on"), "{logs}");
    let status = json(&dev, project.path(), &["status", "db", "-o", "json"]);
    assert_eq!(
        status["instances"][0]["stats"]["memory_limit_bytes"],
        64 << 20,
        "{status}"
    );
    assert!(
        status["instances"][0]["stats"]["cpu_ns"].as_u64() > Some(0)
            && status["instances"][0]["stats"]["cpu_millis"].is_u64(),
        "{status}"
    );

    // A named volume outlives its container; tmpfs is mounted.
    let db = container_of(&cluster, "db");
    docker_exec(&db, "echo kept > /data/file && test -d /scratch");
    let mounts = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Type}}:{{.Name}} {{end}}",
            &db,
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&mounts.stdout).contains("volume:dockershop_data"),
        "{mounts:?}"
    );
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["restart", "db"]);
    assert!(ok, "{out}{err}");
    let db2 = container_of(&cluster, "db");
    assert_ne!(db, db2);
    assert_eq!(docker_exec(&db2, "cat /data/file"), "kept");
    // exec runs inside the container and passes the exit code on.
    let (ok, out, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["exec", "db", "--", "/bin/busybox", "cat", "/data/file"],
    );
    assert!(ok && out.trim() == "kept", "{out}{err}");
    let code = Command::new(SKIFF)
        .args(["exec", "db", "--", "/bin/sh", "-c", "exit 3"])
        .env("SKIFF_ADDR", &dev.addr)
        .status()
        .unwrap();
    assert_eq!(code.code(), Some(3));
    // kill -s HUP reloads every instance without a restart.
    let before = containers_labelled(&cluster);
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["kill", "-s", "HUP", "web"]);
    assert!(ok, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, logs, _) = skiff_in(&dev, project.path(), &[], &["logs", "web"]);
        if logs.contains("web-1 | reloaded") && logs.contains("web-2 | reloaded") {
            break;
        }
        assert!(Instant::now() < deadline, "no reload: {logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(containers_labelled(&cluster), before);

    let ps = json(&dev, project.path(), &["ps", "-o", "json"]);
    let running = containers_labelled(&cluster);

    // kill -9 of the server: containers keep running; the next server adopts them (no
    // duplicates) and removes a container of its cluster that no instance owns.
    let pids: Vec<u64> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect();
    let mut dev = dev;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    let orphan = Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            &cluster,
            "--entrypoint",
            "/bin/busybox",
        ])
        .arg("skiff-default-dockershop-db:r1")
        .args(["sleep", "300"])
        .output()
        .unwrap();
    assert!(orphan.status.success(), "{orphan:?}");
    drop(dev);
    let dev = start_dev(data.path());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = json(&dev, project.path(), &["ps", "-o", "json"]);
        let now_pids: Vec<u64> = now
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["pid"].as_u64())
            .collect();
        let listed = containers_labelled(&cluster);
        if now_pids == pids && listed.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not re-adopted: {now_pids:?} vs {pids:?}; containers {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(containers_labelled(&cluster), running, "same containers");

    // A crashed container is seen at once and replaced by the restart policy.
    let victim = &running[0];
    let killed = Command::new("docker")
        .args(["kill", victim])
        .output()
        .unwrap();
    assert!(killed.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = json(&dev, project.path(), &["ps", "-o", "json"]);
        let all = now.as_array().unwrap();
        let healthy = all.iter().filter(|i| i["state"] == "healthy").count();
        let restarted = all.iter().any(|i| i["restarts"] == 1);
        if healthy == 3 && restarted && containers_labelled(&cluster).len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!containers_labelled(&cluster).contains(victim));

    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["down", "dockershop"]);
    assert!(ok, "{out}{err}");
    assert!(
        containers_labelled(&cluster).is_empty(),
        "containers after down"
    );
    let nets = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label={cluster}"),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nets.stdout).trim().is_empty(),
        "the stack network stays after down"
    );
    // Named volumes outlive down, as with docker compose down (without -v).
    let rm = Command::new("docker")
        .args(["volume", "rm", "dockershop_data"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{rm:?}");
}

#[test]
fn without_an_engine_up_of_a_docker_service_fails_at_once_naming_it() {
    let project = project(
        "name: noengine\nservices:\n  web: {image: nginx}\n  worker:\n    command: [sleep, '100']\n    x-skiff: {driver: process}\n",
    );
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev_with(
        data.path(),
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    let started = Instant::now();
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("services web run on Docker") && err.contains("driver: process"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

const RELOADING: &str = r#"
name: dockercfg
services:
  web:
    build: .
    command: [--name, web, --config-from, SKIFF_CONFIG_APP]
    expose: ["8080"]
    configs:
      - source: app
        target: /etc/web/app.conf
    x-skiff:
      reload: {signal: SIGHUP}
configs:
  app:
    file: ./app.conf
"#;

#[test]
fn a_container_reads_its_config_at_the_target_and_a_reload_reaches_the_same_container() {
    let Some((dev, project, _data)) = demo_project(RELOADING, &[("app.conf", "v1\n")]) else {
        return;
    };
    let cluster = format!("io.skiff.cluster={}", dev.cluster);
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up"]);
    assert!(ok, "up failed: {out}\n{err}");
    let web = container_of(&cluster, "web");
    let ps = json(&dev, project.path(), &["ps", "-o", "json"]);
    let port = ps[0]["ports"]
        .as_object()
        .and_then(|p| p.values().next()?.as_u64())
        .unwrap() as u16;
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(http(&addr, "GET", "/config", ""), (200, "v1\n".to_string()));
    assert_eq!(docker_exec(&web, "cat /etc/web/app.conf"), "v1");
    assert_eq!(
        docker_exec(&web, "echo $SKIFF_CONFIG_APP"),
        "/etc/web/app.conf"
    );

    // The file changes inside the same container (the single-file bind mount keeps its
    // inode: the agent rewrites it in place), and SIGHUP makes the demo read it again.
    std::fs::write(project.path().join("app.conf"), "v2, longer\n").unwrap();
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up"]);
    assert!(ok, "up failed: {out}\n{err}");
    assert_eq!(container_of(&cluster, "web"), web, "the same container");
    assert_eq!(docker_exec(&web, "cat /etc/web/app.conf"), "v2, longer");
    let returned = Instant::now();
    while http(&addr, "GET", "/config", "") != (200, "v2, longer\n".to_string()) {
        assert!(
            returned.elapsed() < Duration::from_secs(1),
            "reloaded within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, events, _) = skiff_in(&dev, project.path(), &[], &["events"]);
    assert!(
        events.contains("web-1") && events.contains("reloaded: configs app; SIGHUP"),
        "{events}"
    );
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["down", "dockercfg"]);
    assert!(ok, "{out}{err}");
    assert!(containers_labelled(&cluster).is_empty());
}
