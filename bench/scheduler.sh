#!/usr/bin/env bash
# The scheduler alone, one core: placements per second and p99 per placement on 5,000
# heterogeneous nodes (crates/skiff-scheduler/examples/place.rs). Target >= 50,000/s, must
# >= 10,000/s (kube-scheduler reports 578 pods/s at 5,000 nodes). `cargo bench -p
# skiff-scheduler` runs the same workload under criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p skiff-scheduler --example place
target=$(realpath "${CARGO_TARGET_DIR:-target}")
taskset -c 0 "$target/release/examples/place"
