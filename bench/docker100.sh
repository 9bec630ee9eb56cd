#!/usr/bin/env bash
# Issue 4 benchmark, side by side in one run (compare ratios; the machine is noisy):
#  (a) wall time from `skiff up` to N containers of the demo image all running and answering
#      (TCP readiness on their published port), with `skiff dev` on the Docker driver;
#  (b) the baseline: `docker run -d -p 127.0.0.1::8080` of the same image, P at a time
#      (shared/baselines/docker_par.sh's method), then polling each published port until it
#      answers.
# Usage: bench/docker100.sh [N=100] [ROUNDS=3] [P=4]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
ROUNDS=${2:-3}
P=${3:-4}
scripts/ensure-docker >/dev/null
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run
image=skiff-demo-bench:1

work=$(mktemp -d)
. bench/lib.sh
cleanup() {
  stop_dev
  docker rm -f $(docker ps -aq --filter label=bench=skiff-par) >/dev/null 2>&1 || true
  # An interrupted round leaves the skiff side's containers behind too.
  docker rm -f $(docker ps -aq --filter label=io.skiff.stack=bench) >/dev/null 2>&1 || true
  docker network rm $(docker network ls -q --filter label=io.skiff.stack=bench) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image: busybox-static + a static skiff-demo, FROM scratch (no registry needed).
RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release -p skiff-demo \
  --target x86_64-unknown-linux-gnu --target-dir target/static
mkdir -p "$work/ctx"
cp target/static/x86_64-unknown-linux-gnu/release/skiff-demo /bin/busybox "$work/ctx/"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY skiff-demo /bin/skiff-demo\nENV DEMO_HOST=0.0.0.0\nENTRYPOINT ["/bin/skiff-demo"]\n' > "$work/ctx/Dockerfile"
docker build -q -t "$image" "$work/ctx" >/dev/null

printf 'name: bench\nservices:\n  s:\n    image: %s\n    command: [--name, s]\n    expose: ["8080"]\n    deploy: {replicas: %s}\n' \
  "$image" "$N" > "$work/compose.yaml"

now_ms() { date +%s%3N; }

run_skiff() {
  start_dev "$work/data-$1"
  local t0; t0=$(now_ms)
  "$skiff" up -f "$work/compose.yaml" --timeout 600 > "$work/up.out"
  local t1; t1=$(now_ms)
  grep -q "$N instances healthy" "$work/up.out" || { cat "$work/up.out" >&2; exit 1; }
  "$skiff" down bench > /dev/null
  stop_dev
  echo $((t1 - t0))
}

run_docker() {
  local t0; t0=$(now_ms)
  seq "$N" | xargs -P "$P" -I{} docker run -d --label bench=skiff-par -p 127.0.0.1::8080 \
    "$image" --name d{} > "$work/ids"
  while read -r id; do
    port=$(docker port "$id" 8080/tcp | head -1 | sed 's/.*://')
    until (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do sleep 0.002; done
  done < "$work/ids"
  local t1; t1=$(now_ms)
  docker rm -f $(cat "$work/ids") > /dev/null
  echo $((t1 - t0))
}

printf '%-6s %16s %22s %8s\n' round skiff_up_ms "docker_run_P${P}_ms" ratio
skiffs=(); dockers=(); ratios=()
for r in $(seq "$ROUNDS"); do
  s=$(run_skiff "$r"); d=$(run_docker)
  ratio=$(awk -v a="$s" -v b="$d" 'BEGIN{printf "%.2f", a/b}')
  skiffs+=("$s"); dockers+=("$d"); ratios+=("$ratio")
  printf '%-6s %16s %22s %8s\n' "$r" "$s" "$d" "$ratio"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
ms=$(median "${skiffs[@]}"); md=$(median "${dockers[@]}")
echo "median: skiff up -> $N containers ready ${ms} ms; docker run -d (P=$P) + ready ${md} ms; median of round ratios $(median "${ratios[@]}") (below 1 = skiff faster)"
