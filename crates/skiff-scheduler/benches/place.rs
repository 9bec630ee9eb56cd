//! `cargo bench -p skiff-scheduler`: 100,000 placements on 5,000 heterogeneous nodes, one
//! group after another (2,000 services of 50 replicas; constraints and zone spread on a fifth
//! of them). `bench/scheduler.sh` prints placements per second and p99 per placement.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use skiff_scheduler::{Options, Snapshot, plan, synthetic};

fn place_100k_on_5k_nodes(c: &mut Criterion) {
    let nodes = synthetic::nodes(5_000, 1);
    let specs = synthetic::services(2_000, 50, 2);
    let stack = synthetic::stack();
    let names = synthetic::names(specs.len());
    let groups = synthetic::groups(&stack, &specs, &names);
    let snapshot = Snapshot {
        nodes: &nodes,
        allocations: &[],
        groups: &groups,
    };
    let opts = Options {
        seed: 3,
        now_ms: 1_000,
        down_after_ms: 5_000,
    };
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("100k placements on 5k nodes", |b| {
        b.iter(|| plan(&snapshot, opts))
    });
    g.finish();
}

criterion_group!(benches, place_100k_on_5k_nodes);
criterion_main!(benches);
