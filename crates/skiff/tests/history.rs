//! `skiff history` (who made each release, how, and what changed), `skiff history STACK N`
//! (the diff of the resolved file to the release before) and `skiff diff -f FILE` (what `up`
//! would change, with exit codes 0 / 2 / 1), against a real `skiff dev` running `skiff-demo`
//! processes.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const STACK: &str = "name: hist
x-skiff: {driver: process}
services:
  db:
    command: [skiff-demo, --name, db]
    ports: [{name: http, target: 8080}]
  web:
    command:
      - skiff-demo
      - --name
      - ${WEB_NAME:-web}
    ports: [{name: http, target: 8080}]
    depends_on: {db: {condition: service_healthy}}
    environment:
      TOKEN: ${TOKEN:-first-secret}
    deploy:
      replicas: ${N:-2}
      update_config:
        order: start-first
        parallelism: 2
        failure_action: ${ON_FAILURE:-pause}
";

/// The CLI in `dir` as user `tester`: (exit code, stdout, stderr).
fn run(dev: &Dev, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SKIFF)
        .args(args)
        .env("SKIFF_ADDR", &dev.addr)
        .env("NO_COLOR", "1")
        .env("USER", "tester")
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(dev: &Dev, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let (code, out, err) = run(dev, dir, env, args);
    assert_eq!(code, 0, "{args:?} failed:\n{out}\n{err}");
    out
}

fn fresh() -> (tempfile::TempDir, tempfile::TempDir, Dev) {
    ensure_demo_built();
    let project = project(STACK);
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    (project, data, dev)
}

/// `skiff history hist -o json` as values.
fn history(dev: &Dev, dir: &Path) -> Vec<serde_json::Value> {
    let out = ok(dev, dir, &[], &["history", "hist", "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn history_shows_who_made_each_release_how_and_what_changed() {
    let (project, _data, dev) = fresh();
    let dir = project.path();
    // Stop-first: `skiff scale` waits for indexes up to N, which start-first replacements
    // (indexes of their own) do not keep.
    let stop_first = STACK.replace("order: start-first", "order: stop-first");
    std::fs::write(dir.join("compose.yaml"), stop_first).unwrap();
    let host = skiff_client::author::host_name();
    ok(&dev, dir, &[], &["up", "--timeout", "15"]);
    ok(
        &dev,
        dir,
        &[("WEB_NAME", "web-v2"), ("TOKEN", "second-secret")],
        &["up", "--timeout", "15"],
    );
    ok(&dev, dir, &[], &["scale", "web=3", "--timeout", "15"]);
    ok(
        &dev,
        dir,
        &[],
        &["rollback", "hist", "--to", "1", "--timeout", "15"],
    );

    let h = history(&dev, dir);
    let field = |i: usize, f: &str| h[i][f].clone();
    assert_eq!(h.len(), 4);
    for r in &h {
        assert_eq!(r["author"]["user"], "tester", "{r}");
        assert_eq!(r["author"]["host"], host.as_str(), "{r}");
    }
    assert_eq!(field(0, "change"), "initial");
    assert_eq!(field(0, "cause")["kind"], "up");
    assert_eq!(
        field(1, "change"),
        "web: command skiff-demo --name web→skiff-demo --name web-v2, environment ~TOKEN"
    );
    assert_eq!(field(2, "change"), "web: replicas 2→3");
    assert_eq!(field(2, "cause")["kind"], "scale");
    assert_eq!(field(3, "cause")["kind"], "rollback");
    assert_eq!(field(3, "cause")["to"], 1);
    assert!(
        field(3, "change")
            .as_str()
            .unwrap()
            .starts_with("web: command"),
        "{h:?}"
    );
    assert_eq!(field(3, "current"), true);
    let all = serde_json::to_string(&h).unwrap();
    assert!(
        !all.contains("secret"),
        "an environment value leaked: {all}"
    );

    let table = ok(&dev, dir, &[], &["history", "hist"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("RELEASE") && lines[0].contains("BY") && lines[0].contains("CHANGE"),
        "{table}"
    );
    let by = format!("tester@{host}");
    assert!(
        lines[1].contains(&by) && lines[1].contains(" up ") && lines[1].ends_with("initial"),
        "{table}"
    );
    assert!(
        lines[3].contains("scale web=3") && lines[3].ends_with("web: replicas 2→3"),
        "{table}"
    );
    assert!(
        lines[4].starts_with("4 (current)") && lines[4].contains("rollback to 1"),
        "{table}"
    );

    // One release: its resolved file's diff to the one before, then the change per service.
    let show = ok(&dev, dir, &[], &["history", "hist", "2"]);
    assert!(show.contains(&format!("by {by} (up)")), "{show}");
    assert!(show.contains("--- release 1\n+++ release 2\n"), "{show}");
    let minus = show
        .lines()
        .any(|l| l.starts_with('-') && l.ends_with("- web"));
    let plus = show
        .lines()
        .any(|l| l.starts_with('+') && l.ends_with("- web-v2"));
    assert!(minus && plus, "the changed line of the file: {show}");
    assert!(show.contains("changes:\n  ~ web: command "), "{show}");
    let against = ok(&dev, dir, &[], &["history", "hist", "4", "--against", "2"]);
    assert!(against.contains("compared with release 2"), "{against}");
    assert!(against.contains("~ web: command"), "{against}");
    let first = ok(&dev, dir, &[], &["history", "hist", "1"]);
    assert!(
        first.contains("initial release") && first.contains("  + db\n  + web"),
        "{first}"
    );

    let (code, _, err) = run(&dev, dir, &[], &["history", "hist", "9"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("stack default/hist has no release 9 (its releases are 1–4)"),
        "{err}"
    );
}

#[test]
fn a_failed_rollout_rolled_back_by_its_policy_names_the_server_as_author() {
    let (project, _data, dev) = fresh();
    let dir = project.path();
    let rollback = [("ON_FAILURE", "rollback")];
    ok(&dev, dir, &rollback, &["up", "--timeout", "15"]);
    let broken = STACK.replace(
        "\n      - skiff-demo\n      - --name\n      - ${WEB_NAME:-web}\n",
        " [sh, -c, 'exit 3']\n",
    );
    std::fs::write(dir.join("compose.yaml"), broken).unwrap();
    run(&dev, dir, &rollback, &["up", "--timeout", "30"]);
    wait_for("the automatic rollback's release", || {
        history(&dev, dir).len() == 3
    });
    let h = history(&dev, dir);
    assert_eq!(h[1]["author"]["user"], "tester");
    assert_eq!(h[2]["author"]["user"], "skiff", "{:?}", h[2]);
    assert_eq!(h[2]["cause"]["kind"], "automatic_rollback");
    let table = ok(&dev, dir, &[], &["history", "hist"]);
    assert!(
        table.contains("automatic rollback to 1 (rollout of 2 failed)"),
        "{table}"
    );
}

#[test]
fn diff_says_what_up_would_change_per_service_with_exit_codes_0_and_2() {
    let (project, _data, dev) = fresh();
    let dir = project.path();
    let with_cache = STACK.to_string()
        + "  cache:\n    command: [skiff-demo, --name, cache]\n    ports: [{name: http, target: 8080}]\n";
    std::fs::write(dir.join("compose.yaml"), &with_cache).unwrap();

    // No release yet: everything is new.
    let (code, out, err) = run(&dev, dir, &[], &["diff", "-f", "compose.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("runs no release\n+ cache\n+ db\n+ web\n"),
        "{out}"
    );

    ok(&dev, dir, &[], &["up", "-d"]);
    let (code, out, err) = run(&dev, dir, &[], &["diff", "-f", "compose.yaml"]);
    assert_eq!(code, 0, "an unchanged file: {out}{err}");
    assert!(
        out.contains("compared with release 1") && out.contains("no changes"),
        "{out}"
    );
    let (_, verbose, _) = run(&dev, dir, &[], &["diff", "-v"]);
    assert!(verbose.contains("= db\n"), "{verbose}");

    // Replicas: instances kept.
    let (code, out, _) = run(&dev, dir, &[("N", "3")], &["diff"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("~ web: replicas 2→3 (scaled, instances kept)\n"),
        "{out}"
    );
    assert!(!out.contains("db"), "an unchanged service is hidden: {out}");

    // What runs changes: replaced by the rolling update the file describes.
    let (code, out, _) = run(&dev, dir, &[("WEB_NAME", "web-v2")], &["diff", "--text"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("(rolling update, start-first, 2 at a time)"),
        "{out}"
    );
    assert!(out.contains("--- release 1\n+++ file\n"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('+') && l.ends_with("- web-v2")),
        "{out}"
    );

    // A service added and one removed.
    let changed = STACK.to_string()
        + "  worker:\n    command: [skiff-demo, --name, worker]\n    ports: [{name: http, target: 8080}]\n";
    std::fs::write(dir.join("next.yaml"), changed).unwrap();
    let (code, out, _) = run(&dev, dir, &[], &["diff", "-f", "next.yaml"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("- cache\n") && out.contains("+ worker\n"),
        "{out}"
    );

    // A file with a mistake: its place, exit 1, nothing asked of the server.
    std::fs::write(
        dir.join("bad.yaml"),
        "name: hist\nservices:\n  web:\n    image: x\n    deploy:\n      replicas: two\n",
    )
    .unwrap();
    let (code, out, err) = run(&dev, dir, &[], &["diff", "-f", "bad.yaml"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("bad.yaml:6:"), "{err}");
    assert!(err.contains("replicas"), "{err}");
}
