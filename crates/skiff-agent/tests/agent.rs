//! The agent against real processes: dependency order gated on health, restart policy,
//! down, and adoption by a new agent without duplicates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_agent::{Agent, Config};
use skiff_driver_process::ShimCommand;
use skiff_model::{
    Author, Cause, HealthSpec, InstanceState, RestartCondition, RestartPolicy, ServiceSpec,
    StackKey, StackSpec, WaitFor,
};
use skiff_store::{AnyKv, MemKv, Store};

#[test]
#[ignore = "subprocess: the shim of the other tests"]
fn shim_entry() {
    let dir = std::env::args().next_back().expect("instance dir");
    std::process::exit(skiff_driver_process::shim::run(Path::new(&dir)));
}

/// The server side an agent talks to: the real API and control plane over loopback HTTP,
/// on `store`.
struct Server {
    client: skiff_client::Client,
    control: Arc<skiff_control::Control>,
}

async fn serve(store: &Store) -> Server {
    let catalog = skiff_catalog::Catalog::new();
    let control = skiff_control::Control::open(
        store.clone(),
        catalog.clone(),
        skiff_control::Config {
            // Agents of parallel tests each get stable addresses of their own.
            service_addresses: {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("127.{}.{}.0/24", 178 + std::process::id() % 70, n % 256)
                    .parse()
                    .unwrap()
            },
            ..skiff_control::Config::default()
        },
    )
    .await
    .unwrap();
    tokio::spawn(control.clone().run(std::future::pending::<()>()));
    let app = skiff_api::router(skiff_api::ApiState {
        store: store.clone(),
        control: control.clone(),
        instances: Arc::new(skiff_api::ViaAgents::new(control.clone())),
        docker_unavailable: None,
        catalog,
        zone: skiff_dns::Zone::new("skiff", 0).unwrap(),
        routes: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        client: skiff_client::Client::new(&format!("http://{addr}")).unwrap(),
        control,
    }
}

fn config(data: &Path, server: &Server) -> Config {
    let exe = std::env::current_exe().unwrap().display().to_string();
    Config {
        data_dir: data.to_path_buf(),
        node_addr: "127.0.0.1".parse().unwrap(),
        shim: ShimCommand(vec![
            exe,
            "--exact".into(),
            "shim_entry".into(),
            "--ignored".into(),
            "--quiet".into(),
        ]),
        resync: Duration::from_millis(50),
        base_env: BTreeMap::new(),
        // Agents of parallel tests run the same stack names: one subtree per data dir.
        cgroups: skiff_cgroup::Cgroups::detect(&format!(
            "skiff-test/{}",
            data.file_name().unwrap().to_string_lossy()
        )),
        docker: Err(skiff_driver_docker::Error::Unreachable(
            "these tests run processes".into(),
        )),
        server: server.client.clone(),
        node_name: "test".into(),
        agent_port: 0,
        labels: BTreeMap::new(),
        catalog: None,
    }
}

fn service(script: &str, replicas: u32) -> ServiceSpec {
    ServiceSpec {
        driver: skiff_model::Driver::Process,
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        replicas,
        stop_signal: "SIGTERM".into(),
        stop_grace: Duration::from_secs(2),
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: None,
            delay: Duration::from_millis(50),
            window: Duration::ZERO,
        },
        ..ServiceSpec::default()
    }
}

fn stack() -> StackKey {
    StackKey::new("default", "shop").unwrap()
}

/// A store in memory with one release of `spec`.
async fn with_release(spec: StackSpec) -> Store {
    let store = Store::open(AnyKv::Mem(MemKv::new()), "t").await.unwrap();
    store
        .create_release(
            &stack(),
            spec,
            String::new(),
            0,
            Author::unknown(),
            Cause::Up,
        )
        .await
        .unwrap();
    store
}

/// A store with one release of `stack()`: the single service `name`.
async fn one_service(name: &str, spec: ServiceSpec) -> Store {
    with_release(StackSpec {
        services: BTreeMap::from([(name.to_string(), spec)]),
        batches: vec![vec![name.to_string()]],
        values: Default::default(),
    })
    .await
}

/// An agent run in the background, as `skiff dev` runs it (stopping everything at the end).
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(agent: &Arc<Agent>) -> Running {
        let agent = agent.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            agent
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    true,
                )
                .await
                .unwrap()
        });
        Running { stop, run }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.run.await.unwrap();
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn states(agent: &Agent, service: &str) -> Vec<InstanceState> {
    agent
        .snapshot()
        .into_iter()
        .filter(|(i, _)| i.service == service)
        .map(|(_, s)| s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_start_only_after_their_dependency_is_healthy() {
    let data = tempfile::tempdir().unwrap();
    let mark = data.path().join("db-ready");
    let mut db = service(
        &format!("sleep 0.4; touch {}; sleep 100", mark.display()),
        1,
    );
    db.health = Some(HealthSpec {
        test: vec!["CMD-SHELL".into(), format!("test -f {}", mark.display())],
        http: None,
        tcp: None,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        retries: 1,
        start_period: Duration::ZERO,
        start_interval: Duration::from_millis(50),
    });
    let mut api = service("sleep 100", 2);
    api.depends_on = BTreeMap::from([("db".to_string(), WaitFor::Healthy)]);
    let spec = StackSpec {
        services: BTreeMap::from([("db".into(), db), ("api".into(), api)]),
        batches: vec![vec!["db".into()], vec!["api".into()]],
        values: Default::default(),
    };
    let store = with_release(spec).await;
    let server = serve(&store).await;
    let agent = Agent::new(config(data.path(), &server)).unwrap();
    let running = Running::start(&agent);

    wait_until("db running", Duration::from_secs(5), async || {
        !states(&agent, "db").is_empty()
    })
    .await;
    // While db is not healthy, no api instance may exist.
    while states(&agent, "db") != vec![InstanceState::Healthy] {
        assert!(
            states(&agent, "api").is_empty(),
            "api started before db was healthy"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until(
        "two healthy api instances",
        Duration::from_secs(5),
        async || states(&agent, "api") == vec![InstanceState::Healthy, InstanceState::Healthy],
    )
    .await;
    agent.flush_reports().await;
    let listed = store.instances(Some(&stack())).await.unwrap();
    assert_eq!(listed.len(), 3);

    running.stop().await;
    assert!(
        agent.snapshot().is_empty(),
        "skiff dev shutdown leaves nothing running"
    );
    assert!(
        std::fs::read_dir(data.path().join("instances/default/shop"))
            .map_or(true, |d| d.count() == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_restarted_until_the_policy_gives_up() {
    let data = tempfile::tempdir().unwrap();
    let mut crash = service("sleep 0.05; exit 1", 1);
    crash.restart = RestartPolicy {
        condition: RestartCondition::OnFailure,
        max_attempts: Some(2),
        delay: Duration::from_millis(20),
        window: Duration::ZERO,
    };
    let store = one_service("crash", crash).await;
    let server = serve(&store).await;
    let agent = Agent::new(config(data.path(), &server)).unwrap();
    let running = Running::start(&agent);
    wait_until(
        "the policy to give up",
        Duration::from_secs(10),
        async || states(&agent, "crash") == vec![InstanceState::Failed],
    )
    .await;
    agent.flush_reports().await;
    let inst = &store.instances(Some(&stack())).await.unwrap()[0];
    assert_eq!((inst.restarts, inst.exit_code), (2, Some(1)));
    let events = store.events_after(0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "exited" && e.message.contains("not restarting"))
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_adopts_running_instances_without_duplicates_and_down_stops_them() {
    let data = tempfile::tempdir().unwrap();
    let store = one_service("web", service("sleep 100", 3)).await;
    let server = serve(&store).await;

    // First agent: starts three instances, then "dies" without stopping them.
    let first = Agent::new(config(data.path(), &server)).unwrap();
    let (tx1, rx1) = tokio::sync::oneshot::channel::<()>();
    let run1 = tokio::spawn(first.clone().run(
        async {
            let _ = rx1.await;
        },
        false,
    ));
    wait_until("three running", Duration::from_secs(5), async || {
        states(&first, "web")
            .iter()
            .filter(|s| **s == InstanceState::Healthy)
            .count()
            == 3
    })
    .await;
    first.flush_reports().await;
    let pids: Vec<Option<u32>> = store
        .instances(None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.pid)
        .collect();
    tx1.send(()).unwrap();
    run1.await.unwrap().unwrap();

    // Second agent: same data dir; must adopt, not start new ones.
    let second = Agent::new(config(data.path(), &server)).unwrap();
    let (tx2, rx2) = tokio::sync::oneshot::channel::<()>();
    let run2 = tokio::spawn(second.clone().run(
        async {
            let _ = rx2.await;
        },
        true,
    ));
    wait_until("three adopted", Duration::from_secs(5), async || {
        states(&second, "web")
            .iter()
            .filter(|s| **s == InstanceState::Healthy)
            .count()
            == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    second.flush_reports().await;
    let after: Vec<Option<u32>> = store
        .instances(None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.pid)
        .collect();
    assert_eq!(pids, after, "adopted instances keep their pids");
    assert!(
        store
            .events_after(0, 100)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == "started")
            .count()
            == 3
    );

    // Down: the desired release goes away, everything stops.
    store.set_current(&stack(), None).await.unwrap();
    server.control.changed();
    wait_until("all stopped", Duration::from_secs(5), async || {
        second.snapshot().is_empty()
    })
    .await;
    for pid in pids.into_iter().flatten() {
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err()
                || is_zombie(pid)
        );
    }
    tx2.send(()).unwrap();
    run2.await.unwrap().unwrap();
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_restarts_after_its_back_off_not_at_the_next_resync() {
    let data = tempfile::tempdir().unwrap();
    let store = one_service("web", service("sleep 100", 1)).await;
    let server = serve(&store).await;
    let mut cfg = config(data.path(), &server);
    cfg.resync = Duration::from_secs(30);
    let agent = Agent::new(cfg).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(agent.clone().run(
        async {
            let _ = rx.await;
        },
        true,
    ));
    wait_until("running", Duration::from_secs(5), async || {
        states(&agent, "web") == vec![InstanceState::Healthy]
    })
    .await;
    agent.flush_reports().await;
    let pid = store.instances(None).await.unwrap()[0].pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    wait_until("restarted", Duration::from_secs(5), async || {
        store
            .instances(None)
            .await
            .unwrap()
            .first()
            .is_some_and(|i| i.restarts == 1 && i.state == InstanceState::Healthy)
    })
    .await;
    // Back-off is 50 ms here; resync is 30 s, so only the back-off timer can explain this.
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "restart took {:?}",
        killed.elapsed()
    );
    tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_to_the_workload_and_an_oom_kill_is_an_event_with_the_reason() {
    if std::env::var_os("SKIFF_TEST_NO_CGROUPS").is_some() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut capped = service("sleep 100", 1);
    capped.limits = skiff_model::ResourceLimits {
        memory_bytes: Some(48 << 20),
        cpus: Some(0.5),
        pids: Some(20),
    };
    // `tail` holds a line until its end: 256 MiB without a newline.
    let mut hog = service("head -c 268435456 /dev/zero | tail -n 1", 1);
    hog.limits.memory_bytes = Some(32 << 20);
    hog.restart.condition = RestartCondition::Never;
    let spec = StackSpec {
        services: BTreeMap::from([("capped".into(), capped), ("hog".into(), hog)]),
        batches: vec![vec!["capped".into(), "hog".into()]],
        values: Default::default(),
    };
    let store = with_release(spec).await;
    let server = serve(&store).await;
    let cfg = config(data.path(), &server);
    let cgroups = cfg
        .cgroups
        .as_ref()
        .expect("cgroups on this machine")
        .clone();
    let agent = Agent::new(cfg).unwrap();
    let running = Running::start(&agent);
    wait_until(
        "hog to be OOM killed",
        Duration::from_secs(10),
        async || states(&agent, "hog") == vec![InstanceState::Failed],
    )
    .await;
    agent.flush_reports().await;
    let events = store.events_after(0, 100).await.unwrap();
    let oom = events
        .iter()
        .find(|e| e.kind == "oom_killed")
        .unwrap_or_else(|| panic!("no oom_killed event in {events:#?}"));
    assert!(
        oom.message.contains("out of memory: limit 32 MiB"),
        "{}",
        oom.message
    );
    let hog = store
        .instances(Some(&stack()))
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id.service == "hog")
        .unwrap();
    assert!(
        hog.reason
            .as_deref()
            .unwrap_or("")
            .contains("out of memory"),
        "{hog:?}"
    );

    // The running workload is inside its group, whose files hold the limits.
    agent.flush_reports().await;
    let capped = store
        .instances(Some(&stack()))
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.id.service == "capped")
        .unwrap();
    let group = cgroups.open("default/shop/capped-1").unwrap();
    assert!(
        group.pids().contains(&(capped.pid.unwrap() as i32)),
        "pid {:?} not in {:?}",
        capped.pid,
        group.pids()
    );
    assert_eq!(group.stats().memory_limit_bytes, Some(48 << 20));
    let dirs: Vec<_> = group.dirs().map(Path::to_path_buf).collect();
    let read = |file: &str| {
        dirs.iter()
            .map(|d| d.join(file))
            .find(|f| f.exists())
            .map(|f| std::fs::read_to_string(f).unwrap().trim().to_string())
    };
    assert_eq!(read("cpu.cfs_quota_us").as_deref(), Some("50000"));
    assert_eq!(read("pids.max").as_deref(), Some("20"));

    running.stop().await;
    assert!(
        group.dirs().all(|d| !d.exists()),
        "groups are removed with their instances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_during_a_hanging_probe_is_seen_at_once_not_at_the_probe_timeout() {
    let data = tempfile::tempdir().unwrap();
    let mut web = service("sleep 100", 1);
    // The readiness probe hangs for 60 s; the exit must not wait for it.
    web.health = Some(HealthSpec {
        test: vec!["CMD-SHELL".into(), "sleep 60".into()],
        http: None,
        tcp: None,
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        retries: 1,
        start_period: Duration::ZERO,
        start_interval: Duration::from_millis(50),
    });
    let store = one_service("web", web).await;
    let server = serve(&store).await;
    let agent = Agent::new(config(data.path(), &server)).unwrap();
    let running = Running::start(&agent);
    let first_pid = async || {
        store
            .instances(None)
            .await
            .unwrap()
            .first()
            .and_then(|i| i.pid.filter(|_| i.restarts == 0))
    };
    wait_until("started", Duration::from_secs(5), async || {
        first_pid().await.is_some()
    })
    .await;
    let pid = first_pid().await.unwrap();
    // Let the probe begin hanging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the exit recorded while the probe still hangs",
        Duration::from_secs(10),
        async || {
            store
                .instances(None)
                .await
                .unwrap()
                .first()
                .is_some_and(|i| i.restarts >= 1)
        },
    )
    .await;
    running.stop().await;
}
