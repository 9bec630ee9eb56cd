use std::collections::BTreeMap;

use skiff_model::{Author, Cause, Driver, NodeResources, PortSpec, StackSpec};
use skiff_store::MemKv;

use super::*;

fn stack() -> StackKey {
    StackKey::new("default", "shop").unwrap()
}

fn service(replicas: u32, deps: &[(&str, WaitFor)]) -> ServiceSpec {
    ServiceSpec {
        driver: Driver::Process,
        replicas,
        ports: vec![PortSpec {
            name: "http".into(),
            target: 80,
            protocol: "tcp".into(),
            published: None,
            host_mode: false,
        }],
        depends_on: deps.iter().map(|(d, w)| (d.to_string(), *w)).collect(),
        ..ServiceSpec::default()
    }
}

fn registration(name: &str, address: &str) -> NodeRegistration {
    NodeRegistration {
        name: name.into(),
        address: address.into(),
        agent_port: 0,
        resources: NodeResources {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            ports: (20000, 30000),
        },
        labels: BTreeMap::new(),
        drivers: vec![Driver::Process],
        proxies: false,
    }
}

fn record(id: &InstanceId, release: u64, state: InstanceState, port: u16) -> Instance {
    Instance {
        id: id.clone(),
        node: String::new(),
        release,
        state,
        pid: Some(1),
        ports: BTreeMap::from([("http".to_string(), port)]),
        restarts: 0,
        exit_code: None,
        reason: None,
        updated_ms: 1,
    }
}

struct Rig {
    control: Arc<Control>,
    store: Store,
    kv: AnyKv,
    catalog: Arc<Catalog>,
}

async fn rig(down_after: Duration) -> Rig {
    let store = Store::open(AnyKv::Mem(MemKv::new()), "test").await.unwrap();
    let kv = store.kv().clone();
    let catalog = Catalog::new();
    let control = Control::open(
        store.clone(),
        catalog.clone(),
        Config {
            down_after,
            seed: 7,
            ..Config::default()
        },
    )
    .await
    .unwrap();
    Rig {
        control,
        store,
        kv,
        catalog,
    }
}

impl Rig {
    async fn release(&self, services: &[(&str, ServiceSpec)]) -> u64 {
        let spec = StackSpec {
            services: services
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
            batches: Vec::new(),
            values: Default::default(),
        };
        self.store
            .create_release(
                &stack(),
                spec,
                String::new(),
                1,
                Author::unknown(),
                Cause::Up,
            )
            .await
            .unwrap()
            .number
    }

    async fn node(&self, id: &str, name: &str, address: &str) {
        self.control
            .register(id, registration(name, address))
            .await
            .unwrap();
    }

    /// A planner pass, and what it queued for the store written.
    async fn pass(&self) {
        self.control.plan_and_apply().await.unwrap();
        self.control.observe(Vec::new()).await.unwrap();
    }

    fn on(&self, node: &str) -> Vec<Allocation> {
        self.control
            .all_allocations()
            .into_iter()
            .filter(|a| a.node == node)
            .collect()
    }

    async fn report(&self, node: &str, a: &Allocation, state: InstanceState, port: u16) {
        let inst = record(&a.instance, a.release, state, port);
        self.control
            .report(
                node,
                Report {
                    full: false,
                    changes: vec![Change::Instance(inst)],
                },
            )
            .await
            .unwrap();
    }

    fn endpoints(&self, service: &str) -> Vec<(u32, IpAddr)> {
        let snap = self.catalog.snapshot();
        snap.services
            .get(&ServiceKey::new(&stack(), service))
            .map(|s| s.endpoints.values().map(|e| (e.index, e.address)).collect())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_release_is_allocated_over_the_registered_nodes_and_their_long_polls_wake() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.node("n2", "two", "10.231.0.2").await;
    let poll = {
        let c = r.control.clone();
        tokio::spawn(async move { c.allocations("n1", 0, Duration::from_secs(10)).await })
    };
    tokio::task::yield_now().await;
    r.release(&[("web", service(4, &[]))]).await;
    r.pass().await;
    let got = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("the long poll answers once the node's allocations change")
        .unwrap()
        .unwrap();
    assert_eq!(got.allocations.len(), 2, "spread: two of four on each node");
    assert_eq!(r.on("n2").len(), 2);
    // Nothing changed: the next poll waits out its time and answers the same index.
    let again = r
        .control
        .allocations("n1", got.index, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(again.index, got.index);
    // Planning again changes nothing.
    let before = r.kv.list(ALLOCS).await.unwrap().1;
    r.pass().await;
    assert_eq!(r.kv.list(ALLOCS).await.unwrap().1, before);
}

#[tokio::test]
async fn a_dependent_is_placed_only_once_its_dependency_is_reported_healthy() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[
        ("db", service(1, &[])),
        ("web", service(2, &[("db", WaitFor::Healthy)])),
    ])
    .await;
    r.pass().await;
    let placed: Vec<String> = r.on("n1").iter().map(|a| a.instance.short()).collect();
    assert_eq!(placed, ["db-1"]);
    let db = r.on("n1").remove(0);
    r.report("n1", &db, InstanceState::Starting, 20001).await;
    r.pass().await;
    assert_eq!(r.on("n1").len(), 1, "started is not healthy");
    r.report("n1", &db, InstanceState::Healthy, 20001).await;
    assert_eq!(r.endpoints("db"), [(1, "10.231.0.1".parse().unwrap())]);
    r.pass().await;
    assert_eq!(r.on("n1").len(), 3);
}

#[tokio::test]
async fn a_silent_node_is_down_its_instances_leave_the_catalog_and_move() {
    let r = rig(Duration::from_millis(200)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.node("n2", "two", "10.231.0.2").await;
    r.release(&[("web", service(2, &[]))]).await;
    r.pass().await;
    for node in ["n1", "n2"] {
        for a in r.on(node) {
            r.report(node, &a, InstanceState::Healthy, 20001).await;
        }
    }
    assert_eq!(r.endpoints("web").len(), 2);
    let on_n2 = r.on("n2")[0].instance.clone();
    tokio::time::sleep(Duration::from_millis(150)).await;
    r.control.heartbeat("n1").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(r.control.check_liveness(), "n2 went silent");
    let n1: IpAddr = "10.231.0.1".parse().unwrap();
    let ends: Vec<IpAddr> = r.endpoints("web").into_iter().map(|e| e.1).collect();
    assert_eq!(ends, [n1], "only n1's instance is routed to");
    let down = r
        .control
        .nodes()
        .into_iter()
        .find(|n| n.id == "n2")
        .unwrap();
    assert_eq!(down.status, NodeStatus::Down);
    r.pass().await;
    assert_eq!(r.on("n1").len(), 2, "n2's instance runs on n1 now");
    assert!(r.on("n2").is_empty());
    // n2 comes back still running its old copy: that copy is never routed to.
    let moved = r
        .on("n1")
        .into_iter()
        .find(|a| a.instance == on_n2)
        .unwrap();
    r.report("n1", &moved, InstanceState::Healthy, 20002).await;
    r.control.heartbeat("n2").unwrap();
    let stale = Allocation {
        node: "n2".into(),
        ..moved.clone()
    };
    r.report("n2", &stale, InstanceState::Healthy, 20009).await;
    let ends: Vec<IpAddr> = r.endpoints("web").into_iter().map(|e| e.1).collect();
    assert_eq!(ends, [n1; 2]);
}

#[tokio::test]
async fn a_drained_node_keeps_serving_until_its_replacements_are_ready() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(1, &[]))]).await;
    r.pass().await;
    let old = r.on("n1").remove(0);
    r.report("n1", &old, InstanceState::Healthy, 20001).await;
    r.node("n2", "two", "10.231.0.2").await;
    r.control
        .set_status("n1", NodeStatus::Draining)
        .await
        .unwrap();
    r.pass().await;
    let new = r.on("n2").remove(0);
    assert_eq!(
        new.instance.index, 2,
        "the replacement has an index of its own"
    );
    let retiring = r.on("n1").remove(0);
    assert_eq!(retiring.replaced_by.as_deref(), Some(new.id.as_str()));
    assert_eq!(r.endpoints("web").len(), 1, "the old copy serves meanwhile");
    r.report("n2", &new, InstanceState::Starting, 20001).await;
    r.pass().await;
    assert_eq!(
        r.on("n1").len(),
        1,
        "started is not ready: the old copy stays"
    );
    // Ready: both serve for a moment, then the old copy's allocation goes (its agent
    // deregisters, drains and stops it) without another call.
    r.report("n2", &new, InstanceState::Healthy, 20001).await;
    assert_eq!(r.endpoints("web").len(), 2);
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            r.pass().await;
            if r.on("n1").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the retiring copy is stopped once its replacement is ready");
    assert_eq!(r.on("n2").len(), 1);
}

#[tokio::test]
async fn undraining_before_the_replacement_is_ready_keeps_the_first_copy() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.node("n2", "two", "10.231.0.2").await;
    r.release(&[("web", service(1, &[]))]).await;
    r.pass().await;
    let (old_node, new_node) = if r.on("n1").is_empty() {
        ("n2", "n1")
    } else {
        ("n1", "n2")
    };
    r.control
        .set_status(old_node, NodeStatus::Draining)
        .await
        .unwrap();
    r.pass().await;
    assert_eq!(r.on(new_node).len(), 1);
    // The operator undrains before the replacement is ready, and drains the replacement's
    // node instead: the first copy is one of the replicas again and the replacement stops.
    r.control
        .set_status(old_node, NodeStatus::Ready)
        .await
        .unwrap();
    r.control
        .set_status(new_node, NodeStatus::Draining)
        .await
        .unwrap();
    r.pass().await;
    let all = r.control.all_allocations();
    assert!(
        all.len() == 1
            && all[0].node == old_node
            && all[0].instance.index == 1
            && all[0].replaced_by.is_none(),
        "the first copy runs on, alone: {all:?}"
    );
}

#[tokio::test]
async fn draining_waits_for_the_requests_in_flight() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "127.0.0.1").await;
    r.release(&[("web", service(1, &[]))]).await;
    r.pass().await;
    let a = r.on("n1").remove(0);
    r.report("n1", &a, InstanceState::Healthy, 20001).await;
    let traffic = r
        .catalog
        .traffic(&ServiceKey::new(&stack(), "web"), 1)
        .unwrap();
    assert!(traffic.begin());
    r.report("n1", &a, InstanceState::Stopping, 20001).await;
    assert!(r.endpoints("web").is_empty(), "out of the catalog first");
    assert!(!traffic.begin(), "no new request reaches it");
    let d = r
        .control
        .drain(&a.instance, Duration::from_millis(50))
        .await;
    assert_eq!((d.drained, d.in_flight), (false, 1));
    let c = r.control.clone();
    let id = a.instance.clone();
    let waiting = tokio::spawn(async move { c.drain(&id, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    traffic.end();
    let d = waiting.await.unwrap();
    assert_eq!((d.drained, d.in_flight), (true, 0));
}

#[tokio::test]
async fn the_applier_plans_again_when_allocations_changed_under_it() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(1, &[]))]).await;
    r.pass().await;
    let a = r.on("n1").remove(0);
    // Someone else rewrites the allocation: the control's view is stale.
    let key = alloc_key(&a);
    r.kv.put(&key, serde_json::to_vec(&a).unwrap(), Expect::Any)
        .await
        .unwrap();
    // A new release re-stamps it: the first commit conflicts, the second goes through.
    let n = r.release(&[("web", service(1, &[]))]).await;
    r.pass().await;
    let now: Allocation =
        serde_json::from_slice(&r.kv.get(&key).await.unwrap().unwrap().value).unwrap();
    assert_eq!(now.release, n);
}

#[tokio::test]
async fn unplaceable_work_is_kept_with_its_reason_and_an_event() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    let mut big = service(1, &[]);
    big.reservations.memory_bytes = 64 << 30;
    r.release(&[("big", big)]).await;
    r.pass().await;
    let u = r.control.unplaced();
    assert_eq!(u.len(), 1);
    assert!(u[0].reason.contains("memory"), "{}", u[0].reason);
    r.pass().await;
    let events = r.store.events_after(0, 100).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "unplaced").count(),
        1,
        "one event per reason"
    );
}

#[tokio::test]
async fn a_full_report_forgets_what_the_node_no_longer_runs() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(2, &[]))]).await;
    r.pass().await;
    let allocs = r.on("n1");
    for a in &allocs {
        r.report("n1", a, InstanceState::Healthy, 20001).await;
    }
    assert_eq!(r.store.instances(None).await.unwrap().len(), 2);
    let keep = record(&allocs[0].instance, 1, InstanceState::Healthy, 20001);
    r.control
        .report(
            "n1",
            Report {
                full: true,
                changes: vec![
                    Change::Instance(keep),
                    Change::Event(NewEvent {
                        time_ms: 1,
                        stack: stack(),
                        instance: None,
                        kind: "adopted".into(),
                        message: "m".into(),
                    }),
                ],
            },
        )
        .await
        .unwrap();
    let left: Vec<String> = r
        .store
        .instances(None)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id.short())
        .collect();
    assert_eq!(left, [allocs[0].instance.short()]);
    assert_eq!(r.endpoints("web").len(), 1);
}

#[tokio::test]
async fn registration_rejects_a_taken_name_and_a_bad_address() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    assert!(matches!(
        r.control
            .register("n2", registration("one", "10.231.0.2"))
            .await,
        Err(ControlError::NameTaken { .. })
    ));
    assert!(matches!(
        r.control
            .register("n3", registration("three", "nowhere"))
            .await,
        Err(ControlError::Invalid(_))
    ));
    assert!(matches!(
        r.control.heartbeat("n9"),
        Err(ControlError::UnknownNode(_))
    ));
}

#[tokio::test]
async fn every_service_gets_a_stable_address_that_it_keeps_across_releases_and_restarts() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.0.0.1").await;
    r.release(&[("db", service(1, &[])), ("web", service(2, &[]))])
        .await;
    r.pass().await;
    let address = |catalog: &Catalog, s: &str| {
        let snap = catalog.snapshot();
        let e = snap.services.get(&ServiceKey::new(&stack(), s)).unwrap();
        (e.address.unwrap(), e.targets.clone())
    };
    let (db, targets) = address(&r.catalog, "db");
    let (web, _) = address(&r.catalog, "web");
    assert_eq!(db, "127.77.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(web, "127.77.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(targets, BTreeMap::from([("http".to_string(), 80)]));

    // A release without db, then one with it again: db gets its own address back, a new
    // service the next free one.
    r.release(&[("web", service(2, &[]))]).await;
    r.pass().await;
    r.release(&[
        ("cache", service(1, &[])),
        ("web", service(1, &[])),
        ("db", service(1, &[])),
    ])
    .await;
    r.pass().await;
    assert_eq!(address(&r.catalog, "db").0, db);
    assert_eq!(address(&r.catalog, "web").0, web);
    let cache = address(&r.catalog, "cache").0;
    assert_eq!(cache, "127.77.0.3".parse::<IpAddr>().unwrap());

    // A restarted server reads them back from the kv.
    let catalog = Catalog::new();
    let again = Control::open(r.store.clone(), catalog.clone(), Config::default())
        .await
        .unwrap();
    again.plan_and_apply().await.unwrap();
    assert_eq!(address(&catalog, "db").0, db);
    assert_eq!(address(&catalog, "web").0, web);
    assert_eq!(address(&catalog, "cache").0, cache);
}

#[test]
fn address_ranges_are_loopback_blocks() {
    let r: AddressRange = "127.77.0.0/16".parse().unwrap();
    assert_eq!(r.at(1), Some("127.77.0.1".parse().unwrap()));
    assert_eq!(r.at(0xfffe), Some("127.77.255.254".parse().unwrap()));
    assert_eq!(r.at(0xffff), None);
    let small: AddressRange = "127.80.3.7/30".parse().unwrap();
    assert_eq!(small.at(1), Some("127.80.3.5".parse().unwrap()));
    assert_eq!(small.at(3), None);
    for bad in ["10.0.0.0/16", "127.0.0.0", "127.0.0.0/31", "127.0.0.0/x"] {
        assert!(bad.parse::<AddressRange>().is_err(), "{bad}");
    }
}

#[test]
fn the_store_and_the_control_plane_keep_apart_in_the_kv() {
    for ours in [NODES, ALLOCS, ADDRESSES] {
        for theirs in skiff_store::KEY_PREFIXES {
            assert!(
                !ours.starts_with(theirs) && !theirs.starts_with(ours),
                "{ours} and {theirs} overlap"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_gets_reports_in_the_order_they_were_applied() {
    let r = Arc::new(rig(Duration::from_secs(5)).await);
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(3, &[]))]).await;
    r.pass().await;
    let allocs = r.on("n1");
    // Reports racing each other, each a state of every instance: whichever was applied last
    // is what the store holds, as in memory.
    let states = [
        InstanceState::Starting,
        InstanceState::Healthy,
        InstanceState::Unhealthy,
        InstanceState::Stopping,
    ];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (r, allocs) = (r.clone(), allocs.clone());
            tokio::spawn(async move {
                let changes = allocs
                    .iter()
                    .map(|a| {
                        Change::Instance(record(&a.instance, 1, states[i % states.len()], 20001))
                    })
                    .collect();
                r.control
                    .report(
                        "n1",
                        Report {
                            full: false,
                            changes,
                        },
                    )
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stored = r.store.instances(None).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored, r.control.instances());
}

/// Reports every allocation's instance healthy at its own release on its node (an agent
/// whose instances start at once), then plans; returns the allocations after the pass.
async fn healthy_pass(r: &Rig) -> Vec<Allocation> {
    for a in r.control.all_allocations() {
        r.report(&a.node.clone(), &a, InstanceState::Healthy, 20001)
            .await;
    }
    r.pass().await;
    r.control.all_allocations()
}

fn changed(replicas: u32, update: skiff_model::UpdatePolicy) -> ServiceSpec {
    let mut s = service(replicas, &[]);
    s.environment.insert("VERSION".into(), "2".into());
    s.update = update;
    s
}

#[tokio::test]
async fn a_changed_service_rolls_start_first_one_at_a_time_never_below_its_replicas() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(3, &[]))]).await;
    r.pass().await;
    healthy_pass(&r).await;
    let update = skiff_model::UpdatePolicy {
        order: skiff_model::UpdateOrder::StartFirst,
        monitor: Duration::ZERO,
        ..skiff_model::UpdatePolicy::default()
    };
    let two = r.release(&[("web", changed(3, update))]).await;
    r.control.changed();
    r.pass().await;
    for round in 0..30 {
        let allocs = r.control.all_allocations();
        let serving = allocs.iter().filter(|a| a.replaced_by.is_none()).count();
        let new = allocs.iter().filter(|a| a.release == two).count();
        assert!(allocs.len() <= 4, "one in flight at most: {allocs:?}");
        assert!(
            serving >= 3 || allocs.len() == 4,
            "round {round}: {allocs:?}"
        );
        if new == 3 && allocs.len() == 3 {
            break;
        }
        healthy_pass(&r).await;
    }
    let allocs = healthy_pass(&r).await;
    assert!(allocs.iter().all(|a| a.release == two), "{allocs:?}");
    let (rollout, _) = r.control.lock().rollouts[&(stack(), "web".to_string())].clone();
    assert_eq!(rollout.state, RolloutState::Done);
    assert_eq!(rollout.replaced, 3);
}

#[tokio::test]
async fn stop_first_rolls_a_batch_in_place_and_waits_for_it_to_be_ready() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(4, &[]))]).await;
    r.pass().await;
    healthy_pass(&r).await;
    let update = skiff_model::UpdatePolicy {
        parallelism: skiff_model::Parallelism::Count(2),
        monitor: Duration::ZERO,
        ..skiff_model::UpdatePolicy::default()
    };
    let two = r.release(&[("web", changed(4, update))]).await;
    r.pass().await;
    let allocs = r.control.all_allocations();
    let mut restamped: Vec<u32> = allocs
        .iter()
        .filter(|a| a.release == two)
        .map(|a| a.instance.index)
        .collect();
    restamped.sort_unstable();
    assert_eq!(restamped, [1, 2], "the first batch, in place: {allocs:?}");
    // Not ready yet (no report): the next batch waits.
    r.pass().await;
    assert_eq!(
        r.control
            .all_allocations()
            .iter()
            .filter(|a| a.release == two)
            .count(),
        2
    );
    healthy_pass(&r).await;
    let allocs = healthy_pass(&r).await;
    assert!(allocs.iter().all(|a| a.release == two), "{allocs:?}");
    assert_eq!(allocs.len(), 4);
}

#[tokio::test]
async fn a_change_of_replicas_or_policy_alone_is_no_rollout() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(2, &[]))]).await;
    r.pass().await;
    healthy_pass(&r).await;
    let mut spec = service(3, &[]);
    spec.update.order = skiff_model::UpdateOrder::StartFirst;
    let two = r.release(&[("web", spec)]).await;
    r.pass().await;
    let allocs = r.control.all_allocations();
    assert_eq!(allocs.len(), 3);
    assert!(
        allocs
            .iter()
            .all(|a| a.release == two && a.replaced_by.is_none())
    );
    assert!(r.control.lock().rollouts.is_empty());
}

#[tokio::test]
async fn a_configs_only_change_of_a_reloading_service_is_re_stamped_with_an_event_not_rolled() {
    let with_config = |content: &str, reload: bool| {
        let mut s = service(2, &[]);
        s.configs = vec![skiff_model::ConfigFile {
            name: "app".into(),
            target: "/app".into(),
            content: content.into(),
            mode: None,
            ..Default::default()
        }];
        s.reload = reload.then(|| skiff_model::ReloadSpec {
            signal: "SIGHUP".into(),
        });
        s
    };
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", with_config("a", true))]).await;
    r.pass().await;
    let first = healthy_pass(&r).await;
    let two = r.release(&[("web", with_config("b", true))]).await;
    r.pass().await;
    let allocs = r.control.all_allocations();
    assert_eq!(allocs.len(), 2);
    assert!(
        allocs.iter().all(|a| a.release == two
            && a.replaced_by.is_none()
            && first.iter().any(|f| f.id == a.id)),
        "the same allocations, re-stamped: {allocs:?}"
    );
    assert!(r.control.lock().rollouts.is_empty(), "no rollout");
    let events = r.store.events_after(0, 100).await.unwrap();
    let reload: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "reload")
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(
        reload,
        [
            "web: release 2 changes only configs app; reloading web-1, web-2 with SIGHUP \
             instead of replacing them"
        ]
    );
    // Without reload the same kind of change rolls out: one instance at a time (stop-first,
    // parallelism 1), the other still of release 2.
    let three = r.release(&[("web", with_config("c", false))]).await;
    r.pass().await;
    let releases: Vec<u64> = r
        .control
        .all_allocations()
        .iter()
        .map(|a| a.release)
        .collect();
    assert_eq!(
        releases.iter().filter(|n| **n == three).count(),
        1,
        "{releases:?}"
    );
    assert!(!r.control.lock().rollouts.is_empty());
}

#[tokio::test]
async fn a_paused_rollout_replaces_nothing_more_until_resumed() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(3, &[]))]).await;
    r.pass().await;
    healthy_pass(&r).await;
    let update = skiff_model::UpdatePolicy {
        monitor: Duration::ZERO,
        ..skiff_model::UpdatePolicy::default()
    };
    let two = r.release(&[("web", changed(3, update))]).await;
    r.pass().await;
    let paused = r
        .control
        .steer_rollout(&stack(), "web", Steer::Pause)
        .await
        .unwrap();
    assert_eq!(paused.state, RolloutState::Paused);
    let again = r.control.steer_rollout(&stack(), "web", Steer::Pause).await;
    assert!(
        matches!(again, Err(ControlError::RolloutState(_))),
        "{again:?}"
    );
    for _ in 0..5 {
        healthy_pass(&r).await;
    }
    let new = |r: &Rig| {
        r.control
            .all_allocations()
            .iter()
            .filter(|a| a.release == two)
            .count()
    };
    assert_eq!(new(&r), 1, "only the batch in flight when it paused");
    r.control
        .steer_rollout(&stack(), "web", Steer::Resume)
        .await
        .unwrap();
    for _ in 0..10 {
        healthy_pass(&r).await;
    }
    assert_eq!(new(&r), 3);
    let missing = r.control.steer_rollout(&stack(), "db", Steer::Resume).await;
    assert!(
        matches!(missing, Err(ControlError::NoRollout(_))),
        "{missing:?}"
    );
}

fn traffic_spec(replicas: u32, version: &str, release: skiff_model::ReleasePolicy) -> ServiceSpec {
    let mut s = service(replicas, &[]);
    s.environment.insert("VERSION".into(), version.into());
    s.release = release;
    s
}

fn canary_policy(steps: &[u32]) -> skiff_model::ReleasePolicy {
    skiff_model::ReleasePolicy {
        strategy: skiff_model::ReleaseStrategy::Canary,
        steps: steps
            .iter()
            .map(|w| skiff_model::CanaryStep {
                weight: *w,
                pause: None,
            })
            .collect(),
        ..skiff_model::ReleasePolicy::default()
    }
}

impl Rig {
    fn entry(&self, service: &str) -> skiff_catalog::ServiceEntry {
        self.catalog.snapshot().services[&ServiceKey::new(&stack(), service)].clone()
    }

    fn of_release(&self, release: u64) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .control
            .all_allocations()
            .iter()
            .filter(|a| a.release == release)
            .map(|a| a.instance.index)
            .collect();
        v.sort_unstable();
        v
    }
}

/// A node running release 1 of `web` (`replicas`, ready), then release 2 changed under
/// `policy`, planned once: (the rig, release 1, release 2).
async fn changed_under(policy: skiff_model::ReleasePolicy, replicas: u32) -> (Rig, u64, u64) {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    let one = r
        .release(&[("web", traffic_spec(replicas, "1", policy.clone()))])
        .await;
    r.pass().await;
    healthy_pass(&r).await;
    let two = r
        .release(&[("web", traffic_spec(replicas, "2", policy))])
        .await;
    r.pass().await;
    (r, one, two)
}

#[tokio::test]
async fn a_canary_runs_beside_the_old_set_weighs_each_step_and_retires_the_old_set_at_full() {
    let (r, one, two) = changed_under(canary_policy(&[25]), 4).await;
    assert_eq!(r.of_release(one), [1, 2, 3, 4], "the old set stays whole");
    assert_eq!(r.of_release(two), [5], "25% of 4: one canary beside it");
    let split = r.entry("web").split.expect("a split while the canary runs");
    assert_eq!((split.release, split.stable, split.weight), (two, one, 0));
    healthy_pass(&r).await;
    let split = r.entry("web").split.unwrap();
    assert_eq!(split.weight, 25, "ready: the step's weight");
    assert_eq!(split.canary, [5].into());
    // No pause: it holds until promoted.
    healthy_pass(&r).await;
    assert_eq!(r.of_release(two), [5]);
    r.control
        .steer_rollout(&stack(), "web", Steer::Promote)
        .await
        .unwrap();
    r.pass().await;
    assert_eq!(
        r.of_release(two),
        [5, 6, 7, 8],
        "the full release beside the old"
    );
    assert_eq!(
        r.entry("web").split.unwrap().weight,
        25,
        "not before it is ready"
    );
    healthy_pass(&r).await;
    assert_eq!(
        r.of_release(one),
        Vec::<u32>::new(),
        "old set stopped at 100%"
    );
    let e = r.entry("web");
    assert_eq!(e.split, None, "done: no split");
    assert_eq!(
        e.leaving,
        [1, 2, 3, 4].into(),
        "the old instances take no new request before their agent even knows"
    );
    let (rollout, _) = r.control.lock().rollouts[&(stack(), "web".to_string())].clone();
    assert_eq!(rollout.state, RolloutState::Done);
}

#[tokio::test]
async fn an_aborted_canary_gets_no_traffic_as_its_instances_stop_and_the_stack_rolls_back() {
    let (r, one, two) = changed_under(canary_policy(&[50]), 4).await;
    healthy_pass(&r).await;
    assert_eq!(r.of_release(two), [5, 6]);
    assert_eq!(r.entry("web").split.unwrap().weight, 50);
    r.control
        .steer_rollout(&stack(), "web", Steer::Abort)
        .await
        .unwrap();
    r.pass().await;
    let e = r.entry("web");
    assert!(
        e.split.as_ref().is_none_or(|s| s.weight == 0)
            && e.leaving.contains(&5)
            && e.leaving.contains(&6),
        "the canaries are out of traffic as they stop: {e:?}"
    );
    assert_eq!(r.of_release(two), Vec::<u32>::new());
    // The abort recorded a rollback: release 3 runs release 1's spec, on the same instances.
    r.pass().await;
    let three = r.store.stacks().await.unwrap()[0].current.unwrap();
    assert_eq!(three, two + 1);
    assert_eq!(
        r.of_release(three),
        [1, 2, 3, 4],
        "re-stamped, not replaced"
    );
    let _ = one;
}

#[tokio::test]
async fn blue_green_switches_once_the_new_set_is_ready_and_a_rollback_while_warm_switches_back() {
    let policy = skiff_model::ReleasePolicy {
        strategy: skiff_model::ReleaseStrategy::BlueGreen,
        keep_previous: Duration::from_secs(600),
        ..skiff_model::ReleasePolicy::default()
    };
    let (r, one, two) = changed_under(policy, 3).await;
    assert_eq!(
        r.of_release(two),
        [4, 5, 6],
        "the whole new set beside the old"
    );
    assert_eq!(r.entry("web").split.unwrap().weight, 0);
    healthy_pass(&r).await;
    let split = r.entry("web").split.unwrap();
    assert_eq!(
        (split.weight, split.canary),
        (100, [4, 5, 6].into()),
        "switched"
    );
    assert_eq!(r.of_release(one), [1, 2, 3], "kept warm");
    healthy_pass(&r).await;
    assert_eq!(
        r.of_release(one),
        [1, 2, 3],
        "still warm within keep_previous"
    );
    // Back: the warm set is the release again at once; the new set leaves traffic as it stops.
    let back = r
        .control
        .rollback(&stack(), None, Some(Author::unknown()))
        .await
        .unwrap();
    r.pass().await;
    assert_eq!(
        r.of_release(back.number),
        [1, 2, 3],
        "the warm set, not new instances"
    );
    assert_eq!(r.of_release(two), Vec::<u32>::new());
    let e = r.entry("web");
    assert_eq!(e.split, None);
    assert_eq!(e.leaving, [4, 5, 6].into());
}

#[tokio::test]
async fn a_restart_rolls_by_update_config_instead_of_replacing_every_instance_at_once() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    let mut spec = service(3, &[]);
    spec.update = skiff_model::UpdatePolicy {
        order: skiff_model::UpdateOrder::StartFirst,
        monitor: Duration::ZERO,
        ..skiff_model::UpdatePolicy::default()
    };
    // A canary policy too: a restart is rolled, never weighed.
    spec.release = canary_policy(&[50]);
    let one = r.release(&[("web", spec)]).await;
    r.pass().await;
    let before = healthy_pass(&r).await;
    r.store
        .update_controls(&stack(), |c| {
            c.entry("web".into()).or_default().generation += 1
        })
        .await
        .unwrap();
    r.pass().await;
    let allocs = r.control.all_allocations();
    assert_eq!(allocs.len(), 4, "one replacement beside three: {allocs:?}");
    assert!(r.entry("web").split.is_none());
    for _ in 0..20 {
        let allocs = healthy_pass(&r).await;
        assert!(allocs.len() <= 4, "{allocs:?}");
        if allocs.iter().all(|a| a.generation == 1) && allocs.len() == 3 {
            break;
        }
    }
    let after = healthy_pass(&r).await;
    assert!(
        after.iter().all(|a| a.generation == 1 && a.release == one),
        "{after:#?} {:?}",
        r.control.lock().rollouts
    );
    assert!(
        after.iter().all(|a| before.iter().all(|b| b.id != a.id)),
        "every instance replaced"
    );
    let (rollout, _) = r.control.lock().rollouts[&(stack(), "web".to_string())].clone();
    assert_eq!(
        (rollout.state, rollout.generation, rollout.from),
        (RolloutState::Done, 1, None)
    );
}

#[tokio::test]
async fn a_canary_is_judged_by_what_every_node_s_ingress_counted() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    let key = ServiceKey::new(&stack(), "web");
    let own = r.catalog.release_stats(&key, 2);
    own.record(200, Duration::from_millis(3));
    own.record(503, Duration::from_millis(3));
    let mut sent = Figures::default();
    for status in [200, 200, 500] {
        let s = skiff_catalog::ReleaseStats::default();
        s.record(status, Duration::from_millis(40));
        sent.add(&s.read());
    }
    let from_node = |figures: Figures| {
        vec![skiff_client::NodeFigures {
            service: key.clone(),
            release: 2,
            figures,
        }]
    };
    r.control
        .node_figures("n1", from_node(sent.clone()))
        .unwrap();
    let total = r.control.release_figures(&key, 2);
    assert_eq!((total.requests, total.errors), (5, 2));
    assert_eq!(total.p99_ms(), Some(50), "the slow ones the node saw count");
    // Cumulative: what a node sends next replaces what it sent before.
    r.control.node_figures("n1", from_node(sent)).unwrap();
    assert_eq!(r.control.release_figures(&key, 2).requests, 5);
    assert!(matches!(
        r.control.node_figures("nope", Vec::new()),
        Err(ControlError::UnknownNode(_))
    ));
}

#[tokio::test]
async fn a_failed_start_first_replacement_is_abandoned_and_not_placed_again() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(2, &[]))]).await;
    r.pass().await;
    healthy_pass(&r).await;
    let update = skiff_model::UpdatePolicy {
        order: skiff_model::UpdateOrder::StartFirst,
        ..skiff_model::UpdatePolicy::default()
    };
    let two = r.release(&[("web", changed(2, update))]).await;
    r.pass().await;
    let replacement = r
        .control
        .all_allocations()
        .into_iter()
        .find(|a| a.release == two)
        .expect("a replacement placed");
    // It exits before it is ready: the rollout pauses (the default) and abandons it.
    r.report("n1", &replacement, InstanceState::Exited, 20002)
        .await;
    r.pass().await;
    let allocs = r.control.all_allocations();
    assert!(
        allocs
            .iter()
            .all(|a| a.release != two && a.replaced_by.is_none()),
        "the old copies are the replicas again, nothing of release {two} placed: {allocs:?}"
    );
    assert_eq!(allocs.len(), 2);
    let (rollout, _) = r.control.lock().rollouts[&(stack(), "web".to_string())].clone();
    assert_eq!(rollout.state, RolloutState::Paused);
}

#[tokio::test]
async fn the_last_request_of_an_env_is_the_latest_any_proxy_saw() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    assert!(r.control.last_requests().is_empty());
    // This server's proxies: a touched flag counts at the next sample.
    r.catalog.seen("alice").touch();
    let own = r.control.last_requests()["alice"];
    assert!(own > 0);
    // A node's ingress saw a later one for alice, and one for bob.
    let later = own + 60_000;
    r.control
        .node_last_requests(
            "n1",
            [("alice".to_string(), later), ("bob".to_string(), 5)].into(),
        )
        .unwrap();
    let last = r.control.last_requests();
    assert_eq!((last["alice"], last["bob"]), (later, 5));
    assert!(matches!(
        r.control.node_last_requests("nope", Default::default()),
        Err(ControlError::UnknownNode(_))
    ));
}

#[tokio::test]
async fn downing_an_env_takes_its_stacks_down_marks_it_and_tells_why() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(1, &[]))]).await;
    let env = stack().env;
    let mut record = skiff_model::Environment::new(&env, skiff_model::Author::unknown(), 1);
    record.ttl_ms = Some(1);
    r.store.create_env(&record).await.unwrap();
    // The reaper's decision for it: past its ttl.
    let why = record.reap(10, None).unwrap();
    let downed = r.control.down_env(&env, Some(why.clone())).await.unwrap();
    assert_eq!(downed, vec![stack()]);
    let state = r.store.stacks().await.unwrap();
    assert_eq!(
        state[0].current, None,
        "the stack is down, its history kept"
    );
    assert_eq!(r.store.releases(&stack()).await.unwrap().len(), 1);
    let e = r.store.env(&env).await.unwrap().unwrap();
    assert_eq!(e.state, skiff_model::EnvState::Down);
    assert_eq!(e.down_reason.as_deref(), Some(why.as_str()));
    let events = r.store.events_after(0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|ev| ev.kind == "env_down" && ev.message.contains(&why)),
        "{events:?}"
    );
    // Down already: the reaper leaves it be.
    assert_eq!(e.reap(u64::MAX, None), None);
}

#[tokio::test]
async fn forgetting_a_removed_env_gives_its_stable_addresses_back() {
    let r = rig(Duration::from_secs(5)).await;
    r.node("n1", "one", "10.231.0.1").await;
    r.release(&[("web", service(1, &[]))]).await;
    r.pass().await;
    let env = stack().env;
    let prefix = format!("addresses/{env}/");
    let kept = r.store.kv().list(&prefix).await.unwrap().0;
    assert_eq!(kept.len(), 1, "web got its address");
    r.control.down_env(&env, None).await.unwrap();
    r.store.remove_stack(&stack()).await.unwrap();
    r.control.forget_env(&env).await.unwrap();
    assert!(r.store.kv().list(&prefix).await.unwrap().0.is_empty());
}
