#!/usr/bin/env bash
# Issue 5 benchmark (c): DNS queries per second for one name, skiff's DNS against NSD serving
# the same record, side by side, interleaved rounds (the machine is noisy: compare ratios).
# Both single-threaded: NSD `server-count: 1` with rate limiting off (as in
# shared/baselines/nsd.conf); skiff's UDP path is one thread. dnsperf as in the baselines:
# `-c 4 -T 1 -q 200`, loopback only, stops by itself after -l seconds.
# Usage: bench/dns.sh [ROUNDS=3] [SECONDS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-8}
. bench/lib.sh
install_missing dnsperf:dnsperf nsd:nsd
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run

work=$(mktemp -d)
nsd_pid=
cleanup() {
  stop_dev
  [ -n "$nsd_pid" ] && kill -TERM "$nsd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

name=web.bench.default.skiff
# NSD with the record skiff will serve: web.bench.default.skiff A 127.0.0.1, TTL 0.
nsd_port=15356
mkdir -p "$work/nsd"
cat > "$work/nsd/skiff.zone" <<EOF
\$ORIGIN skiff.
\$TTL 0
@ IN SOA ns.skiff. hostmaster.skiff. 1 60 60 3600 0
@ IN NS ns.skiff.
ns IN A 127.0.0.1
$name. IN A 127.0.0.1
EOF
cat > "$work/nsd/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$nsd_port
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "$work/nsd"
  pidfile: "$work/nsd/nsd.pid"
  database: ""
  zonelistfile: "$work/nsd/zone.list"
  xfrdfile: "$work/nsd/xfrd.state"
  xfrdir: "$work/nsd"
  verbosity: 0
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  logfile: "$work/nsd/nsd.log"
remote-control:
  control-enable: no
zone:
  name: skiff
  zonefile: skiff.zone
EOF
/usr/sbin/nsd -c "$work/nsd/nsd.conf"
for _ in $(seq 50); do [ -s "$work/nsd/nsd.pid" ] && break; sleep 0.1; done
nsd_pid=$(cat "$work/nsd/nsd.pid")

# skiff dev with one ready instance of `web` in stack `bench`.
printf 'name: bench\nservices:\n  web:\n    command: [sleep, "3600"]\n    x-skiff: {driver: process}\n' > "$work/compose.yaml"
start_dev "$work/data"
"$skiff" up -f "$work/compose.yaml" > /dev/null
skiff_port=${dev_dns##*:}

for port in "$nsd_port" "$skiff_port"; do
  got=$(dig @127.0.0.1 -p "$port" +short "$name")
  [ "$got" = 127.0.0.1 ] || { echo "server on port $port answered '$got'" >&2; exit 1; }
done
echo "$name A" > "$work/q.txt"

qps() {
  dnsperf -s 127.0.0.1 -p "$1" -d "$work/q.txt" -l "$SECS" -c 4 -T 1 -q 200 2>&1 \
    | awk '/Queries per second/ {print int($4)} /Queries lost/ {lost=$3} END {}'
}

printf '%-6s %12s %12s %8s\n' round nsd_qps skiff_qps ratio
ratios=(); nsds=(); skiffs=()
for r in $(seq "$ROUNDS"); do
  n=$(qps "$nsd_port"); s=$(qps "$skiff_port")
  ratio=$(awk -v a="$s" -v b="$n" 'BEGIN{printf "%.2f", a/b}')
  nsds+=("$n"); skiffs+=("$s"); ratios+=("$ratio")
  printf '%-6s %12s %12s %8s\n' "$r" "$n" "$s" "$ratio"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo "median: NSD $(median "${nsds[@]}") qps, skiff $(median "${skiffs[@]}") qps; median of round ratios $(median "${ratios[@]}") (skiff/NSD; target >= 0.9, must >= 0.75)"
