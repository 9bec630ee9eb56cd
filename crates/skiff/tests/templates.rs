//! Config templates (`configs.<name>.x-skiff.template: true`): rendered per instance with
//! `service("x")`, `instance` and `env`, written before the start; mistakes are refused at
//! `up` with the file's position, not at an instance's start.

mod common;

use std::collections::BTreeSet;

use common::*;

const STACK: &str = r#"name: tpl
x-skiff: {driver: process}
services:
  db:
    command: [skiff-demo, --name, db]
    ports: [{name: http, target: 8080}]
    x-skiff:
      readiness: {http: {path: /health}, interval: 500ms, retries: 3}
  web:
    command: [skiff-demo, --name, web, --config-from, SKIFF_CONFIG_APP]
    ports: [{name: http, target: 8080}]
    deploy: {replicas: 2}
    depends_on: {db: {condition: service_healthy}}
    configs: [app]
    x-skiff:
      readiness: {http: {path: /health}, interval: 500ms, retries: 3}
configs:
  app:
    content: |
      db={{ service("db").address }}
      index={{ instance.index }}
      name={{ instance.name }}
      port={{ instance.port }}
      http={{ instance.ports.http }}
      same={{ env.PORT }}
      where={{ instance.stack }}.{{ instance.env }}
      upper={{ instance.service | upper }}
    x-skiff: {template: true}
"#;

const WEB: &str = "web.tpl.default.localhost";

/// The config file as each web instance serves it (`GET /config`), by its `index=` line.
fn served(dev: &Dev) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (code, body) = HttpConn::connect(&dev.ingress)
            .and_then(|mut c| c.get(WEB, "/config"))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let index = body
            .lines()
            .find_map(|l| l.strip_prefix("index="))
            .unwrap()
            .to_string();
        seen.insert(index, body);
        if seen.len() == 2 {
            break;
        }
    }
    seen.into_values().collect()
}

fn line<'a>(body: &'a str, key: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in {body}"))
}

#[test]
fn a_template_config_is_rendered_per_instance_with_its_index_ports_and_the_address_of_a_dependency()
{
    let (dev, _project, _data) = up_stack(STACK);
    let bodies = served(&dev);
    assert_eq!(bodies.len(), 2, "both replicas answer: {bodies:?}");
    let indexes: BTreeSet<&str> = bodies.iter().map(|b| line(b, "index")).collect();
    assert_eq!(indexes, BTreeSet::from(["1", "2"]));
    for body in &bodies {
        let index = line(body, "index");
        assert_eq!(line(body, "name"), format!("web-{index}"));
        // The instance's own port, by position, by name and as its environment has it.
        let port = line(body, "port");
        assert!(port.parse::<u16>().is_ok(), "{body}");
        assert_eq!(line(body, "http"), port);
        assert_eq!(line(body, "same"), port);
        assert_eq!(line(body, "where"), "tpl.default");
        assert_eq!(line(body, "upper"), "WEB");
        // The dependency's address answers as the dependency.
        let db = line(body, "db");
        let (code, who) = http(db, "GET", "/", "");
        assert_eq!(code, 200);
        assert!(who.contains("db"), "{db} answers as db: {who}");
    }
    // Each instance has its own file: different ports.
    assert_ne!(line(&bodies[0], "port"), line(&bodies[1], "port"));
}

#[test]
fn a_template_mistake_is_refused_at_up_with_its_place_and_nothing_is_released() {
    ensure_demo_built();
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let cases = [
        (
            STACK.replace(
                "upper={{ instance.service | upper }}",
                "bad={{ instance.index ",
            ),
            "syntax error",
        ),
        (
            STACK.replace(
                "upper={{ instance.service | upper }}",
                "url={{ database_url }}",
            ),
            "\"database_url\"",
        ),
        (
            STACK.replace("service(\"db\")", "service(\"mysql\")"),
            "service(\"mysql\") names no service",
        ),
        (
            STACK.replace(
                "upper={{ instance.service | upper }}",
                "x={{ values.DB_NAME }}",
            ),
            "values.DB_NAME, which the environment does not set",
        ),
    ];
    for (compose, says) in cases {
        let project = project(&compose);
        let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["up", "--timeout", "20"]);
        assert!(!ok, "refused: {out}{err}");
        assert!(err.contains(says), "says {says:?}: {err}");
        if !says.contains("values.") {
            assert!(err.contains("compose.yaml:"), "names the file: {err}");
            assert!(
                err.contains("configs.app.content"),
                "names the field: {err}"
            );
        }
    }
    let (ok, out, err) = skiff(&dev, &["ps"]);
    assert!(ok, "{err}");
    assert!(!out.contains("web-1"), "nothing started: {out}");
}

#[test]
fn a_template_reads_the_environments_values_and_only_a_change_of_one_it_reads_touches_instances() {
    ensure_demo_built();
    let compose = STACK
        .replace(
            "upper={{ instance.service | upper }}",
            "greeting={{ values.GREETING }}",
        )
        .replace("deploy: {replicas: 2}", "deploy: {replicas: 1}");
    let project = project(&compose);
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    let run = |args: &[&str]| {
        let (ok, out, err) = skiff_in(&dev, project.path(), &[], args);
        assert!(ok, "skiff {args:?}: {out}{err}");
        out
    };
    run(&["env", "create", "alice"]);
    run(&["env", "set", "alice", "GREETING=hello", "OTHER=1"]);
    run(&["up", "-n", "alice"]);
    let host = "web.tpl.alice.localhost";
    let config = || {
        HttpConn::connect(&dev.ingress)
            .and_then(|mut c| c.get(host, "/config"))
            .unwrap()
    };
    let (code, body) = config();
    assert_eq!(code, 200, "{body}");
    assert_eq!(line(&body, "greeting"), "hello");
    assert_eq!(line(&body, "where"), "tpl.alice");
    let pid = |dev: &Dev| {
        let (ok, out, err) = skiff_in(
            dev,
            project.path(),
            &[],
            &["ps", "-n", "alice", "-o", "json"],
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"]["service"] == "web" && i["state"] == "healthy")
            .and_then(|i| i["pid"].as_u64())
            .unwrap_or_else(|| panic!("web's pid in {out}"))
    };
    let before = pid(&dev);

    // A value the template does not read: nothing of web changes.
    run(&["env", "set", "alice", "OTHER=2"]);
    run(&["up", "-n", "alice"]);
    assert_eq!(
        pid(&dev),
        before,
        "a value web's template does not read keeps it"
    );

    // The one it reads: a new instance with the new file.
    run(&["env", "set", "alice", "GREETING=hej"]);
    run(&["up", "-n", "alice"]);
    assert_eq!(line(&config().1, "greeting"), "hej");
    assert_ne!(pid(&dev), before, "web was replaced for its new file");
}
