//! Synthetic clusters for benchmarks and property tests: heterogeneous nodes and groups, all
//! derived from a seed.

use std::collections::BTreeMap;

use skiff_model::{
    Constraint, ConstraintField, Driver, Node, NodeResources, NodeStatus, PlacementSpec,
    Reservations, ServiceSpec, StackKey,
};

/// xorshift64*: enough randomness for shapes, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

pub const ZONES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// `count` nodes: 2–16 CPUs, 4–64 GiB, a zone label each, a `disk=ssd` label on a third,
/// the Docker driver on half (the process driver on all).
pub fn nodes(count: usize, seed: u64) -> Vec<Node> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_string(), ZONES[i % ZONES.len()].to_string());
            if rng.below(3) == 0 {
                labels.insert("disk".to_string(), "ssd".to_string());
            }
            let mut drivers = vec![Driver::Process];
            if rng.below(2) == 0 {
                drivers.push(Driver::Docker);
            }
            Node {
                id: format!("n{i:05}"),
                name: format!("node-{i}"),
                address: format!("10.231.{}.{}", i / 250, i % 250 + 2),
                agent_port: 0,
                resources: NodeResources {
                    cpu_millis: 2000 * (1 + rng.below(8)),
                    memory_bytes: (4 << 30) * (1 + rng.below(16)),
                    ports: (20000, 29999),
                },
                labels,
                drivers,
                proxies: false,
                status: NodeStatus::Ready,
                last_heartbeat_ms: 1_000,
            }
        })
        .collect()
}

/// `count` services of `replicas` each, reserving 50m–500m CPU and 32–256 MiB; every fifth has
/// a constraint (`disk == ssd` or a zone other than `a`) and spreads over zones.
pub fn services(count: usize, replicas: u32, seed: u64) -> Vec<ServiceSpec> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let mut placement = PlacementSpec::default();
            if i % 5 == 0 {
                placement.constraints.push(if rng.below(2) == 0 {
                    Constraint {
                        field: ConstraintField::Label("disk".into()),
                        equal: true,
                        value: "ssd".into(),
                    }
                } else {
                    Constraint {
                        field: ConstraintField::Label("zone".into()),
                        equal: false,
                        value: "a".into(),
                    }
                });
                placement.spread.push("zone".into());
            }
            ServiceSpec {
                driver: if rng.below(4) == 0 {
                    Driver::Docker
                } else {
                    Driver::Process
                },
                replicas,
                reservations: Reservations {
                    cpu_millis: 50 * (1 + rng.below(10)),
                    memory_bytes: (32 << 20) * (1 + rng.below(8)),
                },
                placement,
                ..ServiceSpec::default()
            }
        })
        .collect()
}

/// Service names `s0`, `s1`, … for `count` services.
pub fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("s{i}")).collect()
}

/// One group per service, named by `names`, at release 1.
pub fn groups<'a>(
    stack: &'a StackKey,
    specs: &'a [ServiceSpec],
    names: &'a [String],
) -> Vec<crate::Group<'a>> {
    specs
        .iter()
        .zip(names)
        .map(|(spec, service)| crate::Group {
            stack,
            service,
            release: 1,
            spec,
            replace: &[],
            extra: 0,
        })
        .collect()
}

/// The stack all synthetic services belong to.
pub fn stack() -> StackKey {
    StackKey::new("default", "synthetic").expect("a valid stack name")
}
