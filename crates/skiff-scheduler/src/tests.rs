use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use skiff_model::{
    Allocation, Constraint, DeployMode, Desired, Driver, Node, NodeResources, NodeStatus, PortSpec,
    Reservations, ServiceSpec, StackKey, Strategy,
};

use super::*;

const GIB: u64 = 1 << 30;

fn node(name: &str, cpu: u64, mem: u64, labels: &[(&str, &str)]) -> Node {
    Node {
        id: format!("id-{name}"),
        name: name.into(),
        address: "10.231.0.2".into(),
        agent_port: 0,
        resources: NodeResources {
            cpu_millis: cpu,
            memory_bytes: mem,
            ports: (20000, 29999),
        },
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        drivers: vec![Driver::Process],
        proxies: false,
        status: NodeStatus::Ready,
        last_heartbeat_ms: 10_000,
    }
}

fn svc(replicas: u32) -> ServiceSpec {
    ServiceSpec {
        driver: Driver::Process,
        replicas,
        ..ServiceSpec::default()
    }
}

fn stack() -> StackKey {
    StackKey::new("default", "shop").unwrap()
}

const OPTS: Options = Options {
    seed: 7,
    now_ms: 10_000,
    down_after_ms: 5_000,
};

fn run(nodes: &[Node], allocs: &[Allocation], spec: &ServiceSpec) -> Plan {
    let st = stack();
    let groups = [Group {
        stack: &st,
        service: "web",
        release: 2,
        spec,
        replace: &[],
        extra: 0,
    }];
    plan(
        &Snapshot {
            nodes,
            allocations: allocs,
            groups: &groups,
        },
        OPTS,
    )
}

fn per_node(p: &Plan) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for pl in &p.place {
        *m.entry(pl.node.clone()).or_default() += 1;
    }
    m
}

fn alloc(id: &str, index: u32, node: &str, release: u64) -> Allocation {
    Allocation {
        id: id.into(),
        instance: InstanceId {
            stack: stack(),
            service: "web".into(),
            index,
        },
        node: node.into(),
        release,
        generation: 0,
        desired: Desired::Run,
        reserved: Reservations::default(),
        host_ports: Vec::new(),
        replaced_by: None,
    }
}

#[test]
fn replicas_spread_evenly_over_nodes_by_default() {
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(&format!("n{i}"), 4000, 8 * GIB, &[]))
        .collect();
    let p = run(&nodes, &[], &svc(6));
    assert_eq!(p.place.len(), 6);
    assert!(per_node(&p).values().all(|&c| c == 2), "{:?}", per_node(&p));
    let mut idx: Vec<u32> = p.place.iter().map(|pl| pl.instance.index).collect();
    idx.sort_unstable();
    assert_eq!(idx, (1..=6).collect::<Vec<_>>());
}

#[test]
fn spread_by_zone_label_balances_zones_before_nodes() {
    // Zone a has three nodes, zone b one: spreading by zone puts half the replicas on b.
    let nodes = vec![
        node("a1", 8000, 8 * GIB, &[("zone", "a")]),
        node("a2", 8000, 8 * GIB, &[("zone", "a")]),
        node("a3", 8000, 8 * GIB, &[("zone", "a")]),
        node("b1", 8000, 8 * GIB, &[("zone", "b")]),
    ];
    let mut spec = svc(4);
    spec.placement.spread = vec!["zone".into()];
    let p = run(&nodes, &[], &spec);
    assert_eq!(per_node(&p).get("id-b1"), Some(&2), "{:?}", per_node(&p));
}

#[test]
fn binpack_fills_one_node_before_the_next() {
    let nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    let mut spec = svc(3);
    spec.placement.strategy = Strategy::Binpack;
    spec.reservations.cpu_millis = 1000;
    let p = run(&nodes, &[], &spec);
    assert_eq!(per_node(&p).values().max(), Some(&3), "{:?}", per_node(&p));
}

#[test]
fn constraints_and_max_replicas_per_node_are_never_broken() {
    let nodes = vec![
        node("n0", 4000, 8 * GIB, &[("disk", "ssd")]),
        node("n1", 4000, 8 * GIB, &[("disk", "ssd")]),
        node("n2", 4000, 8 * GIB, &[]),
    ];
    let mut spec = svc(4);
    spec.placement.constraints = vec![Constraint::parse("node.labels.disk == ssd").unwrap()];
    spec.placement.max_replicas_per_node = Some(1);
    let p = run(&nodes, &[], &spec);
    assert_eq!(
        per_node(&p),
        BTreeMap::from([("id-n0".into(), 1), ("id-n1".into(), 1)])
    );
    assert_eq!(p.unplaced.len(), 1);
    let u = &p.unplaced[0];
    assert_eq!(u.missing, 2);
    assert!(
        u.reason.contains("of 3 nodes")
            && u.reason.contains("1 fail node.labels.disk == ssd")
            && u.reason.contains("2 already run 1 (max_replicas_per_node)"),
        "{}",
        u.reason
    );
}

#[test]
fn unplaceable_work_says_which_nodes_lack_what() {
    let nodes = vec![
        node("n0", 4000, GIB, &[("zone", "b")]),
        node("n1", 4000, GIB, &[("zone", "b")]),
        node("n2", 4000, 8 * GIB, &[("zone", "a")]),
    ];
    let mut spec = svc(1);
    spec.reservations.memory_bytes = 2 * GIB;
    spec.placement.constraints = vec![Constraint::parse("node.labels.zone == b").unwrap()];
    let p = run(&nodes, &[], &spec);
    assert!(p.place.is_empty());
    assert_eq!(
        p.unplaced[0].reason,
        "no node can take it (needs 2 GiB memory, the process driver, node.labels.zone == b): \
         of 3 nodes, 1 fail node.labels.zone == b; 2 lack memory"
    );
}

#[test]
fn global_mode_runs_one_instance_on_each_eligible_node() {
    let mut nodes: Vec<Node> = (0..4)
        .map(|i| node(&format!("n{i}"), 4000, 8 * GIB, &[("role", "edge")]))
        .collect();
    nodes[3].labels.clear();
    nodes[2].drivers = vec![Driver::Docker];
    let mut spec = svc(1);
    spec.placement.mode = DeployMode::Global;
    spec.placement.constraints = vec![Constraint::parse("node.labels.role == edge").unwrap()];
    let p = run(&nodes, &[], &spec);
    assert_eq!(
        per_node(&p),
        BTreeMap::from([("id-n0".into(), 1), ("id-n1".into(), 1)])
    );
    // Run again with those placed: nothing more to do.
    let allocs: Vec<Allocation> = p
        .place
        .iter()
        .enumerate()
        .map(|(k, pl)| alloc(&format!("a{k}"), pl.instance.index, &pl.node, 2))
        .collect();
    assert_eq!(run(&nodes, &allocs, &spec), Plan::default());
}

#[test]
fn instances_on_a_down_node_are_stopped_and_placed_elsewhere() {
    let mut nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    nodes[0].last_heartbeat_ms = 1_000; // silent for 9 s, down after 5
    let allocs = vec![alloc("a1", 1, "id-n0", 2), alloc("a2", 2, "id-n1", 2)];
    let p = run(&nodes, &allocs, &svc(2));
    assert_eq!(p.stop.len(), 1);
    assert_eq!(p.stop[0].allocation, "a1");
    assert!(p.stop[0].reason.contains("id-n0 is down"));
    assert_eq!(p.place.len(), 1);
    assert_eq!(
        (p.place[0].instance.index, p.place[0].node.as_str()),
        (1, "id-n1")
    );
}

#[test]
fn a_draining_node_gets_replacements_first_and_keeps_its_instances_until_then() {
    let mut nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    nodes[0].status = NodeStatus::Draining;
    let allocs = vec![alloc("a1", 1, "id-n0", 2)];
    let p = run(&nodes, &allocs, &svc(1));
    assert!(p.stop.is_empty(), "start-first: nothing stops yet");
    assert_eq!(p.place.len(), 1);
    assert_eq!(p.place[0].node, "id-n1");
    assert_eq!(p.place[0].replaces.as_deref(), Some("a1"));
    assert_eq!(
        p.place[0].instance.index, 2,
        "the replacement runs beside the old copy under an index of its own"
    );
}

#[test]
fn a_copy_being_replaced_keeps_running_and_is_neither_counted_nor_replaced_again() {
    let mut nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    nodes[0].status = NodeStatus::Draining;
    let mut old = alloc("a1", 1, "id-n0", 2);
    old.replaced_by = Some("a2".into());
    let allocs = vec![old, alloc("a2", 2, "id-n1", 2)];
    assert_eq!(run(&nodes, &allocs, &svc(1)), Plan::default());
    // Scaled to 2 meanwhile: the missing one takes index 3, not the retiring copy's 1.
    let p = run(&nodes, &allocs, &svc(2));
    assert!(p.stop.is_empty());
    assert_eq!(p.place.len(), 1);
    assert_eq!(
        (p.place[0].instance.index, p.place[0].node.as_str()),
        (3, "id-n1")
    );
}

#[test]
fn scaling_down_stops_copies_on_draining_nodes_before_replacing_them() {
    let mut nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    nodes[0].status = NodeStatus::Draining;
    let allocs = vec![
        alloc("a1", 1, "id-n0", 2),
        alloc("a2", 2, "id-n1", 2),
        alloc("a3", 3, "id-n1", 2),
    ];
    let p = run(&nodes, &allocs, &svc(2));
    assert!(p.place.is_empty(), "{p:?}");
    assert_eq!(p.stop.len(), 1);
    assert_eq!(p.stop[0].allocation, "a1");
}

#[test]
fn a_node_back_from_down_keeps_one_copy_of_each_instance() {
    let nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    // a1 ran on n0, which went down; a2 replaced it on n1; n0 is back.
    let allocs = vec![alloc("a1", 1, "id-n0", 2), alloc("a2", 1, "id-n1", 2)];
    let p = run(&nodes, &allocs, &svc(1));
    assert!(p.place.is_empty());
    assert_eq!(p.stop.len(), 1);
    assert_eq!(p.stop[0].allocation, "a1", "the newer allocation stays");
}

#[test]
fn scaling_down_stops_the_highest_indexes() {
    let nodes = vec![node("n0", 4000, 8 * GIB, &[])];
    let allocs: Vec<Allocation> = (1..=4)
        .map(|i| alloc(&format!("a{i}"), i, "id-n0", 2))
        .collect();
    let p = run(&nodes, &allocs, &svc(2));
    let mut stopped: Vec<&str> = p.stop.iter().map(|s| s.allocation.as_str()).collect();
    stopped.sort_unstable();
    assert_eq!(stopped, ["a3", "a4"]);
    assert!(p.stop.iter().all(|s| s.reason == "scaled to 2"));
}

#[test]
fn host_mode_ports_are_not_placed_twice_on_one_node() {
    let nodes = vec![
        node("n0", 4000, 8 * GIB, &[]),
        node("n1", 4000, 8 * GIB, &[]),
    ];
    let mut spec = svc(3);
    spec.ports = vec![PortSpec {
        name: "http".into(),
        target: 80,
        protocol: "tcp".into(),
        published: Some(8080),
        host_mode: true,
    }];
    let p = run(&nodes, &[], &spec);
    assert_eq!(p.place.len(), 2);
    assert_eq!(per_node(&p).len(), 2);
    assert!(p.unplaced[0].reason.contains("have host port 8080 taken"));
}

#[test]
fn the_same_inputs_give_the_same_plan() {
    let nodes = synthetic::nodes(200, 1);
    let specs = synthetic::services(50, 7, 2);
    let st = stack();
    let names = synthetic::names(specs.len());
    let groups = synthetic::groups(&st, &specs, &names);
    let snap = Snapshot {
        nodes: &nodes,
        allocations: &[],
        groups: &groups,
    };
    let opts = Options {
        now_ms: 1_000,
        ..OPTS
    };
    assert_eq!(plan(&snap, opts), plan(&snap, opts));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the cluster and the services: no node holds more than it offers, and every
    /// placement meets its service's constraints, per-node limit and driver.
    #[test]
    fn plans_never_overcommit_nor_break_placement_rules(
        seed in any::<u64>(),
        n_nodes in 1usize..40,
        n_services in 1usize..20,
        replicas in 1u32..12,
        max_per_node in proptest::option::of(1u32..4),
    ) {
        let nodes = synthetic::nodes(n_nodes, seed);
        let mut specs = synthetic::services(n_services, replicas, seed.rotate_left(7));
        for s in specs.iter_mut().step_by(3) {
            s.placement.max_replicas_per_node = max_per_node;
        }
        let st = stack();
        let names = synthetic::names(specs.len());
        let groups = synthetic::groups(&st, &specs, &names);
        let p = plan(
            &Snapshot { nodes: &nodes, allocations: &[], groups: &groups },
            Options { seed, now_ms: 1_000, down_after_ms: 5_000 },
        );
        let by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut used: HashMap<&str, (u64, u64)> = HashMap::new();
        let mut per: HashMap<(&str, &str), u32> = HashMap::new();
        for pl in &p.place {
            let n = by_id[pl.node.as_str()];
            let spec = &specs[names.iter().position(|x| *x == pl.instance.service).unwrap()];
            prop_assert!(n.drivers.contains(&spec.driver));
            prop_assert!(spec.placement.constraints.iter().all(|c| c.holds(n)));
            let u = used.entry(n.id.as_str()).or_default();
            u.0 += pl.reserved.cpu_millis;
            u.1 += pl.reserved.memory_bytes;
            let c = per.entry((n.id.as_str(), pl.instance.service.as_str())).or_default();
            *c += 1;
            if let Some(m) = spec.placement.max_replicas_per_node {
                prop_assert!(*c <= m);
            }
        }
        for (id, (cpu, mem)) in used {
            let n = by_id[id];
            prop_assert!(cpu <= n.resources.cpu_millis && mem <= n.resources.memory_bytes);
        }
        // Everything asked for is placed or reported.
        let placed = p.place.len() as u32;
        let missing: u32 = p.unplaced.iter().map(|u| u.missing).sum();
        prop_assert_eq!(placed + missing, replicas * n_services as u32);
    }
}
