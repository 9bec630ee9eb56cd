#!/usr/bin/env bash
# Issue 20's proof: releases of 10 replicas under wrk load through `skiff dev`'s ingress, and
# `nginx -s reload` under the same load as the reference, in one run, loopback only.
#  Load: bench/mixed.lua (shared with the tests): wrk -t2 -c64, keep-alive, every 5th request
#  a POST /echo with a 64-byte body; every socket error and every status >= 400 is a failed
#  request. Each scenario's load runs long enough for >= REQUESTS requests (sized from a probe
#  of this machine's rate with a factor of 2; the count is printed).
#  Scenarios, each one function: a compose change and a command, run under the load
#  (`under_load NAME COMMAND...` starts the load, runs the command, times it and reports):
#    reference  nginx as a reverse proxy (the baselines' nginx-proxy-roll.conf) over the same
#               10 instances, its upstream switched between two halves with `nginx -s reload`
#               every second (the baselines' R1);
#    rolling    v1 -> v2, start-first, parallelism 20% (2 at a time), `skiff up`;
#    rollback   `skiff rollback` to v1's spec (rollback_config: start-first, 20%);
#    canary     v3 as a canary, 10 % then 50 % (2 s each), then 100 %: `skiff up` to the end;
#    canary_abort  v4 as a canary held at 20 % (`up` returns at the promote gate), then
#               `skiff rollout abort`: every request back to v3, its instances stop, rollback;
#    bluegreen  v5 as a blue-green release: a whole new set, switched when ready (`skiff up`);
#    bluegreen_back  `skiff rollback` while the previous set is warm: switched straight back.
#  Each scenario is one function; add scenario_NAME and list it in SCENARIOS.
# Prints a table and, per scenario, "releases: NAME: requests N, failed F, p99 P ms, change C s"
# (bench/all.sh reads those).
# Usage: bench/releases.sh [REQUESTS=100000]   (SCENARIOS="reference rolling rollback")
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-100000}
SCENARIOS=${SCENARIOS:-reference rolling rollback canary canary_abort bluegreen bluegreen_back}
. bench/lib.sh
install_missing wrk:wrk nginx:nginx curl:curl
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run
script=$(realpath bench/mixed.lua)
baselines=${SKIFF_BASELINES:-../shared/baselines}

work=$(mktemp -d)
chmod 755 "$work"
mkdir -p "$work/logs"
proxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill -QUIT "$proxy_pid" 2>/dev/null
  stop_dev
  rm -rf "$work"
}
trap cleanup EXIT

# compose VERSION [RELEASE]: the stack, 10 replicas of skiff-demo answering with VERSION,
# released by x-skiff.release RELEASE (default rolling).
compose() {
  local release=${2:-'{strategy: rolling}'}
  cat > "$work/compose.yaml" <<EOF
name: bench
x-skiff: {driver: process}
services:
  web:
    command: [skiff-demo, --name, web]
    ports: [{name: http, target: 8080}]
    environment: {DEMO_VERSION: '$1'}
    deploy:
      replicas: 10
      update_config: {parallelism: 20%, order: start-first, monitor: 1s}
      rollback_config: {parallelism: 20%, order: start-first}
    stop_grace_period: 10s
    x-skiff:
      readiness: {http: {path: /health}, interval: 500ms, retries: 3}
      release: $release
EOF
}

host=web.bench.default.localhost
# field NAME < wrk output: a figure of mixed.lua's machine-readable line.
field() { sed -n "s/^mixed: .*\b$1=\([0-9.]*\).*/\1/p"; }
# wrk_mixed URL SECONDS: the mixed load, its output in $work/wrk.out.
wrk_mixed() {
  wrk -t2 -c64 -d"$2"s --latency -s "$script" -H "Host: $host" "$1" > "$work/wrk.out" 2>&1
}

# under_load NAME URL COMMAND...: COMMAND (the change) under the load through URL.
under_load() {
  local name=$1 url=$2 t0 took
  shift 2
  wrk_mixed "$url" "$secs" &
  local w=$!
  sleep 1
  t0=$(date +%s.%N)
  "$@" > "$work/change.out" 2>&1 || { echo "$name: the change failed:"; cat "$work/change.out"; }
  took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  wait $w || true
  report "$name" "$took"
  awk -v t="$took" -v s="$secs" 'BEGIN{exit !(t + 1 >= s)}' &&
    echo "    (the change, ${took}s, outlasted the load, ${secs}s: rerun with more requests)"
  return 0
}

rows=()
# report NAME CHANGE: one table row and the line bench/all.sh reads.
report() {
  local req failed p99
  req=$(field requests < "$work/wrk.out")
  failed=$(field failed < "$work/wrk.out")
  p99=$(field p99_ms < "$work/wrk.out")
  if [ -z "$req" ]; then
    echo "$1: wrk did not finish:"
    cat "$work/wrk.out"
    req=0 failed=- p99=-
  fi
  rows+=("$(printf '%-34s %10s %8s %9s %9s' "$1" "$req" "$failed" "$p99" "$2")")
  echo "releases: $1: requests $req, failed $failed, p99 $p99 ms, change $2 s"
  grep -E '^(status |first failure)' "$work/wrk.out" | sed 's/^/    /' || true
  [ "$req" -ge "$REQUESTS" ] || echo "    (fewer than $REQUESTS requests in ${secs}s)"
}

# ---- scenarios: a compose change + a command, under the load ----

# nginx -s reload every second, upstream switched between the instances' two halves.
scenario_reference() {
  local ports proxy_port=18790
  ports=$("$skiff" ps -o json | python3 -c 'import json,sys; print(" ".join(str(i["ports"]["http"]) for i in json.load(sys.stdin) if i["id"]["service"]=="web"))')
  set -- $ports
  printf 'server 127.0.0.1:%s;\n' "${@:1:5}" > "$work/upstream_a.conf"
  printf 'server 127.0.0.1:%s;\n' "${@:6}" > "$work/upstream_b.conf"
  cp "$work/upstream_a.conf" "$work/upstream.conf"
  sed -e "s|/tmp/baselines/logs|$work/logs|g" -e "s|/tmp/baselines/upstream.conf|$work/upstream.conf|" \
      -e "s|127.0.0.1:8090|127.0.0.1:$proxy_port|" -e "s|127.0.0.1:8091|127.0.0.1:$((proxy_port + 1))|" \
      "$baselines/nginx-proxy-roll.conf" > "$work/proxy.conf"
  "$nginx" -c "$work/proxy.conf"
  for _ in $(seq 50); do [ -s "$work/logs/proxyroll.pid" ] && break; sleep 0.1; done
  proxy_pid=$(cat "$work/logs/proxyroll.pid")
  reloads() {
    local i=0
    while [ "$i" -lt $((secs - 3)) ]; do
      i=$((i + 1))
      if [ $((i % 2)) = 1 ]; then cp "$work/upstream_b.conf" "$work/upstream.conf"
      else cp "$work/upstream_a.conf" "$work/upstream.conf"; fi
      "$nginx" -c "$work/proxy.conf" -s reload
      sleep 1
    done
    echo "$i reloads"
  }
  under_load "nginx -s reload every 1 s (reference)" "http://127.0.0.1:$proxy_port/" reloads
  kill -QUIT "$proxy_pid" 2>/dev/null || true
  proxy_pid=
}

scenario_rolling() {
  compose v2
  under_load "rolling update (start-first)" "http://$ingress/" \
    "$skiff" up -f "$work/compose.yaml" --timeout 300
}

scenario_rollback() {
  under_load "rollback" "http://$ingress/" "$skiff" rollback bench --timeout 300
}

scenario_canary() {
  compose v3 '{strategy: canary, steps: [{weight: 10, pause: 2s}, {weight: 50, pause: 2s}]}'
  under_load "canary 10% -> 50% -> 100%" "http://$ingress/" \
    "$skiff" up -f "$work/compose.yaml" --timeout 300
}

# up returns at the promote gate (20 % on v4); abort sends it all back and rolls back.
canary_then_abort() {
  "$skiff" up -f "$work/compose.yaml" --timeout 300
  "$skiff" rollout abort bench web
  for _ in $(seq 600); do
    "$skiff" rollout status bench web | grep -q 'rollback' && break
    sleep 0.1
  done
  "$skiff" rollout status bench web
}

scenario_canary_abort() {
  compose v4 '{strategy: canary, steps: [{weight: 20}]}'
  under_load "canary at 20%, aborted" "http://$ingress/" canary_then_abort
}

scenario_bluegreen() {
  compose v5 '{strategy: blue-green, keep_previous: 10m}'
  under_load "blue-green switch" "http://$ingress/" \
    "$skiff" up -f "$work/compose.yaml" --timeout 300
}

scenario_bluegreen_back() {
  under_load "blue-green switch back (rollback)" "http://$ingress/" \
    "$skiff" rollback bench --timeout 300
}

# ---- the run ----
start_dev "$work/data"
ingress=$(sed -n 's|^skiff dev: ingress listening on http://||p' "$work/dev.out")
compose v1
"$skiff" up -f "$work/compose.yaml" --timeout 120 > /dev/null
got=$(curl -s -H "Host: $host" "http://$ingress/")
case $got in *v1*) ;; *) echo "the ingress answered '$got'" >&2; exit 1 ;; esac

# The probe: this machine's rate under the mixed load, to size each scenario's duration.
wrk_mixed "http://$ingress/" 3
rate=$(awk -v r="$(field requests < "$work/wrk.out")" -v d="$(field duration_s < "$work/wrk.out")" 'BEGIN{printf "%d", r/d}')
secs=$(awk -v n="$REQUESTS" -v r="$rate" 'BEGIN{s=int(n*2/r)+1; if (s < 12) s = 12; print s}')
echo "probe: $rate requests/s under the mixed load; each scenario runs ${secs}s for >= $REQUESTS requests"

for s in $SCENARIOS; do
  "scenario_$s"
done

echo
printf '%-34s %10s %8s %9s %9s\n' scenario requests failed p99_ms change_s
printf '%s\n' "${rows[@]}"
