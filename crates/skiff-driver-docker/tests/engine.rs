//! The Docker driver against the real engine (Debian's docker.io; `scripts/test` installs and
//! starts it). A missing engine fails these tests; `SKIFF_TEST_NO_DOCKER=1` skips them
//! explicitly. The image is built here, through the driver, from a static skiff-demo and
//! busybox-static: no registry is involved.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use skiff_driver_docker::{ContainerSpec, Engine, State, labels};

const IMAGE: &str = "skiff-demo:test";

fn skip() -> bool {
    std::env::var_os("SKIFF_TEST_NO_DOCKER").is_some()
}

/// Builds the demo image through the driver (once per test binary).
async fn demo_image(engine: &Engine) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let ctx = tempfile::tempdir().unwrap();
        let dir = ctx.path().to_path_buf();
        tokio::task::spawn_blocking(move || skiff_driver_docker::testkit::demo_build_context(&dir))
            .await
            .unwrap();
        let mut lines = Vec::new();
        engine
            .build(ctx.path(), None, IMAGE, |l| lines.push(l.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    })
    .await;
}

/// An engine scoped to a cluster id of its own; its containers go when it is dropped.
struct Fixture {
    engine: Engine,
}

impl Fixture {
    async fn new(test: &str) -> Option<Fixture> {
        if skip() {
            eprintln!("SKIFF_TEST_NO_DOCKER set: skipped");
            return None;
        }
        let cluster = format!("test-{}-{test}", std::process::id());
        let engine = Engine::connect(&cluster)
            .await
            .expect("a running Docker engine (scripts/test starts dockerd)");
        demo_image(&engine).await;
        Some(Fixture { engine })
    }

    fn spec(&self, name: &str) -> ContainerSpec {
        ContainerSpec {
            name: format!("{}-{name}", self.engine.cluster()),
            image: IMAGE.into(),
            command: Some(vec!["--name".into(), name.into()]),
            env: BTreeMap::from([("PORT".to_string(), "8080".to_string())]),
            labels: BTreeMap::from([(labels::SERVICE.to_string(), name.to_string())]),
            ports: vec![("http".into(), 8080, "tcp".into())],
            host_ip: "127.0.0.1".into(),
            stop_signal: "SIGTERM".into(),
            stop_grace: Duration::from_secs(5),
            ..ContainerSpec::default()
        }
    }

    async fn cleanup(self) {
        for c in self.engine.list().await.unwrap() {
            self.engine.remove(&c.id).await.unwrap();
        }
        self.engine.remove_unused_networks().await.unwrap();
    }
}

impl Drop for Fixture {
    /// A failed assertion skips `cleanup`: remove what is left with the CLI.
    fn drop(&mut self) {
        let label = format!("label={}={}", labels::CLUSTER, self.engine.cluster());
        let kinds: [&[&str]; 2] = [&["ps", "-aq"], &["network", "ls", "-q"]];
        for kind in kinds {
            let ids = Command::new("docker")
                .args(kind)
                .args(["--filter", &label])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.split_whitespace() {
                let rm: &[&str] = if kind[0] == "ps" {
                    &["rm", "-f", "-v"]
                } else {
                    &["network", "rm"]
                };
                let _ = Command::new("docker").args(rm).arg(id).output();
            }
        }
    }
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split_once("\r\n\r\n")?.1.to_string()))
}

async fn wait_http(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = get(port, path) {
            return r;
        }
        assert!(Instant::now() < deadline, "nothing answers on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn docker_network_count(name: &str) -> usize {
    let out = Command::new("docker")
        .args(["network", "ls", "-q", "--filter", &format!("name=^{name}$")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

fn docker_inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn run_publishes_ports_on_loopback_and_applies_limits_without_swap() {
    let Some(fx) = Fixture::new("run").await else {
        return;
    };
    let mut spec = fx.spec("web");
    spec.memory_bytes = Some(64 << 20);
    spec.cpus = Some(0.5);
    spec.pids = Some(50);
    let c = fx.engine.run(&spec).await.unwrap();
    assert_eq!(c.ports.len(), 1);
    let (name, port) = &c.ports[0];
    assert_eq!(name, "http");
    let (code, body) = wait_http(*port, "/version").await;
    assert_eq!(code, 200, "{body}");
    assert!(c.pid.is_some());
    assert_eq!(c.labels[labels::CLUSTER], fx.engine.cluster());
    assert_eq!(
        docker_inspect(
            &c.id,
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} \
             {{.HostConfig.PidsLimit}}"
        ),
        "67108864 67108864 500000000 50"
    );
    assert_eq!(
        docker_inspect(
            &c.id,
            "{{(index .NetworkSettings.Ports \"8080/tcp\" 0).HostIp}}"
        ),
        "127.0.0.1"
    );
    let stats = fx.engine.stats(&c.id).await.unwrap();
    assert!(stats.memory_bytes.unwrap_or(0) > 0, "{stats:?}");
    assert_eq!(stats.memory_limit_bytes, Some(64 << 20));
    fx.cleanup().await;
}

#[tokio::test]
async fn stop_sends_the_stop_signal_then_kills_after_the_grace_period_and_removes() {
    let Some(fx) = Fixture::new("stop").await else {
        return;
    };
    let mut spec = fx.spec("stubborn");
    spec.command = Some(vec![
        "--name".into(),
        "stubborn".into(),
        "--ignore-sigterm".into(),
    ]);
    let c = fx.engine.run(&spec).await.unwrap();
    wait_http(c.ports[0].1, "/health").await;
    let started = Instant::now();
    let end = fx
        .engine
        .stop(&c.id, "SIGTERM", Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        matches!(end, State::Exited { code: 137, .. }),
        "killed after the grace period: {end:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(fx.engine.state(&c.id).await.unwrap(), State::Missing);

    // A cooperative one ends on the signal, well before its grace period.
    let c = fx.engine.run(&fx.spec("polite")).await.unwrap();
    wait_http(c.ports[0].1, "/health").await;
    let started = Instant::now();
    let end = fx
        .engine
        .stop(&c.id, "SIGTERM", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(end, State::Exited { code: 0, .. }), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    fx.cleanup().await;
}

#[tokio::test]
async fn logs_carry_timestamps_and_a_signal_reloads_without_restart() {
    let Some(fx) = Fixture::new("logs").await else {
        return;
    };
    let c = fx.engine.run(&fx.spec("talker")).await.unwrap();
    wait_http(c.ports[0].1, "/health").await;
    fx.engine.signal(&c.id, "SIGHUP").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<_> = fx
            .engine
            .logs(&c.id, 0, false)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        if lines.iter().any(|l| l.text == "reloaded") {
            let first = &lines[0];
            assert!(first.text.contains("listening on"), "{lines:?}");
            assert!(first.time_ms > 1_700_000_000_000, "{first:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no reload line: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fx.engine.state(&c.id).await.unwrap(), State::Running);
    // exec runs inside the container, with extra environment, and reports the exit code.
    let env = BTreeMap::from([("GREETING".to_string(), "hi".to_string())]);
    let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".into(), s.into()];
    let (code, out) = fx
        .engine
        .exec(&c.id, &sh("echo $GREETING from $PORT; exit 3"), &env)
        .await
        .unwrap();
    assert_eq!((code, out.trim()), (3, "hi from 8080"));
    // wait_exit returns once the container ends.
    fx.engine.signal(&c.id, "SIGTERM").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), fx.engine.wait_exit(&c.id))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, State::Exited { code: 0, .. }), "{end:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn an_oom_kill_is_reported_by_the_exit_state() {
    let Some(fx) = Fixture::new("oom").await else {
        return;
    };
    let mut spec = fx.spec("hog");
    spec.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
    spec.command = Some(vec![
        "/bin/busybox head -c 268435456 /dev/zero | /bin/busybox tail -n 1".into(),
    ]);
    spec.ports.clear();
    spec.memory_bytes = Some(32 << 20);
    let c = fx.engine.run(&spec).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let end = loop {
        let s = fx.engine.state(&c.id).await.unwrap();
        if matches!(s, State::Exited { .. }) {
            break s;
        }
        assert!(Instant::now() < deadline, "still {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(
            end,
            State::Exited {
                oom_killed: true,
                ..
            }
        ),
        "{end:?}"
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn containers_on_a_stack_network_reach_each_other_by_service_name() {
    let Some(fx) = Fixture::new("net").await else {
        return;
    };
    let net = format!("skiff_{}", fx.engine.cluster());
    fx.engine
        .ensure_network(&net, &BTreeMap::new())
        .await
        .unwrap();
    // 20 times at once (replicas starting together): one network, not 20 of one name.
    let fresh = format!("{net}-race");
    let labels = BTreeMap::new();
    let all =
        futures_util::future::join_all((0..20).map(|_| fx.engine.ensure_network(&fresh, &labels)))
            .await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(
        docker_network_count(&fresh),
        1,
        "ensure_network raced into duplicates"
    );
    let mut db = fx.spec("db");
    db.network = Some((net.clone(), vec!["db".into()]));
    let db = fx.engine.run(&db).await.unwrap();
    wait_http(db.ports[0].1, "/health").await;
    let mut client = fx.spec("client");
    client.network = Some((net.clone(), vec!["client".into()]));
    client.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
    client.command = Some(vec![
        "/bin/busybox wget -qO- http://db:8080/version; echo; sleep 30".into(),
    ]);
    client.ports.clear();
    let c = fx.engine.run(&client).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text: Vec<String> = fx
            .engine
            .logs(&c.id, 0, false)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter_map(Result::ok)
            .map(|l| l.text)
            .collect();
        if text.iter().any(|t| t.contains("db")) {
            break;
        }
        assert!(Instant::now() < deadline, "db not reached: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = fx.engine.list().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    fx.cleanup().await;
}

#[tokio::test]
async fn a_build_error_names_the_failing_step() {
    let Some(fx) = Fixture::new("build").await else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY missing-file /x\n",
    )
    .unwrap();
    let err = fx
        .engine
        .build(ctx.path(), None, "skiff-broken:test", |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing-file"), "{err}");
    fx.cleanup().await;
}
