#!/usr/bin/env bash
# Issue 21 benchmark: a whole environment brought up by `skiff up -n ENV`.
# The stack (generated into a temp dir): 40 services of the demo workload (skiff-demo, process
# driver) in 5 batches of 8, each service of batches 2-5 depending on 1-3 services of the
# batch before with `condition: service_healthy`; a health check on every service (command
# `skiff-demo probe /health`, or an x-skiff HTTP readiness check on every third one; interval
# 5s, start_period 30s), and a slow start (150-600 ms before listening) on every fifth.
#  (a) `skiff up -n env1` -> all 40 healthy, ROUNDS times (median), each on a fresh `skiff dev`;
#  (b) five environments e1..e5 brought up at once (`skiff up -n eN` in parallel) on one
#      `skiff dev`: each one's time and its ratio to the median of (a).
# There is no docker compose here to compare with; the floor printed beside is what the graph
# itself costs: the longest chain of slow starts (nothing can be faster) and the sum of every
# service's own start delay (what a one-at-a-time bring-up would wait at least).
# Usage: bench/env.sh [ROUNDS=3]; BENCH_SHORT=1: one round of (a).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
[ -n "${BENCH_SHORT:-}" ] && ROUNDS=1
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}
demo_dir=$(dirname "${SKIFF_DEMO_BIN:-$target/release/skiff-demo}")
export PATH=$demo_dir:$PATH

work=$(mktemp -d)
. bench/lib.sh
cleanup() { stop_dev; rm -rf "$work"; }
trap cleanup EXIT

BATCHES=5 PER=8
# delay_ms BATCH I: the slow start of service I of BATCH (every fifth service).
delay_ms() { local n=$(($1 * PER + $2)); if [ $((n % 5)) -eq 3 ]; then echo $((150 + (n * 37) % 450)); else echo 0; fi; }
# deps BATCH I: indexes (in BATCH-1) that service I of BATCH depends on: 1 to 3 of them.
deps() {
  local b=$1 i=$2 k=$(( (b + i) % 3 + 1 )) j
  for j in $(seq 0 $((k - 1))); do echo $(( (i + j * 3) % PER )); done | sort -un
}

file=$work/env.yaml
{
  echo "name: shop"
  echo "x-skiff: {driver: process}"
  echo "services:"
  for b in $(seq 0 $((BATCHES - 1))); do
    for i in $(seq 0 $((PER - 1))); do
      n=$((b * PER + i)); d=$(delay_ms "$b" "$i")
      echo "  s${b}x${i}:"
      echo "    command: [skiff-demo, --start-delay, ${d}ms]"
      echo "    expose: [\"8080\"]"
      if [ $((n % 3)) -eq 2 ]; then
        echo "    x-skiff: {readiness: {http: {path: /health}, interval: 5s, start_period: 30s}}"
      else
        echo "    healthcheck: {test: [CMD, skiff-demo, probe, /health], interval: 5s, timeout: 2s, retries: 3, start_period: 30s}"
      fi
      if [ "$b" -gt 0 ]; then
        echo "    depends_on:"
        for j in $(deps "$b" "$i"); do
          echo "      s$((b - 1))x${j}: {condition: service_healthy}"
        done
      fi
    done
  done
} > "$file"

# The floor: the longest chain of start delays, and their sum.
floor=$(for b in $(seq 0 $((BATCHES - 1))); do
  for i in $(seq 0 $((PER - 1))); do echo "$b $i $(delay_ms "$b" "$i") $(deps "$b" "$i" | tr '\n' ,)"; done
done | awk '
  { b=$1; i=$2; d=$3; n=split($4, dep, ",");
    best=0; if (b > 0) for (k=1; k<=n; k++) if (dep[k] != "" && path[b-1, dep[k]] > best) best=path[b-1, dep[k]];
    path[b, i]=best + d; if (path[b, i] > longest) longest=path[b, i]; sum+=d }
  END { printf "%d %d", longest, sum }')
echo "stack: $((BATCHES * PER)) services, $BATCHES batches, file $file"
echo "floor: longest chain of start delays ${floor% *} ms; sum of all start delays ${floor#* } ms"

# up_ms ENV: runs `skiff up -n ENV` and prints its time in ms (from its own report).
up_ms() {
  local out
  out=$("$skiff" up -n "$1" --timeout 120 -f "$file" 2>&1) || { echo "$out" >&2; echo fail; return; }
  echo "$out" > "$work/up-$1.out"
  echo "$out" | sed -n 's/.*instances healthy in \([0-9.]*\)s.*/\1/p' | awk '{printf "%.0f", $1*1000}'
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

alone=()
for r in $(seq "$ROUNDS"); do
  start_dev "$work/data-$r"
  ms=$(up_ms env1)
  echo "round $r: skiff up -n env1 -> 40 healthy in $ms ms"
  sed -n '/^critical path/,$p' "$work/up-env1.out" 2>/dev/null | sed 's/^/  /'
  alone+=("$ms")
  stop_dev
done
one=$(median "${alone[@]}")
echo "median: skiff up -n env1 -> 40 healthy $one ms (floor ${floor% *} ms)"

start_dev "$work/data-five"
pids=()
for e in 1 2 3 4 5; do
  ( up_ms "e$e" > "$work/five-e$e.ms" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
worst=0
for e in 1 2 3 4 5; do
  ms=$(cat "$work/five-e$e.ms")
  ratio=$(awk -v a="$ms" -v b="$one" 'BEGIN{ if (a == "fail") print "fail"; else printf "%.2f", a/b}')
  echo "five at once: e$e -> 40 healthy in $ms ms, ${ratio}x alone"
  worst=$(awk -v a="$ms" -v w="$worst" 'BEGIN{ if (a == "fail") print 1e9; else print (a > w ? a : w) }')
done
echo "five at once: slowest $worst ms, $(awk -v a="$worst" -v b="$one" 'BEGIN{printf "%.2f", a/b}')x alone"
stop_dev
