#!/usr/bin/env bash
# Issue 5 benchmarks (a) and (b): how long a dead or hung instance stays in skiff's DNS.
#  (a) kill -9 of a ready instance -> its SRV record gone; queries every 5 ms
#      (target p99 <= 50 ms, must <= 250 ms);
#  (b) SIGSTOP (hung) with readiness http every 1 s, 2 failures (the default timeout is a
#      third of the interval) -> gone (must <= 2.5 s).
# The client is crates/skiff/examples/dns_gone.rs; loopback only, stops by itself. A hang
# round starts right after the instance passed a probe again: the worst case of (b).
# Usage: bench/dns_gone.sh [KILL_ROUNDS=30] [HANG_ROUNDS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-30}
HANGS=${2:-8}
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
cargo build -q --release -p skiff --example dns_gone
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run
client=$target/release/examples/dns_gone

work=$(mktemp -d)
. bench/lib.sh
cleanup() { stop_dev; rm -rf "$work"; }
trap cleanup EXIT

# Four replicas of an HTTP service; a crash restarts at once (10 ms back-off, doubling).
cat > "$work/compose.yaml" <<'YAML'
name: gone
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    restart: always
    deploy:
      replicas: 4
      restart_policy: {condition: any, delay: 10ms}
    x-skiff:
      readiness:
        http: {path: /health}
        interval: 1s
        retries: 2
YAML
start_dev "$work/data"
"$skiff" up -f "$work/compose.yaml" > /dev/null

common=(--api "$SKIFF_ADDR" --dns "$dev_dns" --stack gone --service web --replicas 4 --every-ms 5)
echo "== (a) crash: kill -9 a ready instance (target p99 <= 50 ms, must <= 250 ms)"
"$client" "${common[@]}" --mode kill --rounds "$KILLS" | tail -n 1
echo "== (b) hang: SIGSTOP, readiness every 1 s, 2 failures, default timeout 333 ms (must <= 2.5 s)"
"$client" "${common[@]}" --mode hang --rounds "$HANGS"
