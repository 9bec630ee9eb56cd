//! The contract battery (feature `testkit`, for the driver crates' tests): one suite every
//! [`Driver`] passes against its real runtime — no mocks.
//!
//! A driver's test builds a [`Fixture`] (how to make a fresh driver value of one scope, and a
//! service running a `/bin/sh` script with that driver) and calls [`contract`]:
//!
//! ```text
//! start ─▶ running with a pid ─▶ exec (code, output) ─▶ signal reaches it ─▶ logs hold its
//! output ─▶ stats ─▶ a fresh driver lists and adopts it ─▶ stop: SIGTERM ignored, killed after
//! the grace ─▶ the first handle sees the end ─▶ wait reports an exit code ─▶ a cooperative
//! stop is quick ─▶ a workload that cannot start is an error
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use skiff_model::{InstanceId, ServiceSpec, StackKey};
use tokio::time::Instant;

use crate::{AdoptRequest, Driver, Ended, Signal, StartRequest, State, Workload, log};

/// What the battery needs of one driver.
pub struct Fixture {
    /// A fresh driver value of the same scope every call: an agent restarted.
    pub driver: Box<dyn Fn() -> Arc<dyn Driver> + Send + Sync>,
    /// A service that runs `argv` (a `/bin/sh -c` script) with this driver.
    pub service: Box<dyn Fn(Vec<String>) -> ServiceSpec + Send + Sync>,
    /// Instance directories go to `<root>/<env>/<stack>/<instance>`.
    pub root: PathBuf,
}

const STEP: Duration = Duration::from_secs(20);

/// Runs the whole battery; panics with what broke the contract.
pub async fn contract(f: &Fixture) {
    let driver = (f.driver)();
    long_running_workload(f, &driver).await;
    exit_code(f, &driver).await;
    cooperative_stop(f, &driver).await;
    failed_start(f, &driver).await;
}

fn instance(name: &str) -> InstanceId {
    InstanceId {
        stack: StackKey::new("test", "contract").expect("valid stack key"),
        service: name.to_string(),
        index: 1,
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn dir_of(f: &Fixture, id: &InstanceId) -> PathBuf {
    f.root
        .join(&id.stack.env)
        .join(&id.stack.stack)
        .join(id.short())
}

async fn start(f: &Fixture, driver: &Arc<dyn Driver>, name: &str, script: &str) -> Started {
    let id = instance(name);
    let spec = ServiceSpec {
        stop_signal: "SIGTERM".into(),
        stop_grace: Duration::from_secs(1),
        ..(f.service)(sh(script))
    };
    let dir = dir_of(f, &id);
    let env = BTreeMap::from([("FOO".to_string(), "bar".to_string())]);
    let listen_ports = driver.listen_ports(&spec).expect("listen ports");
    let recorded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mark = recorded.clone();
    let req = StartRequest {
        instance: id.clone(),
        release: 1,
        spec: spec.clone(),
        dir: dir.clone(),
        env: env.clone(),
        listen_ports,
        events: Arc::new(|_, _, _| {}),
        before_start: Some(Box::new(move || {
            mark.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })),
    };
    let workload = within("start", driver.start(req))
        .await
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    assert!(
        recorded.load(std::sync::atomic::Ordering::SeqCst),
        "the driver ran the before-start hook"
    );
    Started {
        id,
        spec,
        dir,
        env,
        workload,
    }
}

struct Started {
    id: InstanceId,
    spec: ServiceSpec,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    workload: Arc<dyn Workload>,
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

/// Waits until `check` holds (every 20 ms, at most [`STEP`]).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {STEP:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(log::LOG)).unwrap_or_default()
}

fn has_record(dir: &Path, stream: char, text: &str) -> bool {
    log_text(dir)
        .lines()
        .filter_map(log::parse_log_line)
        .any(|r| r.stream == stream && r.text == text && r.time_ms > 0)
}

/// Start, pid, exec, signal, logs, stats, adoption by a fresh driver, stop after the grace.
async fn long_running_workload(f: &Fixture, driver: &Arc<dyn Driver>) {
    let s = start(
        f,
        driver,
        "stubborn",
        "trap 'echo got-hup' HUP; trap '' TERM; echo hello-out; echo hello-err >&2; \
         while :; do sleep 0.1; done",
    )
    .await;
    let w = &s.workload;

    // Running, with a pid.
    assert_eq!(within("status", w.status()).await, State::Running);
    let pid = w.pid().expect("a running workload has a pid");
    assert!(pid > 1, "pid {pid}");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} is a live process on the host"
    );

    // Exec: exit code and output, in the workload's environment.
    let out = within("exec", w.exec(&sh("echo exec-$FOO; echo oops >&2; exit 3")))
        .await
        .expect("exec runs");
    assert_eq!(out.exit_code, 3, "{out:?}");
    assert!(out.output.contains("exec-bar"), "{out:?}");
    assert!(out.output.contains("oops"), "{out:?}");

    // Logs: both streams, in the shared format.
    let logs = w.log_dir();
    eventually("stdout and stderr in the log", || {
        has_record(&logs, 'o', "hello-out") && has_record(&logs, 'e', "hello-err")
    })
    .await;

    // A signal reaches it.
    within("signal", w.signal(Signal::SIGHUP))
        .await
        .expect("signal");
    eventually("the HUP trap's output in the log", || {
        has_record(&logs, 'o', "got-hup")
    })
    .await;

    // Stats.
    match within("stats", w.stats()).await {
        Ok(st) => {
            assert!(
                st.pids.is_some() || st.memory_bytes.is_some() || st.cpu_ns.is_some(),
                "stats say something: {st:?}"
            );
            assert!(st.pids.is_none_or(|p| p >= 1), "{st:?}");
        }
        Err(crate::Error::Unsupported { what }) => {
            eprintln!("contract: {what} not available here; stats not checked");
        }
        Err(e) => panic!("stats: {e}"),
    }

    // A fresh driver (the agent restarted) lists and adopts it.
    let again = (f.driver)();
    let listed = within("list", again.list()).await.expect("list");
    assert!(
        listed
            .iter()
            .any(|l| Some(l.id.as_str()) == w.id() || l.dir.as_deref() == Some(s.dir.as_path())),
        "{listed:?} holds {:?} ({})",
        w.id(),
        s.dir.display()
    );
    let adopted = within(
        "adopt",
        again.adopt(AdoptRequest {
            instance: s.id.clone(),
            spec: s.spec.clone(),
            dir: s.dir.clone(),
            id: w.id().map(str::to_string),
            env: s.env.clone(),
            ports: w.ports().to_vec(),
        }),
    )
    .await
    .expect("adopt");
    assert_eq!(adopted.pid(), Some(pid), "the adopted workload is the same");
    assert_eq!(within("status", adopted.status()).await, State::Running);
    let exec = within("exec", adopted.exec(&sh("echo again-$FOO")))
        .await
        .expect("exec in the adopted workload");
    assert!(exec.output.contains("again-bar"), "{exec:?}");

    // Stop: SIGTERM is ignored, so SIGKILL after the grace.
    let grace = Duration::from_secs(1);
    let t0 = Instant::now();
    let ended = within("stop", adopted.stop(Signal::SIGTERM, grace))
        .await
        .expect("stop");
    let took = t0.elapsed();
    assert!(
        took >= grace - Duration::from_millis(100),
        "stopped after {took:?}, before the grace of {grace:?} ended: {ended:?}"
    );
    assert!(killed(&ended), "killed by SIGKILL: {ended:?}");
    // The first handle sees the end too.
    let seen = within("wait", w.wait()).await;
    assert!(killed(&seen), "{seen:?}");
    assert!(matches!(
        within("status", w.status()).await,
        State::Ended(_)
    ));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "pid {pid} is gone"
    );
    // Stopping again is fine.
    within("stop", adopted.stop(Signal::SIGTERM, grace))
        .await
        .expect("a second stop");
    within("release", adopted.release()).await.expect("release");
}

fn killed(e: &Ended) -> bool {
    e.exit.signal == Some(Signal::SIGKILL as i32) || e.exit.code == Some(128 + 9)
}

/// Wait reports the exit code of a workload that ends by itself.
async fn exit_code(f: &Fixture, driver: &Arc<dyn Driver>) {
    let s = start(f, driver, "exits", "echo bye; sleep 0.2; exit 7").await;
    let ended = within("wait", s.workload.wait()).await;
    assert_eq!(ended.exit.code, Some(7), "{ended:?}");
    assert!(!ended.exit.success());
    assert!(!ended.oom_killed);
    assert_eq!(
        within("status", s.workload.status()).await,
        State::Ended(ended.clone())
    );
    let logs = s.workload.log_dir();
    eventually("its output in the log", || has_record(&logs, 'o', "bye")).await;
    within(
        "stop",
        s.workload.stop(Signal::SIGTERM, Duration::from_secs(1)),
    )
    .await
    .expect("stopping an ended workload");
    within("release", s.workload.release())
        .await
        .expect("release");
}

/// A workload that acts on its stop signal ends well before the grace.
async fn cooperative_stop(f: &Fixture, driver: &Arc<dyn Driver>) {
    let s = start(
        f,
        driver,
        "polite",
        "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.1; done",
    )
    .await;
    let logs = s.workload.log_dir();
    eventually("ready", || has_record(&logs, 'o', "ready")).await;
    let t0 = Instant::now();
    let ended = within(
        "stop",
        s.workload.stop(Signal::SIGTERM, Duration::from_secs(30)),
    )
    .await
    .expect("stop");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(ended.exit.code, Some(0), "{ended:?}");
    within("release", s.workload.release())
        .await
        .expect("release");
}

/// A program that does not exist is a start error, not a workload.
async fn failed_start(f: &Fixture, driver: &Arc<dyn Driver>) {
    let id = instance("missing");
    let spec = (f.service)(vec!["/nonexistent/program".into()]);
    let req = StartRequest {
        instance: id.clone(),
        release: 1,
        listen_ports: driver.listen_ports(&spec).expect("listen ports"),
        spec,
        dir: dir_of(f, &id),
        env: BTreeMap::new(),
        events: Arc::new(|_, _, _| {}),
        before_start: None,
    };
    match within("start", driver.start(req)).await {
        Ok(w) => panic!("a missing program started: {w:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
