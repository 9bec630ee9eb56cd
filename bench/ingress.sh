#!/usr/bin/env bash
# Issue 6 benchmarks, side by side in one run, loopback only, every load stops by itself:
#  (a) wrk through skiff's ingress vs through nginx as a reverse proxy (the baselines'
#      nginx-proxy.conf: 1 worker, upstream keep-alive) to the same backend: an nginx serving
#      a 12-byte file, run by skiff as an instance (target >= 1.15x nginx's rps, must >= 1.0x,
#      p99 no worse); interleaved rounds, median of round ratios;
#  (b) kill -9 of one of 3 skiff-demo instances under wrk load: failed requests (target 0);
#  (c) scale 3 -> 10 -> 3 under wrk load, half of it POSTs with a body: failed requests
#      (must be 0).
# Failed = socket errors (connect, read, write, timeout) + non-2xx/3xx answers, as wrk counts.
# Usage: bench/ingress.sh [ROUNDS=3] [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-10}
. bench/lib.sh
install_missing wrk:wrk nginx:nginx curl:curl haproxy:haproxy
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run

work=$(mktemp -d)
chmod 755 "$work"
proxy_pid= haproxy_pid=
cleanup() {
  [ -n "$proxy_pid" ] && kill -QUIT "$proxy_pid" 2>/dev/null
  [ -n "$haproxy_pid" ] && kill "$haproxy_pid" 2>/dev/null
  stop_dev
  rm -rf "$work"
}
trap cleanup EXIT

# The backend: nginx serving a 12-byte file on the port skiff gives it ($PORT).
mkdir -p "$work/www" "$work/logs"
printf 'hello world\n' > "$work/www/index.html"
cat > "$work/backend.conf.in" <<EOF2
worker_processes 1;
daemon off;
pid @DIR@/backend.pid;
error_log @DIR@/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:@PORT@ backlog=4096;
    root $work/www;
    location / { index index.html; }
  }
}
EOF2
cat > "$work/compose.yaml" <<EOF2
name: bench
x-skiff: {driver: process}
services:
  be:
    command: [sh, -c, 'd=\$\$(mktemp -d); sed "s|@PORT@|\$\$PORT|; s|@DIR@|\$\$d|g" $work/backend.conf.in > \$\$d/nginx.conf; exec $nginx -c \$\$d/nginx.conf']
    ports: [{name: http, target: 8080}]
  demo:
    command: [skiff-demo, --name, demo]
    ports: [{name: http, target: 8080}]
    deploy:
      replicas: 3
      restart_policy: {condition: any, delay: 100ms}
    stop_grace_period: 5s
    x-skiff:
      readiness: {http: {path: /health}, interval: 1s, retries: 2}
EOF2
start_dev "$work/data"
ingress=$(sed -n 's|^skiff dev: ingress listening on http://||p' "$work/dev.out")
"$skiff" up -f "$work/compose.yaml" > /dev/null
be_port=$("$skiff" ps -o json | python3 -c 'import json,sys; print(next(i["ports"]["http"] for i in json.load(sys.stdin) if i["id"]["service"]=="be"))')

# The comparator: the baselines' nginx reverse proxy, pointed at the same backend.
proxy_port=18780
sed -e "s|/tmp/baselines/logs|$work/logs|g" -e "s|127.0.0.1:8081|127.0.0.1:$be_port|" \
    -e "s|127.0.0.1:8080|127.0.0.1:$proxy_port|" "${SKIFF_BASELINES:-../shared/baselines}/nginx-proxy.conf" \
    > "$work/proxy.conf"
"$nginx" -c "$work/proxy.conf"
for _ in $(seq 50); do [ -s "$work/logs/proxy.pid" ] && break; sleep 0.1; done
proxy_pid=$(cat "$work/logs/proxy.pid")

# A second reference: the baselines' HAProxy (1 thread, http-reuse always), same backend.
haproxy_port=18782
sed -e "s|/tmp/baselines/logs|$work/logs|g" -e "s|127.0.0.1:8081|127.0.0.1:$be_port|" \
    -e "s|127.0.0.1:8082|127.0.0.1:$haproxy_port|" "${SKIFF_BASELINES:-../shared/baselines}/haproxy.cfg" \
    > "$work/haproxy.cfg"
haproxy -D -f "$work/haproxy.cfg"
for _ in $(seq 50); do [ -s "$work/logs/haproxy.pid" ] && break; sleep 0.1; done
haproxy_pid=$(cat "$work/logs/haproxy.pid")

host=be.bench.default.localhost
for url in "http://127.0.0.1:$proxy_port/" "http://127.0.0.1:$haproxy_port/" "http://$ingress/"; do
  got=$(curl -s -H "Host: $host" "$url")
  [ "$got" = "hello world" ] || { echo "$url answered '$got'" >&2; exit 1; }
done

# wrk summary: rps, p99 (ms), failed requests.
run_wrk() { # url seconds [connections [lua script [script argument]]]
  wrk -t2 -c"${3:-64}" -d"$2"s --latency ${4:+-s "$4"} -H "Host: $host" "$1" ${5:+-- "$5"} 2>&1 | awk '
    /Requests\/sec/ {rps=$2}
    /^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; p99=v}
    /Socket errors/ {gsub(/,/,""); err=$4+$6+$8+$10}
    /Non-2xx/ {bad=$5}
    END {printf "%d %.2f %d\n", rps, p99, err+bad}'
}

# CPU time (clock ticks) of a process, or of its threads named $2.
cpu_ticks() {
  local f total=0
  for f in /proc/"$1"/task/*; do
    [ -z "${2:-}" ] || [ "$(cat "$f/comm")" = "$2" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "$f/stat")))
  done
  echo "$total"
}
# Microseconds of CPU per request: ticks, rps, seconds.
per_req() { awk -v t="$1" -v r="$2" -v s="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", t*1e6/hz/(r*s)}'; }
nginx_worker=$(pgrep -P "$proxy_pid" | head -1)

echo "== (a) wrk -t2 -c64 -d${SECS}s: nginx proxy, HAProxy (reference) and skiff ingress -> same nginx backend"
echo "   (cpu = the proxy's CPU time per request: nginx's worker, HAProxy, skiff's ingress thread)"
printf '%-6s %10s %9s %8s %10s %8s %10s %9s %8s %8s %8s\n' round nginx_rps nginx_p99 cpu \
  hapx_rps cpu skiff_rps skiff_p99 cpu ratio cpu_ratio
# One wrk run through proxy $1 (nginx, haproxy or skiff): sets rps[$1], p99[$1], err[$1], cpu[$1].
declare -A rps p99 err cpu
measure() {
  local url pid thread t0
  case $1 in
    nginx) url=http://127.0.0.1:$proxy_port/ pid=$nginx_worker thread= ;;
    haproxy) url=http://127.0.0.1:$haproxy_port/ pid=$haproxy_pid thread= ;;
    skiff) url=http://$ingress/ pid=$dev_pid thread=skiff-ingress-0 ;;
  esac
  t0=$(cpu_ticks "$pid" $thread)
  read -r "rps[$1]" "p99[$1]" "err[$1]" < <(run_wrk "$url" "$SECS")
  cpu[$1]=$(per_req $(($(cpu_ticks "$pid" $thread) - t0)) "${rps[$1]}" "$SECS")
}
ratios=() cpu_ratios=() h_ratios=() n_p99s=() s_p99s=() p99_ratios=()
order=(nginx haproxy skiff)
for r in $(seq "$ROUNDS"); do
  # The order rotates each round, so no proxy always runs first (or last) on a warm box.
  for i in 0 1 2; do measure "${order[(i + r) % 3]}"; done
  ratio=$(awk -v a="${rps[skiff]}" -v b="${rps[nginx]}" 'BEGIN{printf "%.2f", a/b}')
  cpu_ratio=$(awk -v a="${cpu[skiff]}" -v b="${cpu[nginx]}" 'BEGIN{printf "%.2f", a/b}')
  ratios+=("$ratio") cpu_ratios+=("$cpu_ratio") n_p99s+=("${p99[nginx]}") s_p99s+=("${p99[skiff]}")
  p99_ratios+=("$(awk -v a="${p99[skiff]}" -v b="${p99[nginx]}" 'BEGIN{printf "%.2f", a/b}')")
  h_ratios+=("$(awk -v a="${rps[haproxy]}" -v b="${rps[nginx]}" 'BEGIN{printf "%.2f", a/b}')")
  printf '%-6s %10s %7sms %6sus %10s %6sus %10s %7sms %6sus %8s %8s\n' "$r" "${rps[nginx]}" \
    "${p99[nginx]}" "${cpu[nginx]}" "${rps[haproxy]}" "${cpu[haproxy]}" "${rps[skiff]}" \
    "${p99[skiff]}" "${cpu[skiff]}" "$ratio" "$cpu_ratio"
  [ "${err[nginx]}${err[haproxy]}${err[skiff]}" = 000 ] ||
    echo "  (failed requests: nginx ${err[nginx]}, haproxy ${err[haproxy]}, skiff ${err[skiff]})"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo "median of round ratios (skiff/nginx rps): $(median "${ratios[@]}") (target >= 1.15, must >= 1.0)"
echo "median p99: nginx $(median "${n_p99s[@]}")ms, skiff $(median "${s_p99s[@]}")ms;" \
  "median of round p99 ratios (skiff/nginx): $(median "${p99_ratios[@]}") (must be <= 1.0)"
echo "median of CPU per request ratios (skiff/nginx, lower is better): $(median "${cpu_ratios[@]}")"
echo "reference: median of HAProxy/nginx rps ratios: $(median "${h_ratios[@]}")"

host=demo.bench.default.localhost
echo "== (b) kill -9 one of 3 instances under wrk load (${SECS}s)"
pid=$("$skiff" ps -o json | python3 -c 'import json,sys; print(next(i["pid"] for i in json.load(sys.stdin) if i["id"]["service"]=="demo" and i["id"]["index"]==2))')
run_wrk "http://$ingress/" "$SECS" 16 > "$work/b.out" &
wrk_pid=$!
sleep $((SECS / 3)); kill -9 "$pid"
wait $wrk_pid
read -r rps p99 failed < "$work/b.out"
echo "rps $rps, p99 ${p99}ms, failed requests: $failed (target 0)"

echo "== (c) scale 3 -> 10 -> 3 under wrk load, GET / and POST /echo (64 bytes) alternating ($((SECS * 2))s)"
# bench/mixed.lua with every 2nd request a POST: it may not be retried once sent, so only
# withdrawing, draining, then signalling an instance keeps it from failing.
run_wrk "http://$ingress/" "$((SECS * 2))" 16 "$(realpath bench/mixed.lua)" 2 > "$work/c.out" &
wrk_pid=$!
sleep 1
"$skiff" scale demo=10 > /dev/null
sleep $((SECS / 2))
"$skiff" scale demo=3 > /dev/null
wait $wrk_pid
read -r rps p99 failed < "$work/c.out"
echo "rps $rps, p99 ${p99}ms, failed requests: $failed (must be 0)"
