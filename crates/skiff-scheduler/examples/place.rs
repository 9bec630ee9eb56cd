//! Prints the scheduler's figures for `bench/scheduler.sh`: placements per second on one core
//! and p99 per placement, on 5,000 heterogeneous nodes.
//! (a) 2,000 services of 50 replicas, one after another (constraints and zone spread on a
//!     fifth): placements per second;
//! (b) 100,000 services of one replica: each call is one placement, timed one by one (p99).

use std::time::Instant;

use skiff_scheduler::{Group, Options, Plan, Scheduler, Snapshot, plan, synthetic};

fn main() {
    let nodes = synthetic::nodes(5_000, 1);
    let stack = synthetic::stack();
    let opts = Options {
        seed: 3,
        now_ms: 1_000,
        down_after_ms: 5_000,
    };

    let specs = synthetic::services(2_000, 50, 2);
    let names = synthetic::names(specs.len());
    let groups = synthetic::groups(&stack, &specs, &names);
    let snapshot = Snapshot {
        nodes: &nodes,
        allocations: &[],
        groups: &groups,
    };
    let mut best = f64::MAX;
    let mut placed = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let p = plan(&snapshot, opts);
        best = best.min(t.elapsed().as_secs_f64());
        placed = p.place.len();
    }
    println!(
        "(a) 2000 services x 50 replicas on 5000 nodes: {placed} placed in {:.1} ms: {:.0} placements/s",
        best * 1e3,
        placed as f64 / best
    );

    let specs = synthetic::services(100_000, 1, 4);
    let names = synthetic::names(specs.len());
    let mut s = Scheduler::new(&nodes, &[], opts);
    let mut p = Plan::default();
    let mut times: Vec<f64> = Vec::with_capacity(specs.len());
    let t0 = Instant::now();
    for (spec, service) in specs.iter().zip(&names) {
        let g = Group {
            stack: &stack,
            service,
            release: 1,
            spec,
            replace: &[],
            extra: 0,
        };
        let t = Instant::now();
        s.plan_group(&g, &mut p);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = t0.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let p99 = times[times.len() * 99 / 100];
    println!(
        "(b) 100000 single placements on 5000 nodes: {} placed, {:.0} placements/s, p50 {:.1} us, p99 {:.1} us",
        p.place.len(),
        p.place.len() as f64 / total,
        times[times.len() / 2],
        p99
    );
}
