//! The process driver with real processes: the test binary itself serves as the shim
//! (`shim_entry` below), exactly as `skiff __shim` does in production.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use skiff_driver_process::{DriverError, Instance, LaunchSpec, ShimCommand, Status};

/// Shim mode: the instance directory is the last argument.
#[test]
#[ignore = "subprocess: the shim of the other tests"]
fn shim_entry() {
    let dir = std::env::args().next_back().expect("instance dir");
    std::process::exit(skiff_driver_process::shim::run(Path::new(&dir)));
}

fn shim() -> ShimCommand {
    let exe = std::env::current_exe().unwrap().display().to_string();
    ShimCommand(vec![
        exe,
        "--exact".into(),
        "shim_entry".into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--quiet".into(),
    ])
}

fn spec(dir: &Path, script: &str) -> LaunchSpec {
    LaunchSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::from([("FOO".to_string(), "bar".to_string())]),
        cwd: dir.join("work"),
        max_log_bytes: 1 << 20,
        keep_logs: 2,
        cgroup_procs: Vec::new(),
    }
}

fn log(i: &Instance) -> String {
    std::fs::read_to_string(i.log_path()).unwrap_or_default()
}

fn wait_for_log(i: &Instance, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log(i).contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} never appeared in {:?}",
            log(i)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Live (not zombie) processes in process group `pgid`, from /proc.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name: state ppid pgrp …
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

fn exited(s: Option<Status>) -> skiff_driver_process::ExitStatus {
    match s {
        Some(Status::Exited(e)) => e,
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[test]
fn a_workload_runs_with_its_env_and_cwd_and_its_output_is_logged() {
    let d = tempfile::tempdir().unwrap();
    let i = Instance::start(
        &shim(),
        d.path(),
        &spec(
            d.path(),
            "echo out; echo err >&2; pwd; echo FOO=$FOO; exit 7",
        ),
    )
    .unwrap();
    let e = exited(i.wait_exit(Duration::from_secs(5)));
    assert_eq!(e.code, Some(7));
    let out = log(&i);
    let records: Vec<(char, String)> = out
        .lines()
        .map(|l| {
            let r = skiff_driver_process::parse_log_line(l)
                .unwrap_or_else(|| panic!("bad record {l:?}"));
            (r.stream, r.text.to_string())
        })
        .collect();
    assert!(records.contains(&('o', "out".into())), "{records:?}");
    assert!(records.contains(&('e', "err".into())), "{records:?}");
    assert!(records.contains(&('o', "FOO=bar".into())), "{records:?}");
    assert!(
        records
            .iter()
            .any(|(s, t)| *s == 'o' && t.ends_with("/work")),
        "{records:?}"
    );
}

#[test]
fn stop_signals_the_whole_process_group_and_leaves_nothing_of_it_running() {
    let d = tempfile::tempdir().unwrap();
    let i = Instance::start(
        &shim(),
        d.path(),
        &spec(
            d.path(),
            "trap 'echo got TERM; exit 0' TERM; echo ready; sleep 100 & wait",
        ),
    )
    .unwrap();
    assert_eq!(i.status(), Status::Running);
    wait_for_log(&i, "ready");
    let e = match i.stop(Signal::SIGTERM, Duration::from_secs(5)).unwrap() {
        Status::Exited(e) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.code, Some(0), "{e:?}");
    assert!(log(&i).contains("got TERM"));
    // The background sleep was in the group too: nothing of it is left running.
    // Signals are delivered asynchronously: give the kernel a moment to finish the kills.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !live_members(i.pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(live_members(i.pid), Vec::<i32>::new());
}

#[test]
fn a_workload_that_ignores_the_stop_signal_is_killed_after_the_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let i = Instance::start(
        &shim(),
        d.path(),
        &spec(
            d.path(),
            "trap '' TERM; echo ready; while true; do sleep 0.05; done",
        ),
    )
    .unwrap();
    wait_for_log(&i, "ready");
    let started = Instant::now();
    let e = match i.stop(Signal::SIGTERM, Duration::from_millis(300)).unwrap() {
        Status::Exited(e) => e,
        other => panic!("{other:?}"),
    };
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(e.signal, Some(9), "{e:?}");
    assert_eq!(e.describe(), "killed by SIGKILL");
}

#[test]
fn a_new_agent_adopts_a_running_workload_from_its_directory() {
    let d = tempfile::tempdir().unwrap();
    let first = Instance::start(&shim(), d.path(), &spec(d.path(), "echo $$; sleep 100")).unwrap();
    drop(first.clone());
    let adopted = Instance::adopt(d.path()).unwrap();
    assert_eq!(adopted, first);
    assert_eq!(adopted.status(), Status::Running);
    adopted
        .stop(Signal::SIGTERM, Duration::from_secs(2))
        .unwrap();
    assert!(matches!(
        Instance::adopt(d.path()).unwrap().status(),
        Status::Exited(_)
    ));
    assert!(matches!(
        Instance::adopt(&d.path().join("nothing")),
        Err(DriverError::NotFound(_))
    ));
}

#[test]
fn a_missing_program_fails_to_start_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let mut s = spec(d.path(), "");
    s.argv = vec!["/nonexistent/program".into()];
    match Instance::start(&shim(), d.path(), &s) {
        Err(DriverError::Start(m)) => assert!(
            m.contains("/nonexistent/program") && m.contains("No such file"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_crash_by_signal_is_recorded_as_such() {
    let d = tempfile::tempdir().unwrap();
    let i = Instance::start(&shim(), d.path(), &spec(d.path(), "kill -SEGV $$")).unwrap();
    let e = exited(i.wait_exit(Duration::from_secs(5)));
    assert_eq!((e.code, e.signal), (None, Some(11)));
    assert_eq!(e.describe(), "killed by SIGSEGV");
}

#[test]
fn reload_by_signal_reaches_the_workload_without_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let i = Instance::start(
        &shim(),
        d.path(),
        &spec(
            d.path(),
            "trap 'echo reloaded' HUP; echo up; while true; do sleep 0.05; done",
        ),
    )
    .unwrap();
    wait_for_log(&i, "up");
    i.signal(Signal::SIGHUP).unwrap();
    wait_for_log(&i, "reloaded");
    assert_eq!(i.status(), Status::Running);
    i.stop(Signal::SIGKILL, Duration::from_secs(1)).unwrap();
}

#[test]
fn a_background_child_that_ignores_the_stop_signal_does_not_outlive_the_stop() {
    let d = tempfile::tempdir().unwrap();
    let i = Instance::start(
        &shim(),
        d.path(),
        &spec(
            d.path(),
            "(trap '' TERM; while true; do sleep 0.05; done) & echo ready; wait",
        ),
    )
    .unwrap();
    wait_for_log(&i, "ready");
    i.stop(Signal::SIGTERM, Duration::from_millis(200)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !live_members(i.pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(live_members(i.pid), Vec::<i32>::new());
}

#[test]
fn an_instance_of_an_older_shim_with_two_pid_files_is_adopted() {
    let d = tempfile::tempdir().unwrap();
    let sleeper = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    let pid = sleeper.id() as i32;
    std::fs::write(d.path().join("child.pid"), pid.to_string()).unwrap();
    std::fs::write(d.path().join("shim.pid"), "4194301").unwrap();
    let adopted = Instance::adopt(d.path()).unwrap();
    assert_eq!((adopted.pid, adopted.shim_pid), (pid, 4194301));
    assert_eq!(adopted.status(), Status::Running);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let mut sleeper = sleeper;
    sleeper.wait().unwrap();
}

#[test]
fn output_lines_are_stamped_split_when_too_long_and_kept_when_unfinished() {
    let d = tempfile::tempdir().unwrap();
    // stdout: a line, a 40,000-byte line, and a last line with no line break; stderr: one.
    let i = Instance::start(
        &shim(),
        d.path(),
        &spec(
            d.path(),
            "echo first; head -c 40000 /dev/zero | tr '\\0' x; echo; echo oops >&2; printf tail",
        ),
    )
    .unwrap();
    assert!(matches!(
        i.wait_exit(Duration::from_secs(5)),
        Some(Status::Exited(_))
    ));
    let text = log(&i);
    let records: Vec<_> = text
        .lines()
        .map(|l| skiff_driver_process::parse_log_line(l).expect("a log record"))
        .collect();
    let out: Vec<_> = records.iter().filter(|r| r.stream == 'o').collect();
    assert_eq!(out.first().map(|r| r.text), Some("first"));
    let xs: Vec<usize> = out[1..out.len() - 1].iter().map(|r| r.text.len()).collect();
    assert_eq!(xs, vec![16 * 1024, 16 * 1024, 40000 - 32 * 1024]);
    assert_eq!(out.last().map(|r| r.text), Some("tail"));
    assert!(records.iter().any(|r| r.stream == 'e' && r.text == "oops"));
}
