//! The real `skiff` binary on real files: what a user types and sees.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

fn skiff(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("skiff").unwrap();
    c.current_dir(dir)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES");
    c.env_remove("COMPOSE_PROJECT_NAME").env("NO_COLOR", "1");
    c
}

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn validate_accepts_the_example_stack() {
    skiff(&examples())
        .args(["validate", "-f", "compose.yaml"])
        .assert()
        .success()
        .stdout(contains("compose.yaml: valid: stack \"shop\", 4 services"));
}

#[test]
fn validate_reports_file_line_column_and_field_then_fails() {
    let dir = project(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    deploy:\n      replicas: three\n",
    )]);
    skiff(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(contains(
            "error: compose.yaml:5:17: services.web.deploy.replicas: expected a non-negative integer, got \"three\"",
        ));
}

#[test]
fn override_files_merge_and_env_file_feeds_interpolation() {
    let dir = project(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: \"web:${TAG}\"\n    ports: [\"8080:80\"]\n",
        ),
        (
            "compose.override.yaml",
            "services:\n  web:\n    ports: [\"8443:443\"]\n",
        ),
        ("ci.env", "TAG=9.9\n"),
    ]);
    let out = skiff(dir.path())
        .args(["config", "--env-file", "ci.env", "-o", "json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["services"]["web"]["image"], "web:9.9");
    let ports: Vec<u64> = v["services"]["web"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["target"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![80, 443]);
}

#[test]
fn config_prints_yaml_that_config_reads_back() {
    let first = skiff(&examples())
        .args(["config", "-f", "compose.yaml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let dir = project(&[("again.yaml", std::str::from_utf8(&first).unwrap())]);
    skiff(dir.path())
        .args(["config", "-f", "again.yaml"])
        .assert()
        .success()
        .stdout(predicate::eq(std::str::from_utf8(&first).unwrap()));
}

#[test]
fn plan_prints_batches_in_dependency_order() {
    skiff(&examples())
        .args(["plan", "-f", "compose.yaml"])
        .assert()
        .success()
        .stdout(contains(
            "stack shop (env default): 4 services in 3 batches",
        ))
        .stdout(predicate::str::is_match(r"(?m)^1\s+cache\s+process\s+1\s*$").unwrap())
        .stdout(
            predicate::str::is_match(r"(?m)^3\s+web\s+process\s+2\s+api \(healthy\)$").unwrap(),
        );
}

#[test]
fn plan_json_lists_batches_and_waits() {
    let out = skiff(&examples())
        .args([
            "plan",
            "-f",
            "compose.yaml",
            "--format",
            "json",
            "-n",
            "alice",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["env"], "alice");
    assert_eq!(v["batches"][0][0]["service"], "cache");
    assert_eq!(
        v["batches"][1][0]["waits_for"][0]["condition"],
        "service_healthy"
    );
}

#[test]
fn a_dependency_cycle_is_shown_as_its_path() {
    let dir = project(&[(
        "compose.yaml",
        "services:\n  a: {image: a, depends_on: [b]}\n  b: {image: b, depends_on: [c]}\n  c: {image: c, depends_on: [a]}\n",
    )]);
    skiff(dir.path())
        .arg("plan")
        .assert()
        .code(1)
        .stderr(contains(
            "compose.yaml:2:30: services.a.depends_on.b: dependency cycle a -> b -> c -> a",
        ));
}

#[test]
fn missing_compose_file_is_a_clear_error() {
    let dir = project(&[]);
    skiff(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(contains("no compose file found"));
    skiff(dir.path())
        .args(["validate", "-f", "nope.yaml"])
        .assert()
        .code(1)
        .stderr(contains("cannot read compose file nope.yaml: no such file"));
}

#[test]
fn hostile_input_fails_cleanly() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let dir = project(&[("compose.yaml", &bomb), ("deep.yaml", &"[".repeat(100_000))]);
    skiff(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(contains("has more than"));
    skiff(dir.path())
        .args(["validate", "-f", "deep.yaml"])
        .assert()
        .code(1)
        .stderr(contains("deep.yaml:1:"));
    skiff(dir.path())
        .args(["validate", "-f", "/dev/zero"])
        .assert()
        .code(1)
        .stderr(contains("error:"));
}

#[test]
fn warnings_list_fields_skiff_does_not_act_on() {
    let dir = project(&[(
        "compose.yaml",
        "version: \"3.8\"\nservices:\n  web:\n    image: web\n    cap_add: [NET_ADMIN]\n",
    )]);
    skiff(dir.path())
        .arg("validate")
        .assert()
        .success()
        .stderr(contains("warning: compose.yaml:1:1: version: the attribute is obsolete and ignored"))
        .stderr(contains("warning: compose.yaml:5:5: services.web.cap_add: accepted but not acted on by skiff yet"));
}

#[test]
fn a_service_without_image_needs_the_process_driver() {
    let dir = project(&[(
        "compose.yaml",
        "services:\n  web:\n    command: [sleep, \"1\"]\n",
    )]);
    skiff(dir.path())
        .arg("validate")
        .assert()
        .code(1)
        .stderr(contains(
            "has neither an image nor a build context specified",
        ))
        .stderr(contains("x-skiff: {driver: process}"));
}
