#!/usr/bin/env bash
# Every benchmark in a short mode, then one table: figure, value, target, must, pass.
# Each figure comes from a side-by-side script in bench/ (skiff and its baseline in the same
# run; ratios, since the machine is noisy). Every closing note carries this table.
# Usage: bench/all.sh            (about 8 minutes on 2 cores)
#        BENCH_ONLY="up dns" bench/all.sh   (a subset: up env dns gone ingress docker scheduler cluster releases seed)
# The full logs are kept in $BENCH_LOGS (default: a temp dir, printed at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
only=${BENCH_ONLY:-up env dns gone ingress docker scheduler cluster releases seed}
logs=${BENCH_LOGS:-$(mktemp -d /tmp/skiff-bench.XXXXXX)}
mkdir -p "$logs"
cargo build -q --release -p skiff -p skiff-demo --examples || exit 1

run() { # name command...
  local name=$1; shift
  echo "== $name: $*" >&2
  "$@" > "$logs/$name.log" 2>&1 || echo "   ($name exited with $?; see $logs/$name.log)" >&2
  tail -n 4 "$logs/$name.log" | sed 's/^/   /' >&2
}
want() { [[ " $only " == *" $1 "* ]]; }

want up && run up bench/up100.sh 100 3
want env && run env bench/env.sh 3
want dns && run dns bench/dns.sh 3 5
want gone && run gone bench/dns_gone.sh 20 4
want ingress && run ingress bench/ingress.sh 3 5
want docker && run docker bench/docker100.sh 50 2
want scheduler && run scheduler bench/scheduler.sh
want cluster && run cluster bench/cluster.sh
want releases && run releases bench/releases.sh 30000
want seed && run seed bench/seed.sh 200000

# pick LOG SED-EXPRESSION: the first match in the log, or "-".
pick() { local v; v=$(sed -n "$2" "$logs/$1.log" 2>/dev/null | head -n 1); echo "${v:--}"; }
rows=()
# row FIGURE VALUE UNIT TARGET MUST CMP: CMP "le" (lower is better) or "ge"; MUST decides pass.
row() {
  local pass=FAIL
  if [ "$2" = - ]; then pass="not run"
  elif awk -v v="$2" -v m="$5" -v c="$6" 'BEGIN{exit !((c=="le" && v+0<=m+0) || (c=="ge" && v+0>=m+0))}'; then pass=pass
  fi
  local op='<='; [ "$6" = ge ] && op='>='
  rows+=("$(printf '| %s | %s %s | %s %s | %s %s | %s |' "$1" "$2" "$3" "$op" "$4" "$op" "$5" "$pass")")
}

# info FIGURE VALUE UNIT: a figure shown for information, with no target.
info() { rows+=("$(printf '| %s | %s %s | | | info |' "$1" "$2" "$3")"); }

if want up; then
  row "skiff up -> 100 busybox httpd healthy (median of 3)" "$(pick up 's/^median: skiff up -> [0-9]* healthy \([0-9]*\) ms.*/\1/p')" ms 500 1000 le
  row "  ratio to the spawn floor (spawn100.py, same run)" "$(pick up 's/^median: .*; ratio \([0-9.]*\)$/\1/p')" x 4.4 5 le
  row "skiff dev RSS idle" "$(pick up 's/^skiff dev RSS: idle \([0-9]*\) kB.*/\1/p' | awk '{ if ($1 == "-") print "-"; else printf "%.1f", $1/1024 }')" MB 8 20 le
  row "skiff dev RSS with 100 instances" "$(pick up 's/^skiff dev RSS: .*instances \([0-9]*\) kB/\1/p' | awk '{ if ($1 == "-") print "-"; else printf "%.1f", $1/1024 }')" MB 13 30 le
  row "skiff up -> 1,000 sleep instances healthy" "$(pick up 's/^1000 sleep instances: .*healthy in \([0-9.]*\)s/\1/p')" s 4 5 le
  info "  the same on the root fs (ext4 without a journal; after the rounds)" "$(pick up 's/^1000 sleep instances on the root fs: .*healthy in \([0-9.]*\)s/\1/p')" s
  row "skiff dev RSS with 1,000 instances" "$(pick up 's/^skiff dev RSS with 1000 instances: \([0-9]*\) kB/\1/p' | awk '{ if ($1 == "-") print "-"; else printf "%.1f", $1/1024 }')" MB 44 100 le
fi
if want env; then
  row "skiff up -n env1 -> 40 services (depth 5, health checks) healthy (median of 3)" "$(pick env 's/^median: skiff up -n env1 -> 40 healthy \([0-9]*\) ms.*/\1/p' | awk '{ if ($1 == "-") print "-"; else printf "%.2f", $1/1000 }')" s 10 20 le
  info "  floor: the longest chain of start delays in that graph" "$(pick env 's/^floor: longest chain of start delays \([0-9]*\) ms.*/\1/p')" ms
  row "  five environments at once: the slowest, in times one alone" "$(pick env 's/^five at once: slowest [0-9]* ms, \([0-9.]*\)x alone$/\1/p')" x 2 2 le
  info "  five environments at once: the slowest" "$(pick env 's/^five at once: slowest \([0-9]*\) ms.*/\1/p')" ms
fi
if want dns; then
  row "DNS qps skiff/NSD (median of round ratios)" "$(pick dns 's/.*median of round ratios \([0-9.]*\) .*/\1/p')" x 1.0 0.9 ge
fi
if want gone; then
  row "kill -9 -> gone from DNS, p99" "$(pick gone 's/^kill -9 -> gone.*p99 \([0-9.]*\) ms.*/\1/p')" ms 50 250 le
  row "hung -> gone from DNS, max" "$(pick gone 's/^SIGSTOP (hung) -> gone.*max \([0-9.]*\) ms.*/\1/p')" ms 2000 2500 le
fi
if want ingress; then
  row "ingress rps skiff/nginx (median of round ratios)" "$(pick ingress 's/^median of round ratios (skiff\/nginx rps): \([0-9.]*\).*/\1/p')" x 1.15 1.0 ge
  row "ingress: failed requests, kill -9 of 1 of 3 under wrk" "$(pick ingress '/== (b)/,/== (c)/s/.*failed requests: \([0-9]*\).*/\1/p')" "" 0 0 le
  row "ingress: failed requests, scale 3->10->3 under wrk" "$(pick ingress '/== (c)/,$s/.*failed requests: \([0-9]*\).*/\1/p')" "" 0 0 le
fi
if want scheduler; then
  row "scheduler: placements/s, one core, 5,000 nodes (100,000 singly)" "$(pick scheduler 's/^(b) .* placed, \([0-9]*\) placements\/s.*/\1/p')" /s 50000 10000 ge
  info "  p99 per placement" "$(pick scheduler 's/^(b) .*p99 \([0-9.]*\) us/\1/p')" us
  info "  in groups of 50 replicas" "$(pick scheduler 's/^(a) .*: \([0-9]*\) placements\/s/\1/p')" /s
fi
if want docker; then
  row "skiff up / docker run -d (P=4), 50 containers ready" "$(pick docker 's/.*median of round ratios \([0-9.]*\) .*/\1/p')" x 1.0 1.3 le
fi
if want cluster; then
  row "2,000 sleep instances over 20 agents -> healthy" "$(pick cluster 's/^2000 instances over 20 agents: up -> healthy in \([0-9.]*\) s$/\1/p')" s 5 15 le
  info "  spread: min/max instances per node" "$(pick cluster 's/^spread: min \([0-9]*\) \/ max \([0-9]*\) .*/\1\/\2/p')" ""
  info "  skiff down of the 2,000" "$(pick cluster 's/^skiff down of 2000 instances over 20 agents: \([0-9.]*\) s.*/\1/p')" s
  row "node loss: out of DNS after the down timeout (2 s)" "$(pick cluster 's/^node loss: out of DNS after .*X - Y = \(-*[0-9]*\) ms)$/\1/p')" ms 100 100 le
  row "node loss: running elsewhere after the down timeout (2 s)" "$(pick cluster 's/^node loss: running elsewhere after .*X - Y = \(-*[0-9]*\) ms)$/\1/p')" ms 2000 2000 le
fi
if want releases; then
  row "releases: failed requests, rolling update of 10 under mixed wrk (64 conns, POST every 5th)" "$(pick releases 's/^releases: rolling update.*failed \([0-9]*\),.*/\1/p')" "" 0 0 le
  info "  requests in that run (short mode; bench/releases.sh: >= 100,000)" "$(pick releases 's/^releases: rolling update.*: requests \([0-9]*\),.*/\1/p')" ""
  info "  p99 during the rolling update" "$(pick releases 's/^releases: rolling update.*p99 \([0-9.]*\) ms.*/\1/p')" ms
  row "releases: failed requests, skiff rollback of 10 under the same load" "$(pick releases 's/^releases: rollback:.*failed \([0-9]*\),.*/\1/p')" "" 0 0 le
  info "  reference: nginx -s reload every 1 s under the same load, failed" "$(pick releases 's/^releases: nginx.*failed \([0-9]*\),.*/\1/p')" ""
  row "releases: failed requests, canary 10% -> 50% -> 100% under the same load" "$(pick releases 's/^releases: canary 10.*failed \([0-9]*\),.*/\1/p')" "" 0 0 le
  row "releases: failed requests, canary at 20% aborted under the same load" "$(pick releases 's/^releases: canary at 20.*failed \([0-9]*\),.*/\1/p')" "" 0 0 le
  row "releases: failed requests, blue-green switch under the same load" "$(pick releases 's/^releases: blue-green switch:.*failed \([0-9]*\),.*/\1/p')" "" 0 0 le
  row "releases: failed requests, blue-green switch back (rollback) under the same load" "$(pick releases 's/^releases: blue-green switch back.*failed \([0-9]*\),.*/\1/p')" "" 0 0 le
fi
if want seed; then
  row "MariaDB ready from a seed snapshot vs a fresh server importing a mysqldump (short mode: 200,000 rows; bench/seed.sh: 1,000,000)" "$(pick seed 's/^seed: .*ratio \([0-9.]*\)$/\1/p')" x 10 10 ge
  info "  ready from the seed" "$(pick seed 's/^seed: .*seeded ready \([0-9]*\) ms.*/\1/p')" ms
  info "  fresh server + dump import" "$(pick seed 's/^seed: .*dump import \([0-9]*\) ms.*/\1/p')" ms
  info "  env clone --with-data of it (copy-data, frozen): time, ext4 plain copy" "$(pick seed 's/^copy (ext4): .*ms \([0-9]*\)$/\1/p')" ms
  info "  bytes written by that copy" "$(pick seed 's/^copy (ext4): .*written \([0-9]*\),.*/\1/p')" B
  info "  the same copy on XFS with reflinks: time" "$(pick seed 's/^copy (xfs): .*ms \([0-9]*\)$/\1/p')" ms
  info "  bytes written by the reflink copy" "$(pick seed 's/^copy (xfs): .*written \([0-9]*\),.*/\1/p')" B
fi

echo
echo "| figure | value | target | must | pass |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "logs: $logs  (commands: bench/up100.sh 100 3, bench/env.sh 3, bench/dns.sh 3 5, bench/dns_gone.sh 20 4, bench/ingress.sh 3 5, bench/docker100.sh 50 2, bench/scheduler.sh, bench/cluster.sh, bench/releases.sh 30000, bench/seed.sh 200000)"
printf '%s\n' "${rows[@]}" | grep -q '| FAIL |' && exit 1
exit 0
