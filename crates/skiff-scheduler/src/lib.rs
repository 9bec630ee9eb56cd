//! Decides where instances run. Pure: no I/O, no clock, no async; time and a seed are
//! arguments, so a plan is a function of its inputs and every test can replay it.
//!
//! ```text
//!  Snapshot { nodes, allocations, groups }  ──plan(…, Options { seed, now_ms, … })──▶  Plan
//!                                                                  { place, stop, unplaced }
//! ```
//!
//! For each group (one service of one stack at its current release) the scheduler keeps the
//! allocations that may stay, stops the surplus and those on down nodes, replaces those on
//! draining nodes (start-first: the old one is stopped once its replacement is ready), and
//! places what is missing:
//! - **feasibility**, cheapest test first: node ready (not draining, heard from within the down
//!   timeout), driver present, placement constraints, `max_replicas_per_node` (one per node in
//!   `global` mode), host-mode ports free, CPU and memory reservations free;
//! - **score** among up to `limit` feasible nodes looked at from a seeded random start (all of
//!   them on small clusters): fewest replicas of the service per `spread` label value, then per
//!   node (`spread` strategy, the default) — or the fullest node (`binpack`).
//!
//! Work that fits nowhere is [`Unplaced`] with its reason in words, counting why nodes were
//! rejected: "of 5 nodes, 3 lack memory, 2 fail node.labels.zone == b".
//!
//! **Invariants:** a plan never puts more reservations on a node than it offers, never breaks a
//! constraint, `max_replicas_per_node` or a host port; the scheduler never writes anything (one
//! applier in the server commits plans).

pub mod rollout;
pub mod synthetic;
pub mod traffic;

use std::collections::HashMap;
use std::fmt::Write as _;

use skiff_model::{
    Allocation, DeployMode, Desired, InstanceId, Node, NodeStatus, Reservations, ServiceSpec,
    StackKey, Strategy,
};

/// What a plan depends on besides the snapshot.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Picks where the search over nodes starts (ties and sampling).
    pub seed: u64,
    /// Now, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// A node not heard from for this long is down, whatever its recorded status.
    pub down_after_ms: u64,
}

/// One service of one stack at the release that should run.
#[derive(Clone, Copy, Debug)]
pub struct Group<'a> {
    pub stack: &'a StackKey,
    pub service: &'a str,
    pub release: u64,
    pub spec: &'a ServiceSpec,
    /// Allocations to replace start-first now (a rollout's batch), as if their nodes drained.
    pub replace: &'a [String],
    /// Copies to run beside the replicas (a canary's or a blue-green release's new set,
    /// while the old copies still count as the replicas).
    pub extra: u32,
}

/// What the scheduler looks at.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub nodes: &'a [Node],
    pub allocations: &'a [Allocation],
    pub groups: &'a [Group<'a>],
}

/// A new allocation to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub instance: InstanceId,
    /// The node's id.
    pub node: String,
    pub release: u64,
    pub reserved: Reservations,
    pub host_ports: Vec<u16>,
    /// An allocation on a draining node to stop once this one is ready.
    pub replaces: Option<String>,
}

/// An allocation to stop now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    pub allocation: String,
    pub instance: InstanceId,
    pub reason: String,
}

/// Instances of a group that fit nowhere, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    pub stack: StackKey,
    pub service: String,
    pub missing: u32,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub place: Vec<Placement>,
    pub stop: Vec<Stop>,
    pub unplaced: Vec<Unplaced>,
}

/// Plans every group of the snapshot.
pub fn plan(snapshot: &Snapshot<'_>, opts: Options) -> Plan {
    let mut s = Scheduler::new(snapshot.nodes, snapshot.allocations, opts);
    let mut plan = Plan::default();
    for g in snapshot.groups {
        s.plan_group(g, &mut plan);
    }
    plan
}

/// A node as the planner tracks it: what is reserved on it so far, this plan included.
struct NodeState {
    usable: bool,
    draining: bool,
    cpu_used: u64,
    mem_used: u64,
    ports: Vec<u16>,
}

/// Places groups one after another against the nodes' running totals.
pub struct Scheduler<'a> {
    nodes: &'a [Node],
    state: Vec<NodeState>,
    by_id: HashMap<&'a str, usize>,
    /// Allocations desired to run, per (stack, service).
    groups: HashMap<(&'a StackKey, &'a str), Vec<&'a Allocation>>,
    rng: u64,
    /// Replicas of the group being planned per node (kept and placed), and which are set.
    here: Vec<u32>,
    touched: Vec<usize>,
}

/// Why the nodes of a cluster cannot take an instance, counted by the first test each fails.
#[derive(Default)]
struct Tally {
    fixed: [u32; 5],
    constraints: Vec<u32>,
    ports: Vec<(u16, u32)>,
}

impl Tally {
    fn add(&mut self, r: Reject) {
        match r {
            Reject::NotReady => self.fixed[0] += 1,
            Reject::Driver => self.fixed[1] += 1,
            Reject::PerNode => self.fixed[2] += 1,
            Reject::Cpu => self.fixed[3] += 1,
            Reject::Memory => self.fixed[4] += 1,
            Reject::Constraint(c) => {
                if self.constraints.len() <= c {
                    self.constraints.resize(c + 1, 0);
                }
                self.constraints[c] += 1;
            }
            Reject::Port(p) => match self.ports.iter_mut().find(|(q, _)| *q == p) {
                Some((_, n)) => *n += 1,
                None => self.ports.push((p, 1)),
            },
        }
    }

    /// Every reason with its count, in the order of the tests.
    fn reasons(&self) -> Vec<(Reject, u32)> {
        let mut out = vec![
            (Reject::NotReady, self.fixed[0]),
            (Reject::Driver, self.fixed[1]),
        ];
        out.extend(
            self.constraints
                .iter()
                .enumerate()
                .map(|(c, n)| (Reject::Constraint(c), *n)),
        );
        out.push((Reject::PerNode, self.fixed[2]));
        out.extend(self.ports.iter().map(|(p, n)| (Reject::Port(*p), *n)));
        out.push((Reject::Cpu, self.fixed[3]));
        out.push((Reject::Memory, self.fixed[4]));
        out.retain(|(_, n)| *n > 0);
        out
    }
}

/// Why one node cannot take one instance (the first test it fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    NotReady,
    Driver,
    Constraint(usize),
    PerNode,
    Port(u16),
    Cpu,
    Memory,
}

impl<'a> Scheduler<'a> {
    pub fn new(nodes: &'a [Node], allocations: &'a [Allocation], opts: Options) -> Self {
        let by_id: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let state: Vec<NodeState> = nodes
            .iter()
            .map(|n| {
                let fresh = n.last_heartbeat_ms.saturating_add(opts.down_after_ms) >= opts.now_ms;
                NodeState {
                    usable: fresh && n.status == NodeStatus::Ready,
                    draining: fresh && n.status == NodeStatus::Draining,
                    cpu_used: 0,
                    mem_used: 0,
                    ports: Vec::new(),
                }
            })
            .collect();
        let mut s = Scheduler {
            nodes,
            state,
            by_id,
            groups: HashMap::new(),
            rng: opts.seed ^ 0x9e37_79b9_7f4a_7c15,
            here: vec![0; nodes.len()],
            touched: Vec::new(),
        };
        for a in allocations.iter().filter(|a| a.desired == Desired::Run) {
            if let Some(&i) = s.by_id.get(a.node.as_str()) {
                s.take(i, &a.reserved, &a.host_ports);
            }
            s.groups
                .entry((&a.instance.stack, a.instance.service.as_str()))
                .or_default()
                .push(a);
        }
        s
    }

    /// Adds what `g` needs to `plan` and counts it against the nodes.
    pub fn plan_group(&mut self, g: &Group<'_>, plan: &mut Plan) {
        let spec = g.spec;
        let reserved = spec.reservations;
        let host_ports: Vec<u16> = spec
            .ports
            .iter()
            .filter(|p| p.host_mode)
            .filter_map(|p| p.published)
            .collect();
        for i in self.touched.drain(..) {
            self.here[i] = 0;
        }
        // Indexes in use (live copies and retiring ones), and the live copies.
        let mut kept: HashMap<u32, &Allocation> = HashMap::new();
        let mut live: Vec<(usize, &Allocation)> = Vec::new();
        let global = spec.placement.mode == DeployMode::Global;
        let mut sorted: Vec<&Allocation> = self
            .groups
            .get(&(g.stack, g.service))
            .cloned()
            .unwrap_or_default();
        // Prefer the current release, then the newest allocation, when two claim one index.
        sorted
            .sort_by(|a, b| (b.release == g.release, &b.id).cmp(&(a.release == g.release, &a.id)));
        for a in sorted {
            let node = self.by_id.get(a.node.as_str()).copied();
            let Some(i) = node.filter(|&i| self.state[i].usable || self.state[i].draining) else {
                plan.stop.push(stop(a, format!("node {} is down", a.node)));
                self.release_on(node, a);
                continue;
            };
            let unfit = global && !self.statically_fits(i, spec);
            if unfit || kept.contains_key(&a.instance.index) {
                let why = if unfit {
                    "its node no longer fits the service's placement"
                } else {
                    "another copy of this instance runs"
                };
                plan.stop.push(stop(a, why.to_string()));
                self.release_on(Some(i), a);
                continue;
            }
            kept.insert(a.instance.index, a);
            // A retiring copy runs (and holds its node's room) until its replacement is
            // ready; it is not one of the replicas any more.
            if a.replaced_by.is_none() {
                live.push((i, a));
            }
        }
        let wanted = spec.replicas as usize + g.extra as usize;
        if !global && live.len() > wanted {
            // Scaled down: keep copies on ready nodes, of the current release, with the
            // lowest indexes; stop the others.
            live.sort_by_key(|(i, a)| {
                (
                    self.state[*i].draining,
                    a.release != g.release,
                    a.instance.index,
                )
            });
            for (i, a) in live.split_off(wanted) {
                plan.stop
                    .push(stop(a, format!("scaled to {}", spec.replicas)));
                kept.remove(&a.instance.index);
                self.release_on(Some(i), a);
            }
        }
        let mut to_replace: Vec<&Allocation> = Vec::new();
        for (i, a) in &live {
            self.count(*i);
            if self.state[*i].draining || g.replace.contains(&a.id) {
                to_replace.push(a);
            }
        }
        for a in kept.values().filter(|a| a.replaced_by.is_some()) {
            if let Some(&i) = self.by_id.get(a.node.as_str()) {
                self.count(i);
            }
        }

        if global {
            let mut next = 1;
            for i in 0..self.nodes.len() {
                // `here` counts the kept instances per node: a node with one is covered.
                if !self.state[i].usable || self.here[i] > 0 || !self.statically_fits(i, spec) {
                    continue;
                }
                while kept.contains_key(&next) {
                    next += 1;
                }
                let index = next;
                next += 1;
                match self.check(i, spec, &reserved, &host_ports) {
                    Ok(()) => plan.place.push(self.put(g, index, i, &host_ports, None)),
                    Err(r) => plan.unplaced.push(Unplaced {
                        stack: g.stack.clone(),
                        service: g.service.to_string(),
                        missing: 1,
                        reason: format!(
                            "node {} fits its placement but {}",
                            self.nodes[i].name,
                            describe_one(r, spec)
                        ),
                    }),
                }
            }
            return;
        }
        // What is missing takes the lowest free indexes; then each copy on a draining node
        // gets a replacement under an index of its own (start-first: both run until the
        // replacement is ready, and two running copies never share a name).
        let mut free = (1u32..).filter(|index| !kept.contains_key(index));
        let mut missing: Vec<(u32, Option<&Allocation>)> = Vec::new();
        for _ in live.len()..wanted {
            missing.push((free.next().expect("indexes are unbounded"), None));
        }
        to_replace.sort_by_key(|a| a.instance.index);
        for a in to_replace {
            missing.push((free.next().expect("indexes are unbounded"), Some(a)));
        }
        let mut failed = 0u32;
        let mut reason = String::new();
        for (index, replaces) in missing {
            if failed > 0 {
                failed += 1;
                continue;
            }
            match self.select(spec, &reserved, &host_ports) {
                Ok(i) => plan
                    .place
                    .push(self.put(g, index, i, &host_ports, replaces)),
                Err(why) => {
                    failed = 1;
                    reason = why;
                }
            }
        }
        if failed > 0 {
            plan.unplaced.push(Unplaced {
                stack: g.stack.clone(),
                service: g.service.to_string(),
                missing: failed,
                reason,
            });
        }
    }

    /// Places instance `index` of `g` on node `i` and counts it there.
    fn put(
        &mut self,
        g: &Group<'_>,
        index: u32,
        i: usize,
        host_ports: &[u16],
        replaces: Option<&Allocation>,
    ) -> Placement {
        let reserved = g.spec.reservations;
        self.take(i, &reserved, host_ports);
        self.count(i);
        Placement {
            instance: instance(g, index),
            node: self.nodes[i].id.clone(),
            release: g.release,
            reserved,
            host_ports: host_ports.to_vec(),
            replaces: replaces.map(|a| a.id.clone()),
        }
    }

    fn count(&mut self, i: usize) {
        if self.here[i] == 0 {
            self.touched.push(i);
        }
        self.here[i] += 1;
    }

    fn release_on(&mut self, node: Option<usize>, a: &Allocation) {
        if let Some(i) = node {
            let st = &mut self.state[i];
            st.cpu_used = st.cpu_used.saturating_sub(a.reserved.cpu_millis);
            st.mem_used = st.mem_used.saturating_sub(a.reserved.memory_bytes);
            for p in &a.host_ports {
                if let Some(at) = st.ports.iter().position(|q| q == p) {
                    st.ports.swap_remove(at);
                }
            }
        }
    }

    fn take(&mut self, i: usize, r: &Reservations, ports: &[u16]) {
        let st = &mut self.state[i];
        st.cpu_used += r.cpu_millis;
        st.mem_used += r.memory_bytes;
        st.ports.extend_from_slice(ports);
    }

    /// Driver and constraints: what no amount of free room changes.
    fn statically_fits(&self, i: usize, spec: &ServiceSpec) -> bool {
        let n = &self.nodes[i];
        n.drivers.contains(&spec.driver) && spec.placement.constraints.iter().all(|c| c.holds(n))
    }

    fn check(
        &self,
        i: usize,
        spec: &ServiceSpec,
        r: &Reservations,
        ports: &[u16],
    ) -> Result<(), Reject> {
        let (n, st) = (&self.nodes[i], &self.state[i]);
        if !st.usable {
            return Err(Reject::NotReady);
        }
        if !n.drivers.contains(&spec.driver) {
            return Err(Reject::Driver);
        }
        if let Some(c) = spec.placement.constraints.iter().position(|c| !c.holds(n)) {
            return Err(Reject::Constraint(c));
        }
        let here = self.here[i];
        let max = match spec.placement.mode {
            DeployMode::Global => Some(1),
            DeployMode::Replicated => spec.placement.max_replicas_per_node,
        };
        if max.is_some_and(|m| here >= m) {
            return Err(Reject::PerNode);
        }
        if let Some(p) = ports.iter().find(|p| st.ports.contains(p)) {
            return Err(Reject::Port(*p));
        }
        if st.cpu_used + r.cpu_millis > n.resources.cpu_millis {
            return Err(Reject::Cpu);
        }
        if st.mem_used + r.memory_bytes > n.resources.memory_bytes {
            return Err(Reject::Memory);
        }
        Ok(())
    }

    /// The best of up to `limit` feasible nodes from a seeded random start; every node when
    /// none is feasible, to say why.
    fn select(
        &mut self,
        spec: &ServiceSpec,
        r: &Reservations,
        ports: &[u16],
    ) -> Result<usize, String> {
        let n = self.nodes.len();
        if n == 0 {
            return Err("no nodes have joined".into());
        }
        let limit = if n <= 64 {
            n
        } else {
            (2 * n.ilog2() as usize).max(8)
        };
        let start = (self.next_random() % n as u64) as usize;
        // Replicas per spread label value, counted once per selection over this group.
        let spread_counts = self.spread_counts(spec);
        let mut best: Option<(Score, usize)> = None;
        let mut seen = 0;
        let mut rejects = Tally::default();
        for k in 0..n {
            let i = (start + k) % n;
            match self.check(i, spec, r, ports) {
                Ok(()) => {
                    let score = self.score(i, spec, r, &spread_counts);
                    if best.as_ref().is_none_or(|(b, _)| score < *b) {
                        best = Some((score, i));
                    }
                    seen += 1;
                    if seen >= limit {
                        break;
                    }
                }
                Err(why) => rejects.add(why),
            }
        }
        match best {
            Some((_, i)) => Ok(i),
            None => Err(describe(&rejects, n, spec, r, ports)),
        }
    }

    fn spread_counts(&self, spec: &ServiceSpec) -> Vec<HashMap<&'a str, u32>> {
        spec.placement
            .spread
            .iter()
            .map(|key| {
                let mut counts: HashMap<&str, u32> = HashMap::new();
                for &i in &self.touched {
                    let c = self.here[i];
                    let v = self.nodes[i].labels.get(key).map_or("", String::as_str);
                    *counts.entry(v).or_default() += c;
                }
                counts
            })
            .collect()
    }

    fn score(
        &self,
        i: usize,
        spec: &ServiceSpec,
        r: &Reservations,
        spread_counts: &[HashMap<&str, u32>],
    ) -> Score {
        let (n, st) = (&self.nodes[i], &self.state[i]);
        let mut labels = [0u32; 2];
        for (slot, (key, counts)) in spec
            .placement
            .spread
            .iter()
            .zip(spread_counts)
            .take(2)
            .enumerate()
        {
            let v = n.labels.get(key).map_or("", String::as_str);
            labels[slot] = counts.get(v).copied().unwrap_or(0);
        }
        // Use after placing, in millionths of the node (CPU and memory averaged).
        let frac = |used: u64, cap: u64| -> u64 {
            used.saturating_mul(1_000_000).checked_div(cap).unwrap_or(0)
        };
        let util = (frac(st.cpu_used + r.cpu_millis, n.resources.cpu_millis)
            + frac(st.mem_used + r.memory_bytes, n.resources.memory_bytes))
            / 2;
        let here = self.here[i];
        match spec.placement.strategy {
            Strategy::Spread => (labels[0], labels[1], here, util),
            Strategy::Binpack => (labels[0], labels[1], 0, u64::MAX - util),
        }
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Lower is better: replicas per first and second spread label value, replicas on the node,
/// then use (spread) or room left (binpack).
type Score = (u32, u32, u32, u64);

fn stop(a: &Allocation, reason: String) -> Stop {
    Stop {
        allocation: a.id.clone(),
        instance: a.instance.clone(),
        reason,
    }
}

fn instance(g: &Group<'_>, index: u32) -> InstanceId {
    InstanceId {
        stack: g.stack.clone(),
        service: g.service.to_string(),
        index,
    }
}

fn bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB && n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else {
        format!("{} MiB", n.div_ceil(MIB))
    }
}

fn describe_one(r: Reject, spec: &ServiceSpec) -> String {
    let res = spec.reservations;
    match r {
        Reject::NotReady => "it is not ready".into(),
        Reject::Driver => format!("it has no {} driver", spec.driver),
        Reject::Constraint(c) => format!("it fails {}", spec.placement.constraints[c]),
        Reject::PerNode => "it runs as many replicas as allowed per node".into(),
        Reject::Port(p) => format!("its host port {p} is taken"),
        Reject::Cpu => format!("it lacks {}m CPU", res.cpu_millis),
        Reject::Memory => format!("it lacks {} memory", bytes(res.memory_bytes)),
    }
}

/// "no node can take it (needs 2 GiB memory, node.labels.zone == b): of 5 nodes, 3 lack
/// memory, 2 fail node.labels.zone == b"
fn describe(
    rejects: &Tally,
    total: usize,
    spec: &ServiceSpec,
    r: &Reservations,
    ports: &[u16],
) -> String {
    let mut needs = Vec::new();
    if r.memory_bytes > 0 {
        needs.push(format!("{} memory", bytes(r.memory_bytes)));
    }
    if r.cpu_millis > 0 {
        needs.push(format!("{}m CPU", r.cpu_millis));
    }
    needs.push(format!("the {} driver", spec.driver));
    needs.extend(spec.placement.constraints.iter().map(|c| c.to_string()));
    if !ports.is_empty() {
        needs.push(format!("host ports {ports:?}"));
    }
    let why = rejects.reasons();
    let mut text = format!(
        "no node can take it (needs {}): of {total} node{}",
        needs.join(", "),
        if total == 1 { "" } else { "s" }
    );
    for (k, (reject, count)) in why.iter().enumerate() {
        let what = match reject {
            Reject::NotReady => "are not ready (down or draining)".to_string(),
            Reject::Driver => "lack the driver".to_string(),
            Reject::Constraint(c) => format!("fail {}", spec.placement.constraints[*c]),
            Reject::PerNode => match spec.placement.max_replicas_per_node {
                Some(m) => format!("already run {m} (max_replicas_per_node)"),
                None => "already run one".to_string(),
            },
            Reject::Port(p) => format!("have host port {p} taken"),
            Reject::Cpu => "lack CPU".to_string(),
            Reject::Memory => "lack memory".to_string(),
        };
        let _ = write!(text, "{} {count} {what}", if k == 0 { "," } else { ";" });
    }
    text
}

#[cfg(test)]
mod tests;
