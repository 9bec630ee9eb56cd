//! `up`, `scale`, `start` and `restart` a second time, as users do: an unchanged file records
//! no release and returns as soon as everything is healthy; a change of replicas only keeps
//! the running instances; all of it also after a kill -9 of the server and re-adoption. Each
//! command gets a short `--timeout`, so a wait for instances that never come fails the test in
//! seconds instead of hanging.

mod common;

use std::time::{Duration, Instant};

use common::*;

const STACK: &str = "name: again
x-skiff: {driver: process}
services:
  db:
    command: [skiff-demo, --name, db]
    ports: [{name: http, target: 8080}]
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    depends_on: {db: {condition: service_healthy}}
    deploy:
      replicas: ${N:-2}
";

fn up(dev: &Dev, dir: &std::path::Path, n: &str) -> (String, Duration) {
    let started = Instant::now();
    let (ok, out, err) = skiff_in(dev, dir, &[("N", n)], &["up", "--timeout", "15"]);
    assert!(ok, "up with N={n} failed:\n{out}\n{err}");
    (out, started.elapsed())
}

/// A project dir with `STACK`, a data dir and a `skiff dev` on it.
fn fresh() -> (tempfile::TempDir, tempfile::TempDir, Dev) {
    ensure_demo_built();
    let project = project(STACK);
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path());
    (project, data, dev)
}

/// How many releases `skiff history again` lists.
fn releases(dev: &Dev) -> usize {
    let (ok, out, err) = skiff(dev, &["history", "again", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap().len()
}

fn kill_9_and_restart(dev: Dev, data: &std::path::Path) -> Dev {
    let before = pids(&dev);
    let mut dev = dev;
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    drop(dev);
    let dev = start_dev(data);
    wait_for("re-adoption", || pids(&dev) == before);
    dev
}

#[test]
fn up_of_an_unchanged_file_records_no_release_and_returns_once_healthy() {
    let (project, data, dev) = fresh();
    let (out, _) = up(&dev, project.path(), "2");
    assert!(out.contains("release 1 recorded"), "{out}");
    let before = pids(&dev);

    let (out, took) = up(&dev, project.path(), "2");
    assert!(
        out.contains("nothing changed since release 1; no release recorded"),
        "{out}"
    );
    assert!(out.contains("3 instances healthy"), "{out}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {out}");
    assert_eq!(releases(&dev), 1);
    assert_eq!(pids(&dev), before, "an unchanged up replaced instances");

    // The same after a kill -9 of the server and re-adoption of the workloads.
    let dev = kill_9_and_restart(dev, data.path());
    let (out, _) = up(&dev, project.path(), "2");
    assert!(out.contains("nothing changed since release 1"), "{out}");
    assert_eq!(releases(&dev), 1);
    assert_eq!(pids(&dev), before);
}

#[test]
fn up_that_changes_only_replicas_keeps_running_instances_and_waits_for_the_count() {
    let (project, data, dev) = fresh();
    up(&dev, project.path(), "3");
    let web1 = instance_pid(&dev, "web", 1);
    let db1 = instance_pid(&dev, "db", 1);

    let (out, _) = up(&dev, project.path(), "4");
    assert!(out.contains("release 2 recorded"), "{out}");
    assert!(out.contains("5 instances healthy"), "{out}");
    assert_eq!(pids(&dev).len(), 5);
    assert_eq!(instance_pid(&dev, "web", 1), web1, "web-1 was replaced");
    assert_eq!(instance_pid(&dev, "db", 1), db1, "db-1 was replaced");

    // After a kill -9: the adopted instances were started under releases 1 and 2.
    let dev = kill_9_and_restart(dev, data.path());
    let (out, _) = up(&dev, project.path(), "2");
    assert!(out.contains("release 3 recorded"), "{out}");
    assert!(out.contains("3 instances healthy"), "{out}");
    assert_eq!(instance_pid(&dev, "web", 1), web1);
    wait_for("web-3 and web-4 gone", || pids(&dev).len() == 3);
    let (out, _) = up(&dev, project.path(), "2");
    assert!(out.contains("nothing changed since release 3"), "{out}");
}

#[test]
fn scale_start_and_restart_wait_on_the_current_spec_after_a_kill_9() {
    let (project, data, dev) = fresh();
    up(&dev, project.path(), "2");
    let dev = kill_9_and_restart(dev, data.path());
    let run = |args: &[&str]| {
        let (ok, out, err) = skiff_in(&dev, project.path(), &[], args);
        assert!(ok, "{args:?} failed:\n{out}\n{err}");
        out
    };

    let out = run(&["scale", "web=3", "--timeout", "15"]);
    assert!(out.contains("release 2: web scaled to 3"), "{out}");
    let out = run(&["scale", "web=3", "--timeout", "15"]);
    assert!(
        out.contains("web already has 3 replicas (release 2); no release recorded"),
        "{out}"
    );
    assert_eq!(releases(&dev), 2);

    let db1 = instance_pid(&dev, "db", 1);
    let out = run(&["restart", "db", "--timeout", "15"]);
    assert!(out.contains("db: 1 instances healthy"), "{out}");
    assert_ne!(instance_pid(&dev, "db", 1), db1, "restart kept the old db");

    run(&["stop", "web", "--timeout", "15"]);
    let out = run(&["start", "web", "--timeout", "15"]);
    assert!(out.contains("web: 3 instances healthy"), "{out}");
    assert_eq!(pids(&dev).len(), 4);
}

/// Makes the project's next release one whose web instances exit at once.
fn write_broken_web(dir: &std::path::Path) {
    let broken = STACK.replace(
        "command: [skiff-demo, --name, web]",
        "command: [sh, -c, 'exit 3']",
    );
    std::fs::write(dir.join("compose.yaml"), broken).unwrap();
}

#[test]
fn up_fails_at_once_naming_the_cause_when_its_rollout_pauses_on_a_failed_instance() {
    let (project, _data, dev) = fresh();
    up(&dev, project.path(), "2");
    // Release 2's web exits at once: its first new instance fails, the rollout pauses (the
    // default failure action) and the other instance of release 1 keeps running.
    write_broken_web(project.path());
    let started = Instant::now();
    let (ok, out, err) = skiff_in(
        &dev,
        project.path(),
        &[("N", "2")],
        &["up", "--timeout", "60"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("web: the rollout of release 2 paused")
            && err.contains("1 of 2 instances failed"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed fast: {:?}",
        started.elapsed()
    );
    let (_, ps, _) = skiff_in(&dev, project.path(), &[], &["ps"]);
    let old_running = ps
        .lines()
        .filter(|l| l.starts_with("web-") && l.contains("healthy"))
        .count();
    assert_eq!(
        old_running, 1,
        "the paused rollout left one old instance serving: {ps}"
    );

    // Its status says why; pausing it again is refused; `resume` carries on.
    let (_, status, _) = skiff_in(&dev, project.path(), &[], &["rollout", "status", "again"]);
    assert!(
        status.contains("paused") && status.contains("1 of 2 instances failed"),
        "{status}"
    );
    let (ok, _, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["rollout", "pause", "again", "web"],
    );
    assert!(!ok && err.contains("is paused: nothing to pause"), "{err}");
    let (ok, out, err) = skiff_in(&dev, project.path(), &[], &["rollout", "resume", "again"]);
    assert!(ok && out.contains("web: release 2 running"), "{out}{err}");
}

#[test]
fn rollback_runs_the_previous_release_again_as_a_new_one_and_waits_for_it() {
    let (project, _data, dev) = fresh();
    up(&dev, project.path(), "2");
    write_broken_web(project.path());
    let (ok, _, _) = skiff_in(
        &dev,
        project.path(),
        &[("N", "2")],
        &["up", "--timeout", "60"],
    );
    assert!(!ok, "release 2 pauses");
    let (ok, out, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["rollback", "again", "--timeout", "30"],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("release 3 recorded (rolling back)") && out.contains("healthy"),
        "{out}"
    );
    assert_eq!(releases(&dev), 3, "a rollback is a new release");
    let (_, ps, _) = skiff_in(&dev, project.path(), &[], &["ps"]);
    let web: Vec<&str> = ps.lines().filter(|l| l.starts_with("web-")).collect();
    assert!(
        web.len() == 2 && web.iter().all(|l| l.contains("healthy")),
        "{ps}"
    );
    // Nothing before release 1; the current one is not a target.
    let (ok, _, err) = skiff_in(
        &dev,
        project.path(),
        &[],
        &["rollback", "again", "--to", "3"],
    );
    assert!(
        !ok && err.contains("release 3 is the one stack default/again runs"),
        "{err}"
    );
}
