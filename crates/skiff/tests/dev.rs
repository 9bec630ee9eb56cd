//! End to end, as a user runs it: `skiff dev`, then `skiff up/ps/down` against it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn up_runs_the_example_stack_and_it_survives_kill_9_of_the_server() {
    ensure_demo_built();
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());

    let (ok, out, err) = skiff(&dev, &["up", "-f", "compose.yaml"]);
    assert!(ok, "up failed: {out}\n{err}");
    assert!(out.contains("release 1 recorded"), "{out}");
    assert!(out.contains("6 instances healthy"), "{out}");
    let (_, ps, _) = skiff(&dev, &["ps"]);
    assert_eq!(
        ps.lines().filter(|l| l.contains(" healthy ")).count(),
        6,
        "{ps}"
    );
    let before = pids(&dev);
    assert_eq!(before.len(), 6);

    // kill -9 the server: workloads keep running, a new server adopts them.
    let mut dev = dev;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    assert!(
        before.iter().all(|p| alive(*p)),
        "workloads died with the server"
    );
    drop(dev);
    let dev = start_dev(data.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids(&dev) != before {
        assert!(
            Instant::now() < deadline,
            "not re-adopted: {:?} vs {before:?}",
            pids(&dev)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Logs: history, --since, and follow picking up a line written after it started.
    let (ok, logs, err) = skiff(&dev, &["logs", "api"]);
    assert!(ok, "{err}");
    assert!(
        logs.contains("api-1 | api 0.1.0 listening on 127.0.0.1:"),
        "{logs}"
    );
    assert!(logs.contains("api-2 | api 0.1.0 listening on"), "{logs}");
    let (_, later, _) = skiff(&dev, &["logs", "api", "--since", "0s"]);
    assert!(
        !later.contains("listening on"),
        "--since 0s shows only new lines: {later}"
    );
    let mut follow = Command::new(SKIFF)
        .args(["logs", "web", "--index", "1", "-f"])
        .env("SKIFF_ADDR", &dev.addr)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(
        lines
            .next()
            .unwrap()
            .unwrap()
            .contains("web-1 | web 0.1.0 listening on")
    );
    let (ok, out, err) = skiff(&dev, &["kill", "-s", "HUP", "web", "--index", "1"]);
    assert!(ok, "{out}{err}");
    assert_eq!(lines.next().unwrap().unwrap(), "web-1 | reloaded");
    // exec runs with the instance's environment.
    let (ok, out, err) = skiff(
        &dev,
        &["exec", "api", "--", "sh", "-c", "echo $SKIFF_INSTANCE"],
    );
    assert!(ok && out.trim() == "api-1", "{out}{err}");
    follow.kill().unwrap();
    follow.wait().unwrap();

    // Scale is a new release: up to 4, down to 1, both in the history; web-1 is kept.
    let kept = instance_pid(&dev, "web", 1);
    let (ok, out, err) = skiff(&dev, &["scale", "web=4"]);
    assert!(
        ok && out.contains("release 2: web scaled to 4"),
        "{out}{err}"
    );
    assert_eq!(pids(&dev).len(), 8);
    let (ok, out, err) = skiff(&dev, &["scale", "web=1"]);
    assert!(
        ok && out.contains("release 3: web scaled to 1"),
        "{out}{err}"
    );
    assert_eq!(pids(&dev).len(), 5);
    assert_eq!(
        instance_pid(&dev, "web", 1),
        kept,
        "scaling restarted an instance that stays"
    );
    let (ok, _, err) = skiff(&dev, &["scale", "nope=2"]);
    assert!(!ok && err.contains("no running stack"), "{err}");
    let (_, history, _) = skiff(&dev, &["history", "shop"]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with('3') && l.contains("current")),
        "{history}"
    );

    // status: the spec in brief, and each instance with its cgroup's usage and limit.
    let (ok, out, err) = skiff(&dev, &["status", "api", "-o", "json"]);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["instances"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(
        st["instances"][0]["stats"]["memory_limit_bytes"],
        128 << 20,
        "{out}"
    );
    let (_, table, _) = skiff(&dev, &["status", "api"]);
    assert!(
        table.contains("2/2 healthy") && table.contains("MEMORY"),
        "{table}"
    );

    // stop holds across a kill -9 of the server; start brings the service back.
    let web1 = instance_pid(&dev, "web", 1);
    let (ok, out, err) = skiff(&dev, &["stop", "web"]);
    assert!(ok && out.contains("web: stopped"), "{out}{err}");
    assert!(!alive(web1));
    let mut dev = dev;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    drop(dev);
    let dev = start_dev(data.path());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pids(&dev).len(), 4, "a stopped service came back");
    let (_, table, _) = skiff(&dev, &["status", "web"]);
    assert!(
        table.contains("stopped (skiff start web runs it)"),
        "{table}"
    );
    let (ok, out, err) = skiff(&dev, &["start", "web"]);
    assert!(ok && out.contains("web: 1 instances healthy"), "{out}{err}");

    // restart replaces every instance of the service, and only those.
    let api = [instance_pid(&dev, "api", 1), instance_pid(&dev, "api", 2)];
    let db = instance_pid(&dev, "db", 1);
    let (ok, out, err) = skiff(&dev, &["restart", "api"]);
    assert!(ok && out.contains("api: 2 instances healthy"), "{out}{err}");
    assert!(
        api.iter().all(|p| !alive(*p)),
        "old api instances still run"
    );
    assert!(!api.contains(&instance_pid(&dev, "api", 1)));
    assert_eq!(instance_pid(&dev, "db", 1), db, "restart api touched db");
    let (ok, _, err) = skiff(&dev, &["restart", "nope"]);
    assert!(!ok && err.contains("no running stack"), "{err}");

    // Bad requests are 4xx with a stable code.
    let (code, body) = http(
        &dev.addr,
        "POST",
        "/v1/envs/default/stacks/shop/releases",
        "{not json",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"code\":\"invalid_body\""), "{body}");
    let (code, body) = http(&dev.addr, "DELETE", "/v1/envs/default/stacks/nope", "");
    assert_eq!(
        (code, body.contains("stack_not_found")),
        (404, true),
        "{body}"
    );
    let (code, body) = http(&dev.addr, "DELETE", "/v1/envs/Bad/stacks/x", "");
    assert_eq!((code, body.contains("invalid_name")), (400, true), "{body}");
    let (code, body) = http(
        &dev.addr,
        "POST",
        "/v1/envs/default/stacks/shop/services/web/explode",
        "",
    );
    assert_eq!((code, body.contains("not_found")), (404, true), "{body}");
    let (code, body) = http(&dev.addr, "GET", "/v1/events?limit=lots", "");
    assert_eq!(
        (code, body.contains("\"code\":\"invalid_request\"")),
        (400, true),
        "{body}"
    );
    let (code, body) = http(
        &dev.addr,
        "POST",
        "/v1/envs/default/stacks/x/releases",
        r#"{"spec":{"services":{"web":{}},"batches":[]}}"#,
    );
    assert_eq!(code, 422, "an incomplete service spec: {body}");
    // A service name is a directory and cgroup name: no path tricks.
    let evil = serde_json::json!({"spec": {
        "services": {"../../etc": skiff_model::ServiceSpec::default()},
        "batches": [],
    }});
    let (code, body) = http(
        &dev.addr,
        "POST",
        "/v1/envs/default/stacks/x/releases",
        &evil.to_string(),
    );
    assert_eq!((code, body.contains("invalid_spec")), (400, true), "{body}");
    let (code, body) = http(&dev.addr, "GET", "/openapi.json", "");
    assert_eq!((code, body.contains("\"openapi\"")), (200, true));

    // down stops everything; the history stays.
    let (ok, out, err) = skiff(&dev, &["down", "shop"]);
    assert!(ok, "{out}{err}");
    assert!(
        before.iter().all(|p| !alive(*p)),
        "instances left after down"
    );

    // up again, then SIGTERM: the server stops every instance and exits cleanly.
    let (ok, out, _) = skiff(&dev, &["up", "-f", "compose.yaml"]);
    assert!(ok && out.contains("release 4 recorded"), "{out}");
    let again = pids(&dev);
    let mut dev = dev;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(dev.child.wait().unwrap().success());
    assert!(
        again.iter().all(|p| !alive(*p)),
        "instances left after SIGTERM"
    );
}

#[test]
fn up_without_a_server_says_how_to_start_one() {
    let out = Command::new(SKIFF)
        .args(["up", "-f", "compose.yaml"])
        .env("SKIFF_ADDR", "http://127.0.0.1:1")
        .current_dir(examples())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `skiff dev` running?"));
}

#[test]
fn up_fails_fast_naming_the_cause_when_a_service_cannot_start() {
    let project = project(
        "name: loops\nx-p: &p {driver: process}\nservices:\n  ok:\n    command: [sleep, '100']\n    x-skiff: *p\n  bad:\n    command: [/nonexistent/app, --config, /etc/app.conf]\n    x-skiff: *p\n",
    );
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let started = Instant::now();
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up", "--timeout", "100"]);
    assert!(!ok, "{out}");
    // At its first failed start, not after restarts: the report names the instance and why.
    assert!(
        err.contains("service bad failed the bring-up: bad-1")
            && err.contains("/nonexistent/app: No such file or directory"),
        "{err}"
    );
    assert!(err.contains("skiff logs bad"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited {:?}",
        started.elapsed()
    );
}

#[test]
fn status_shows_the_cpu_in_use_held_to_the_quota() {
    let project = project(
        "name: busy\nservices:\n  spin:\n    command: [sh, -c, 'while :; do :; done']\n    cpus: 0.5\n    x-skiff: {driver: process}\n",
    );
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up"]);
    assert!(ok, "{out}{err}");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out, err) = skiff(&dev, &["status", "spin", "-o", "json"]);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &st["instances"][0]["stats"];
    let millis = stats["cpu_millis"].as_u64().expect("cpu in use");
    // Half a CPU at most (a little slack for the sample's edges); well above idle.
    assert!((100..=650).contains(&millis), "{stats}");
    assert!(stats["cpu_ns"].as_u64() > Some(100_000_000), "{stats}");
    let (_, table, _) = skiff(&dev, &["status", "spin"]);
    assert!(table.contains("CPU") && table.contains('%'), "{table}");
}

/// `{{ service("db").address }}` and `DB_SERVICE_HOST/PORT` name db's stable address: the
/// node listens there and balances over db's ready instances, so the dependent keeps a
/// working address when the instance it first saw dies and a new one takes its place.
#[test]
fn a_dependent_reaches_its_dependency_at_one_stable_address_across_restarts() {
    let (dev, project, _data) = up_stack(
        r#"
name: stable
x-skiff: {driver: process}
services:
  db:
    command: [skiff-demo, --name, db]
    expose: ["5432"]
    restart: always
  api:
    command: [skiff-demo, --name, api]
    expose: ["8080"]
    environment:
      DB_URL: 'http://{{ service("db").address }}'
    depends_on: [db]
"#,
    );
    let ps = |service: &str| -> serde_json::Value {
        let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["ps", "-o", "json"]);
        assert!(ok, "{err}");
        let all: serde_json::Value = serde_json::from_str(&out).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"]["service"] == service)
            .cloned()
            .unwrap_or_default()
    };
    let api = ps("api");
    let port = api["ports"].as_object().unwrap().values().next().unwrap();
    let (code, body) = http(&format!("127.0.0.1:{port}"), "GET", "/env", "");
    assert_eq!(code, 200, "{body}");
    let env: serde_json::Value = serde_json::from_str(&body).unwrap();
    let host = env["DB_SERVICE_HOST"].as_str().unwrap().to_string();
    let ip: std::net::Ipv4Addr = host.parse().unwrap();
    assert!(
        ip.is_loopback() && ip != std::net::Ipv4Addr::LOCALHOST,
        "{body}"
    );
    assert_eq!(env["DB_SERVICE_PORT"], "5432", "{body}");
    assert_eq!(env["DB_URL"], format!("http://{host}:5432"), "{body}");

    let stable = format!("{host}:5432");
    let answers = |addr: &str| {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(s, "GET / HTTP/1.1\r\nHost: db\r\nConnection: close\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200") && buf.contains("\r\n\r\ndb ")
    };
    wait_for("db answers on its stable address", || answers(&stable));
    let first = ps("db")["pid"].as_u64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("db restarted", || {
        let db = ps("db");
        db["pid"].as_u64().is_some_and(|p| p != first) && db["state"] == "healthy"
    });
    // The same address, now in front of the new instance; the dependent was not touched.
    wait_for("the new db answers on the same address", || {
        answers(&stable)
    });
    assert_eq!(ps("api")["pid"], api["pid"]);
}
