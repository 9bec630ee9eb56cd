#!/usr/bin/env bash
# Issue 3 benchmark, side by side in one run (compare ratios; the machine is noisy):
#  (a) wall time from `skiff up` to N replicas of busybox httpd (WORKLOAD=demo: skiff-demo) all
#      running and passing their first health check (TCP readiness), with `skiff dev` on the
#      process driver: the same program the floor starts;
#  (b) the floor: shared/baselines/spawn100.py — N busybox httpd spawned by a plain script
#      and polled every 2 ms until each answers;
#  (c) RSS of `skiff dev` idle, with N demo instances, and with 1000 `sleep` instances.
# skiff's data dirs live on a fresh ext4 (mkfs defaults, with a journal) in a loop file: this
# machine's root is ext4 without a journal, where every file created scans past each inode
# deleted in the last 1-6 minutes (recently_deleted() in fs/ext4/ialloc.c), so there the cost
# of a start depends on what ran before (up to a third of a bring-up's CPU right after another
# round). The 1,000 sleepers run once more on the root fs at the end, as information.
# SCRATCH_FS=root keeps everything on the root fs.
# Usage: bench/up100.sh [N=100] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
ROUNDS=${2:-3}
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run
if ! command -v busybox >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
mkdir -p /tmp/baselines/www && echo ok > /tmp/baselines/www/index.html
baseline=${SKIFF_BASELINES:-../shared/baselines}/spawn100.py

work=$(mktemp -d)
. bench/lib.sh
data=$work
if [ "${SCRATCH_FS:-loop}" = loop ]; then
  truncate -s 2G "$work/fs.img" && mkfs.ext4 -q -F "$work/fs.img" && mkdir "$work/fs" \
    && mount -o loop "$work/fs.img" "$work/fs" && data=$work/fs \
    || echo "no loop-mounted ext4 here; data dirs on the root fs" >&2
fi
cleanup() { stop_dev; [ "$data" = "$work" ] || umount "$data"; rm -rf "$work"; }
trap cleanup EXIT

stack() { # name replicas program args...
  local name=$1 n=$2; shift 2
  printf 'name: %s\nx-skiff: {driver: process}\nservices:\n  s:\n    command: [%s]\n    deploy: {replicas: %s}\n' \
    "$name" "$(printf '"%s", ' "$@" | sed 's/, $//')" "$n" > "$work/$name.yaml"
  [ "$name" = demo ] && printf '    expose: ["8080"]\n' >> "$work/$name.yaml"
  echo "$work/$name.yaml"
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

if [ "${WORKLOAD:-httpd}" = demo ]; then
  demo=$(stack demo "$N" skiff-demo)
else
  demo=$work/demo.yaml
  cat > "$demo" <<YAML
name: demo
x-skiff: {driver: process}
services:
  s:
    command: [/usr/bin/busybox, sh, -c, 'exec /usr/bin/busybox httpd -f -p 127.0.0.1:\$\$PORT -h /tmp/baselines/www']
    expose: ["80"]
    deploy: {replicas: $N}
YAML
fi
printf '%-6s %14s %16s %10s %12s\n' round skiff_up_ms spawn_floor_ms ratio rss_idle_kb
skiff_ms=(); floor_ms=(); rss_idle=(); rss_loaded=()
for r in $(seq "$ROUNDS"); do
  start_dev "$data/data-$r"
  rss_idle+=("$(rss_kb "$dev_pid")")
  out=$(PATH=$target/release:$PATH "$skiff" up -f "$demo")
  ms=$(echo "$out" | sed -n 's/.*healthy in \([0-9.]*\)s/\1/p' | awk '{printf "%.0f", $1*1000}')
  rss_loaded+=("$(rss_kb "$dev_pid")")
  "$skiff" down demo >/dev/null
  stop_dev
  fl=$(python3 "$baseline" "$N" 2>/dev/null | sed -n 's/.*all_healthy_ms=\([0-9.]*\).*/\1/p' | awk '{printf "%.0f", $1}')
  skiff_ms+=("$ms"); floor_ms+=("$fl")
  printf '%-6s %14s %16s %10s %12s\n' "$r" "$ms" "$fl" "$(awk -v a="$ms" -v b="$fl" 'BEGIN{printf "%.2f", a/b}')" "${rss_idle[-1]}"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms=$(median "${skiff_ms[@]}"); fl=$(median "${floor_ms[@]}")
echo "median: skiff up -> $N healthy ${ms} ms; spawn floor ${fl} ms; ratio $(awk -v a="$ms" -v b="$fl" 'BEGIN{printf "%.2f", a/b}')"
echo "skiff dev RSS: idle $(median "${rss_idle[@]}") kB, with $N instances $(median "${rss_loaded[@]}") kB"

sleepers=$(stack sleepers 1000 sleep 3600)
start_dev "$data/data-big"
out=$("$skiff" up --timeout 300 -f "$sleepers")
echo "1000 sleep instances: $(echo "$out" | grep "instances healthy in")"
sleep 2
echo "skiff dev RSS with 1000 instances: $(rss_kb "$dev_pid") kB"
"$skiff" down sleepers >/dev/null
stop_dev
if [ "$data" != "$work" ]; then
  start_dev "$work/data-root"
  out=$("$skiff" up --timeout 300 -f "$sleepers")
  echo "1000 sleep instances on the root fs: $(echo "$out" | grep "instances healthy in")"
  "$skiff" down sleepers >/dev/null
  stop_dev
fi
