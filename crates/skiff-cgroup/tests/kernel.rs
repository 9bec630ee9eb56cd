//! Limits enforced by the real kernel on this machine's cgroups (v1 hybrid in CI, as root).
//! A machine without usable cgroups fails these tests; `SKIFF_TEST_NO_CGROUPS=1` skips them
//! explicitly (e.g. an unprivileged laptop).

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_cgroup::{Cgroups, Group, Limits};

fn cgroups() -> Option<Cgroups> {
    if std::env::var_os("SKIFF_TEST_NO_CGROUPS").is_some() {
        eprintln!("SKIFF_TEST_NO_CGROUPS set: skipped");
        return None;
    }
    Some(Cgroups::detect("skiff-test").expect("cgroups on this machine"))
}

/// A unique group name per test and run.
fn name(test: &str) -> String {
    format!("{}-{}/{test}-1", std::process::id(), test)
}

/// `sh -c <script>` that first joins `group` (a shell builtin writing `0` moves the shell).
fn spawn_in(group: &Group, script: &str) -> Child {
    let join: String = group
        .procs_files()
        .iter()
        .map(|f| format!("echo 0 > '{}' || exit 97; ", f.display()))
        .collect();
    Command::new("sh")
        .arg("-c")
        .arg(format!("{join}{script}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn memory_limit_oom_kills_the_workload_and_is_counted() {
    let Some(cg) = cgroups() else { return };
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let group = cg.create(&name("oom"), &limits).unwrap();
    assert_eq!(group.stats().memory_limit_bytes, Some(32 << 20));
    // `tail` keeps a line in memory until its end: 256 MiB without a newline.
    let child = spawn_in(&group, "head -c 268435456 /dev/zero | tail -n 1 >/dev/null");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the pipeline fit in 32 MiB?");
    assert!(group.oom_kills() >= 1, "no OOM kill counted: {out:?}");
    group.remove().unwrap();
    assert!(group.dirs().all(|d| !d.exists()));
}

#[test]
fn pids_limit_makes_forks_fail() {
    let Some(cg) = cgroups() else { return };
    let limits = Limits {
        pids: Some(8),
        ..Limits::default()
    };
    let group = cg.create(&name("pids"), &limits).unwrap();
    let child = spawn_in(
        &group,
        "i=0; while [ $i -lt 20 ]; do sleep 3 & i=$((i+1)); done; wait",
    );
    // The kernel counts refused forks in pids.events ("max N").
    let events = group
        .dirs()
        .map(|d| d.join("pids.events"))
        .find(|f| f.exists())
        .unwrap();
    let refused = || {
        std::fs::read_to_string(&events)
            .unwrap()
            .trim()
            .trim_start_matches("max ")
            .parse::<u64>()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused() > 0, "no fork was refused");
    let n = group.stats().pids.unwrap();
    assert!(
        (2..=8).contains(&n),
        "{n} processes in a group limited to 8"
    );
    group.kill_all(Duration::from_secs(5)).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fork"), "no fork failure reported: {err}");
    group.remove().unwrap();
}

#[test]
fn cpu_quota_caps_a_busy_loop() {
    let Some(cg) = cgroups() else { return };
    let limits = Limits {
        cpus: Some(0.2),
        ..Limits::default()
    };
    let group = cg.create(&name("cpu"), &limits).unwrap();
    let mut child = spawn_in(&group, "exec sh -c 'while :; do :; done'");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let ticks = cpu_ticks(child.id());
    let wall = started.elapsed().as_secs_f64();
    let counted = group.stats().cpu_ns.expect("cpu usage of the group") as f64 / 1e9;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    // Clock ticks are 1/100 s on Linux.
    let used = ticks as f64 / 100.0;
    assert!(
        used <= wall * 0.35,
        "a 0.2-CPU quota used {used:.2} s of CPU in {wall:.2} s"
    );
    // The group's own account agrees with the process's (within a tick or two).
    assert!(
        (counted - used).abs() < 0.05 && counted > 0.1,
        "group counted {counted:.3} s, the process used {used:.3} s"
    );
    group.remove().unwrap();
}

#[test]
fn remove_kills_processes_that_left_the_process_group() {
    let Some(cg) = cgroups() else { return };
    let group = cg.create(&name("escape"), &Limits::default()).unwrap();
    // A daemon that starts its own session: process-group signals no longer reach it.
    let mut child = spawn_in(&group, "setsid sleep 300 & wait");
    let deadline = Instant::now() + Duration::from_secs(5);
    while group.pids().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = group.pids();
    assert!(pids.len() >= 2, "{pids:?}");
    group.remove().unwrap();
    assert!(group.pids().is_empty());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z "),
            "pid {pid} survived"
        );
    }
    let _ = child.wait();
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_frozen_group_keeps_its_processes_but_runs_none_until_thawed() {
    let Some(cg) = cgroups() else { return };
    let group = cg.create(&name("freeze"), &Limits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("n");
    let mut child = spawn_in(
        &group,
        &format!(
            "i=0; while true; do i=$((i+1)); echo $i > '{}'; sleep 0.005; done",
            counter.display()
        ),
    );
    let read = || std::fs::read_to_string(&counter).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read().trim().parse::<u64>().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "the loop never counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    group.freeze(Duration::from_secs(5)).unwrap();
    assert!(group.frozen().unwrap());
    let pids = group.pids();
    assert!(!pids.is_empty());
    let at_freeze = read();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(read(), at_freeze, "a frozen group went on writing");
    assert_eq!(group.pids(), pids, "freezing changed the group's processes");
    group.thaw(Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read() == at_freeze {
        assert!(
            Instant::now() < deadline,
            "a thawed group did not run again"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    group.remove().unwrap();
}
