//! Environments end to end against the real binary: `skiff env` commands, values in `up -n`,
//! isolation of two environments running one stack, clones, and the ttl and idle reaper.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// One stack whose names, hosts and values say which environment they belong to.
const STACK: &str = r#"
name: shop
x-skiff: {driver: process}
services:
  db:
    command: [skiff-demo, --name, "db-${DB_NAME:-none}"]
    expose: ["5432"]
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    environment:
      DB_NAME: "${DB_NAME:-none}"
      COLOR: "${COLOR:-none}"
      DB_URL: 'http://{{ service("db").address }}'
    depends_on: [db]
    x-skiff:
      routes:
        - {host: shop.test, path: /}
"#;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn run(dev: &Dev, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let (ok, out, err) = skiff_in(dev, dir, env, args);
    assert!(ok, "skiff {args:?}: {out}{err}");
    out
}

fn fails(dev: &Dev, dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = skiff_in(dev, dir, &[], args);
    assert!(!ok, "skiff {args:?} should fail: {out}{err}");
    err
}

fn get(dev: &Dev, host: &str, path: &str) -> (u16, String) {
    HttpConn::connect(&dev.ingress)
        .and_then(|mut c| c.get(host, path))
        .unwrap_or_else(|e| panic!("GET http://{host}{path}: {e}"))
}

/// The instances of `env` as `skiff ps -n ENV -o json` lists them.
fn ps(dev: &Dev, dir: &Path, env: &str) -> Vec<serde_json::Value> {
    let out = run(dev, dir, &[], &["ps", "-n", env, "-o", "json"]);
    json(&out).as_array().cloned().unwrap_or_default()
}

fn env_view(dev: &Dev, dir: &Path, name: &str) -> serde_json::Value {
    json(&run(dev, dir, &[], &["env", "show", name, "-o", "json"]))
}

#[test]
fn env_commands_keep_records_refuse_bad_input_and_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("small.yaml"),
        "services:\n  web:\n    deploy: {replicas: 2}\n",
    )
    .unwrap();
    let mut dev = start_dev(data.path());

    let out = run(
        &dev,
        d,
        &[],
        &[
            "env",
            "create",
            "alice",
            "--ttl",
            "72h",
            "--idle",
            "24h",
            "-f",
            "small.yaml",
        ],
    );
    assert!(out.contains("environment alice created"), "{out}");
    assert!(out.contains("expires in 24h"), "{out}");
    // Twice: it exists.
    let err = fails(&dev, d, &["env", "create", "alice"]);
    assert!(err.contains("environment alice exists already"), "{err}");

    // Bad names, bad values.
    for bad in ["Alice", "a_b", "-a", "a-"] {
        let err = fails(&dev, d, &["env", "create", "--", bad]);
        assert!(err.contains("invalid environment"), "{bad}: {err}");
    }
    let err = fails(&dev, d, &["env", "set", "alice", "1X=2"]);
    assert!(err.contains("value name \"1X\""), "{err}");
    let err = fails(&dev, d, &["env", "set", "alice", "novalue"]);
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let err = fails(&dev, d, &["env", "set", "nobody", "A=1"]);
    assert!(err.contains("no environment nobody"), "{err}");
    let err = fails(&dev, d, &["env", "set", "default", "A=1"]);
    assert!(err.contains("default environment has no record"), "{err}");

    // Values: set (twice is the same), unset, show.
    for _ in 0..2 {
        let out = run(&dev, d, &[], &["env", "set", "alice", "A=1", "B=two words"]);
        assert!(out.contains("A, B set"), "{out}");
    }
    run(&dev, d, &[], &["env", "unset", "alice", "B"]);
    run(&dev, d, &[], &["env", "unset", "alice", "B"]);
    let v = env_view(&dev, d, "alice");
    assert_eq!(v["values"], serde_json::json!({"A": "1"}), "{v}");
    assert_eq!(v["overrides"][0]["name"], "small.yaml", "{v}");
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["expires_by"], "idle", "{v}");
    let table = run(&dev, d, &[], &["env", "show", "alice"]);
    assert!(
        table.contains("  A=1") && table.contains("env:alice/small.yaml"),
        "{table}"
    );

    // --from copies values and override files.
    run(&dev, d, &[], &["env", "create", "bob", "--from", "alice"]);
    let v = env_view(&dev, d, "bob");
    assert_eq!(v["values"]["A"], "1", "{v}");
    assert_eq!(v["from"], "alice", "{v}");

    // The list: default (implicit) and both, with owner, age and expiry.
    let ls = run(&dev, d, &[], &["env", "ls"]);
    let header = ls.lines().next().unwrap();
    assert!(
        header.starts_with("NAME   ") && header.ends_with("LAST REQUEST  EXPIRES"),
        "{ls}"
    );
    let alice = ls.lines().find(|l| l.starts_with("alice ")).unwrap();
    assert!(
        alice.contains("0/0") && alice.contains("in 24h (idle)"),
        "{ls}"
    );
    assert!(ls.lines().any(|l| l.starts_with("default ")), "{ls}");

    // rm without --yes on a non-terminal stdin refuses, and nothing is removed.
    let err = fails(&dev, d, &["env", "rm", "bob"]);
    assert!(
        err.contains("without --yes: stdin is not a terminal"),
        "{err}"
    );
    env_view(&dev, d, "bob");

    // kill -9: the records survive.
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    let dev = start_dev(data.path());
    let v = env_view(&dev, d, "alice");
    assert_eq!(v["values"], serde_json::json!({"A": "1"}), "{v}");
    assert_eq!(v["ttl_ms"], 72 * 3_600_000u64, "{v}");

    run(&dev, d, &[], &["env", "rm", "bob", "--yes"]);
    let err = fails(&dev, d, &["env", "rm", "bob", "--yes"]);
    assert!(err.contains("no environment bob"), "{err}");
    let err = fails(&dev, d, &["env", "show", "bob"]);
    assert!(err.contains("no environment bob"), "{err}");
    let err = fails(&dev, d, &["env", "rm", "default", "--yes"]);
    assert!(err.contains("cannot be removed"), "{err}");
}

#[test]
fn two_envs_run_one_stack_with_their_own_instances_names_hosts_and_values() {
    ensure_demo_built();
    let project = project(STACK);
    let d = project.path();
    // .env wins over the environment's values, the shell over both.
    std::fs::write(d.join(".env"), "COLOR=from-dotenv\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());

    run(&dev, d, &[], &["env", "create", "a"]);
    run(
        &dev,
        d,
        &[],
        &["env", "set", "a", "DB_NAME=alpha", "COLOR=a-color"],
    );
    let out = run(&dev, d, &[], &["up", "-n", "a"]);
    assert!(!out.contains("does not exist"), "{out}");
    // b does not exist: up creates it; its DB_NAME comes from the shell.
    let out = run(&dev, d, &[("DB_NAME", "beta")], &["env", "up", "b"]);
    assert!(
        out.contains("environment b does not exist: up creates it"),
        "{out}"
    );
    let b = env_view(&dev, d, "b");
    assert_eq!(
        b["owner"]["user"].as_str().map(str::is_empty),
        Some(false),
        "{b}"
    );

    // Distinct instances.
    let (pa, pb) = (ps(&dev, d, "a"), ps(&dev, d, "b"));
    assert_eq!((pa.len(), pb.len()), (2, 2), "{pa:?} {pb:?}");
    for i in &pa {
        assert_eq!(i["id"]["stack"]["env"], "a");
        assert!(pb.iter().all(|j| j["pid"] != i["pid"]), "{pa:?} {pb:?}");
    }

    // Values: env a's, under .env; b's from the shell.
    let web_env = |env: &str| -> serde_json::Value {
        let (code, body) = get(&dev, &format!("web.shop.{env}.localhost"), "/env");
        assert_eq!(code, 200, "{body}");
        json(&body)
    };
    let (ea, eb) = (web_env("a"), web_env("b"));
    assert_eq!(ea["DB_NAME"], "alpha", "{ea}");
    assert_eq!(ea["COLOR"], "from-dotenv", "{ea}");
    assert_eq!(eb["DB_NAME"], "beta", "{eb}");

    // Each web's reference to db names its own environment's db, never the other's.
    for (env, want) in [(&ea, "db-alpha"), (&eb, "db-beta")] {
        let addr = format!(
            "{}:{}",
            env["DB_SERVICE_HOST"].as_str().unwrap(),
            env["DB_SERVICE_PORT"].as_str().unwrap()
        );
        assert_eq!(env["DB_URL"], format!("http://{addr}"), "{env}");
        wait_for("db answers on its stable address", || {
            http(&addr, "GET", "/", "").1.starts_with(want)
        });
    }
    assert_ne!(ea["DB_SERVICE_HOST"], eb["DB_SERVICE_HOST"]);

    // DNS names per environment; none across.
    for env in ["a", "b"] {
        let name = format!("db.shop.{env}.skiff");
        let (ok, out, err) = skiff_in(&dev, d, &[], &["dns", &name]);
        assert!(ok && out.contains("127."), "{name}: {out}{err}");
    }
    let (_, out, err) = skiff_in(&dev, d, &[], &["dns", "db.shop.c.skiff"]);
    assert!(!out.contains("127."), "{out}{err}");

    // Route hosts: shop.test is served per environment, never bare outside default.
    let (code, body) = get(&dev, "shop.test.a.localhost", "/");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&dev, "shop.test.b.localhost", "/").0, 200);
    assert_eq!(get(&dev, "shop.test", "/").0, 404);
    let routes = run(&dev, d, &[], &["routes"]);
    assert!(
        routes.contains("shop.test.a.localhost") && routes.contains("shop.test.b.localhost"),
        "{routes}"
    );

    // A request through the ingress is the environment's last request.
    let v = env_view(&dev, d, "a");
    wait_for("a last request", || {
        env_view(&dev, d, "a")["last_request_ms"].as_u64().is_some()
    });
    assert_eq!(v["stacks"][0]["stack"], "shop", "{v}");

    // The env's values are part of the release; diff sees a change of them.
    run(&dev, d, &[], &["env", "set", "a", "DB_NAME=alpha2"]);
    let (ok, out, _) = skiff_in(&dev, d, &[], &["diff", "-n", "a"]);
    assert!(!ok && out.contains("db"), "{out}");

    // Clone: c gets a's values and runs a's current release.
    let out = run(&dev, d, &[], &["env", "clone", "a", "c"]);
    assert!(out.contains("1 stacks deployed"), "{out}");
    let c = env_view(&dev, d, "c");
    assert_eq!(c["values"]["DB_NAME"], "alpha2", "{c}");
    assert_eq!(c["from"], "a", "{c}");
    wait_for("c ready", || env_view(&dev, d, "c")["ready"] == 2);
    let ec = web_env("c");
    assert_eq!(
        ec["DB_NAME"], "alpha",
        "the clone runs a's current release: {ec}"
    );
    let err = fails(&dev, d, &["env", "clone", "a", "c"]);
    assert!(err.contains("exists already"), "{err}");

    // down: instances stop, history stays; twice is fine; up brings it back.
    for _ in 0..2 {
        let out = run(&dev, d, &[], &["env", "down", "c"]);
        assert!(out.contains("environment c: down"), "{out}");
    }
    assert!(ps(&dev, d, "c").iter().all(|i| i["state"] != "healthy"));
    assert_eq!(env_view(&dev, d, "c")["state"], "down");
    let out = run(&dev, d, &[], &["history", "shop", "-n", "c"]);
    assert!(out.contains('1'), "{out}");
    run(&dev, d, &[], &["up", "-n", "c", "-d"]);
    assert_eq!(env_view(&dev, d, "c")["state"], "active");

    // rm: instances, releases and the record go; a and b keep running.
    run(&dev, d, &[], &["env", "rm", "c", "--yes"]);
    assert!(ps(&dev, d, "c").is_empty());
    let (ok, _, err) = skiff_in(&dev, d, &[], &["history", "shop", "-n", "c"]);
    assert!(!ok, "{err}");
    assert_eq!(web_env("a")["DB_NAME"], "alpha");
    assert_eq!(web_env("b")["DB_NAME"], "beta");
}

#[test]
fn the_reaper_downs_an_env_past_its_ttl_and_one_without_requests_for_its_idle_time() {
    ensure_demo_built();
    let project = project(STACK);
    let d = project.path();
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());

    run(&dev, d, &[], &["env", "create", "short", "--ttl", "3s"]);
    run(&dev, d, &[], &["env", "create", "quiet", "--idle", "3s"]);
    run(&dev, d, &[], &["env", "create", "busy", "--idle", "3s"]);
    for env in ["short", "quiet", "busy"] {
        run(&dev, d, &[], &["up", "-n", env, "-d"]);
    }
    // busy gets a request every 300 ms for 5 s: past its idle time since creation, kept.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let _ =
            HttpConn::connect(&dev.ingress).and_then(|mut c| c.get("web.shop.busy.localhost", "/"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let state = |env: &str| env_view(&dev, d, env)["state"].clone();
    wait_for("short downed by its ttl", || state("short") == "down");
    wait_for("quiet downed for idleness", || state("quiet") == "down");
    assert_eq!(state("busy"), "active");
    let short = env_view(&dev, d, "short");
    assert!(
        short["down_reason"].as_str().unwrap().contains("ttl of 3s"),
        "{short}"
    );
    let quiet = env_view(&dev, d, "quiet");
    assert!(
        quiet["down_reason"]
            .as_str()
            .unwrap()
            .contains("no request for 3s"),
        "{quiet}"
    );
    wait_for("short's instances stopped", || {
        ps(&dev, d, "short").iter().all(|i| i["state"] != "healthy")
    });
    let ls = run(&dev, d, &[], &["env", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("short ") && l.contains("down: its ttl")),
        "{ls}"
    );
    let events = run(&dev, d, &[], &["events", "-o", "json"]);
    assert!(
        events.contains("environment short down (its ttl of 3s ran out)"),
        "{events}"
    );
    // Requests stop: busy follows.
    wait_for("busy downed once idle", || state("busy") == "down");
}
