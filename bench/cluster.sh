#!/usr/bin/env bash
# Issue 19 benchmarks: one `skiff server` and AGENTS `skiff agent`s, each agent a process of
# its own with its own data dir and its own loopback address (127.0.1.1, 127.0.1.2, …; the
# whole 127.0.0.0/8 is loopback on Linux, so one address = one node in DNS answers):
#  (a) end to end: wall time of `skiff up` of N `sleep` instances (process driver) spread over
#      the agents, from the command to every instance running and healthy (target 5 s, must
#      15 s for 2,000 over 20), all agents registered and ready before; then how the
#      scheduler spread them (min/max allocations per node) and, for information, how long
#      `skiff down` of them all takes. The server keeps its default down timeout (5s).
#  (b) node loss, on a fresh cluster whose server has --node-down-after DOWN (2s, so the run
#      stays short): a stack of LOSS instances (LOSS/AGENTS per agent, 50 by default); the
#      agent holding the most is killed -9 right after one of its heartbeats reached the
#      server (so the down timeout runs in full from the kill: the worst case), and we time
#      (1) until its address is gone from the service's DNS answer (a UDP query every
#      20 ms), target: within the down timeout + 100 ms, and (2) until every instance is
#      healthy again, none on the dead node (the API's instances every 100 ms), target:
#      within the down timeout + 2 s. Both are printed with the timeout and minus it.
# The killed agent's workloads keep running (orphans, as on a machine cut off): the cleanup
# kills every shim and workload of the run (shims by their command line, workloads by their
# working directory, both in this run's data dirs), also after a failure.
# The data dirs live on a fresh ext4 in a loop file, as in bench/up100.sh (this machine's root
# fs makes each file creation slower after many deletes); SCRATCH_FS=root keeps them on the
# root fs. The logs of the servers and agents are kept (the path is printed) when the run
# fails; KEEP_LOGS=1 keeps them always.
# Usage: bench/cluster.sh [N=2000] [AGENTS=20] [LOSS=1000] [DOWN=2s]  (DOWN above the agents'
#        heartbeat interval, 1 s, or live nodes flap)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
AGENTS=${2:-20}
LOSS=${3:-1000}
DOWN=${4:-2s}
[ "$AGENTS" -ge 2 ] && [ "$AGENTS" -le 250 ] || { echo "AGENTS: 2..250" >&2; exit 2; }
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}  # SKIFF_BIN: another build, e.g. for an A/B run
case $DOWN in
  *ms) down_ms=${DOWN%ms} ;;
  *s) down_ms=$((${DOWN%s} * 1000)) ;;
  *) echo "DOWN: like 2s or 1500ms" >&2; exit 2 ;;
esac

work=$(mktemp -d /tmp/skiff-cluster.XXXXXX)
. bench/lib.sh
install_missing dig:dnsutils python3:python3
data=$work
cluster=      # the name of the running cluster (its data under $data/$cluster)
server_pid=
agent_pids=()
ok=0

now_ms() { date +%s%3N; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

# The pids of this run's shims (`skiff __shim <instance dir>`) and workloads (working dir in
# their instance dir), whichever agent started them, alive or orphaned.
workload_pids() {
  { pgrep -f "__shim $data/" || true
    find /proc/[0-9]*/cwd -maxdepth 0 -lname "$data/*" 2>/dev/null | cut -d/ -f3
  } | grep -vx "$$" | sort -u || true
}
kill_workloads() {
  local pids
  for _ in $(seq 50); do
    pids=$(workload_pids)
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  echo "cluster.sh: processes left in $data: $(workload_pids | tr '\n' ' ')" >&2
}

# stop_cluster: the agents (SIGTERM: they leave their workloads running and restart none),
# then the workloads, then the server; then the nodes' cgroups (empty by then).
stop_cluster() {
  [ -n "$cluster" ] || return 0
  local p id
  for p in "${agent_pids[@]}"; do
    if [ -n "$p" ]; then kill -TERM "$p" 2>/dev/null || true; fi
  done
  for p in "${agent_pids[@]}"; do
    if [ -n "$p" ]; then timeout 10 tail --pid="$p" -f /dev/null || kill -9 "$p" 2>/dev/null || true; fi
  done
  agent_pids=()
  kill_workloads
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    timeout 10 tail --pid="$server_pid" -f /dev/null || kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
  for id in $(cat "$data/$cluster"/agent-*/node-id 2>/dev/null); do
    find /sys/fs/cgroup -depth -type d -path "*/skiff/node-$id*" -exec rmdir {} + 2>/dev/null || true
  done
  cluster=
}

cleanup() {
  set +e
  trap - EXIT INT TERM
  stop_cluster
  kill_workloads
  if [ "$ok" != 1 ] || [ -n "${KEEP_LOGS:-}" ]; then
    local logs=/tmp/skiff-cluster-logs.$$
    mkdir -p "$logs"
    cp "$work"/*.out "$work"/*.err "$logs"/ 2>/dev/null
    echo "logs of the servers and the agents: $logs" >&2
  fi
  if [ "$data" != "$work" ]; then
    umount "$data" 2>/dev/null || { sleep 1; umount "$data"; } || umount -l "$data"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "${SCRATCH_FS:-loop}" = loop ]; then
  truncate -s 2G "$work/fs.img" && mkfs.ext4 -q -F "$work/fs.img" && mkdir "$work/fs" \
    && mount -o loop "$work/fs.img" "$work/fs" && data=$work/fs \
    || echo "no loop-mounted ext4 here; data dirs on the root fs" >&2
fi

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$(($(now_ms) + secs * 1000))
  until "$@"; do
    if [ "$(now_ms)" -ge "$end" ]; then
      "$skiff" node ls >&2 2>/dev/null
      die "timed out after ${secs} s waiting for $what"
    fi
    sleep 0.1
  done
}

# start_cluster NAME DOWN_AFTER: a server on free ports and AGENTS agents (node nK at
# 127.0.1.K), all ready; exports SKIFF_ADDR, sets dns_port.
start_cluster() {
  cluster=$1
  local dir=$data/$1 k t
  "$skiff" server --data-dir "$dir/server" --api 127.0.0.1:0 --dns 127.0.0.1:0 \
    --ingress 127.0.0.1:0 --node-down-after "$2" > "$work/$1-server.out" 2> "$work/$1-server.err" &
  server_pid=$!
  wait_for "skiff server to listen" 10 server_up
  SKIFF_ADDR=$(sed -n 's/^skiff server: api listening on //p' "$work/$1-server.out")
  dns_port=$(sed -n 's/^skiff server: dns listening on [^ ]*:\([0-9]*\) .*/\1/p' "$work/$1-server.out")
  export SKIFF_ADDR
  t=$(now_ms)
  for k in $(seq "$AGENTS"); do
    "$skiff" agent --join "$SKIFF_ADDR" --name "n$k" --address "127.0.1.$k" \
      --data-dir "$dir/agent-$k" > "$work/$1-agent-$k.out" 2> "$work/$1-agent-$k.err" &
    agent_pids[k]=$!
    disown "$!"  # no "Killed" notice for the one killed on purpose
  done
  wait_for "$AGENTS ready nodes" 30 all_ready
  echo "cluster $1: $AGENTS agents registered and ready in $(($(now_ms) - t)) ms (down timeout $2)"
}
server_up() {
  kill -0 "$server_pid" 2>/dev/null || die "skiff server exited: $(cat "$work/$cluster-server.err")"
  grep -q "api listening" "$work/$cluster-server.out" 2>/dev/null
}
ready_nodes() {
  "$skiff" node ls -o json 2>/dev/null \
    | python3 -c 'import json,sys; print(sum(n["status"]=="ready" for n in json.load(sys.stdin)))' \
    2>/dev/null || true
}
all_ready() {
  local k
  for k in "${!agent_pids[@]}"; do
    [ -z "${agent_pids[k]}" ] || kill -0 "${agent_pids[k]}" 2>/dev/null \
      || die "agent n$k exited: $(tail -n 5 "$work/$cluster-agent-$k.err")"
  done
  [ "$(ready_nodes)" = "$AGENTS" ]
}
# nodes_down: how many times this cluster's server has marked a node down so far.
nodes_down() { grep -c "node is down" "$work/$cluster-server.err" || true; }
# listen_drops: SYNs the kernel dropped at full listen queues (all sockets of the machine).
listen_drops() {
  awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "ListenDrops") c = i; h = 1 }
                    else print $c }' /proc/net/netstat
}
secs() { awk -v ms="$1" 'BEGIN{printf "%.2f", ms/1000}'; }

stack() { # name replicas program args...
  local name=$1 n=$2; shift 2
  printf 'name: %s\nx-skiff: {driver: process}\nservices:\n  s:\n    command: [%s]\n    deploy: {replicas: %s}\n' \
    "$name" "$(printf '"%s", ' "$@" | sed 's/, $//')" "$n" > "$work/$name.yaml"
  echo "$work/$name.yaml"
}

# counts STACK: "min max nodes victim_id victim_name victim_count": the stack's allocations
# per ready node, and the node with the most.
counts() {
  python3 - "$SKIFF_ADDR" "$1" <<'PY'
import json, sys, urllib.request
api, stack = sys.argv[1], sys.argv[2]
get = lambda p: json.load(urllib.request.urlopen(api + p, timeout=10))
nodes = {n["id"]: n["name"] for n in get("/v1/nodes") if n["status"] == "ready"}
count = {n: 0 for n in nodes}
for a in get("/v1/allocations"):
    if a["instance"]["stack"]["stack"] == stack and a["desired"] == "run" and a["node"] in count:
        count[a["node"]] += 1
v = max(count, key=lambda n: count[n])
print(min(count.values()), max(count.values()), len(count), v, nodes[v], count[v])
PY
}

# (a) end to end.
start_cluster a 5s
sleepers=$(stack sleepers "$N" sleep 100000)
d0=$(nodes_down)
t0=$(now_ms)
out=$(timeout 120 "$skiff" up --timeout 100 -f "$sleepers" 2>&1) \
  || die "skiff up of $N sleepers failed: $(echo "$out" | tail -n 5)"
t1=$(now_ms)
echo "skiff up: $(echo "$out" | grep "instances healthy in")"
echo "$N instances over $AGENTS agents: up -> healthy in $(secs $((t1 - t0))) s"
c=$(counts sleepers) || die "reading the allocations failed"
read -r lo hi nodes _ <<< "$c"
echo "spread: min $lo / max $hi instances per node ($nodes nodes)"
[ "$(nodes_down)" = "$d0" ] || echo "warning: nodes marked down during the up: $(($(nodes_down) - d0))"
d0=$(nodes_down)
l0=$(listen_drops)
t=$(now_ms)
out=$(timeout 150 "$skiff" down sleepers 2>&1) || die "skiff down sleepers failed: $out"
echo "skiff down of $N instances over $AGENTS agents: $(secs $(($(now_ms) - t))) s" \
  "(nodes marked down meanwhile: $(($(nodes_down) - d0)); SYNs dropped at full listen queues: $(($(listen_drops) - l0)))"
stop_cluster

# (b) node loss.
start_cluster b "$DOWN"
loss=$(stack loss "$LOSS" sleep 100000)
out=$(timeout 120 "$skiff" up --timeout 100 -f "$loss" 2>&1) \
  || die "skiff up of $LOSS sleepers failed: $(echo "$out" | tail -n 5)"
echo "skiff up: $(echo "$out" | grep "instances healthy in")"
c=$(counts loss) || die "reading the allocations failed"
read -r lo hi nodes victim_id victim_name victim_count <<< "$c"
echo "loss stack spread: min $lo / max $hi instances per node ($nodes nodes)"
k=${victim_name#n}
victim_addr=127.0.1.$k
qname=s.loss.default.skiff
answer=$(dig +short @127.0.0.1 -p "$dns_port" "$qname") || die "dig $qname failed"
grep -qx "$victim_addr" <<< "$answer" \
  || die "$victim_addr is not in the DNS answer for $qname before the kill"
echo "killing agent $victim_name (pid ${agent_pids[k]}, $victim_addr) with $victim_count instances of $LOSS"
d0=$(nodes_down)

# Waits for a fresh heartbeat of the victim, kills it, then times the DNS answer (UDP, every
# 20 ms, in a process of its own) and the instances (API, every 100 ms).
python3 - "$SKIFF_ADDR" "$dns_port" "$qname" "$victim_id" "$victim_addr" "${agent_pids[k]}" \
  "$LOSS" "$down_ms" <<'PY' || die "node loss measurement failed"
import json, os, random, signal, socket, struct, sys, time, urllib.request
api, port, qname, vid, vaddr, pid, total, down_ms = sys.argv[1:]
port, pid, total, down_ms = int(port), int(pid), int(total), int(down_ms)
get = lambda p: json.load(urllib.request.urlopen(api + p, timeout=10))

def query():
    """The addresses of qname's A records (a fresh UDP query)."""
    qid = random.randrange(65536)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in qname.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(q, ("127.0.0.1", port))
        r = s.recv(65535)
    finally:
        s.close()
    hid, flags, qd, an = struct.unpack(">HHHH", r[:8])
    if hid != qid or flags & 0x0200 or flags & 0xF:
        raise RuntimeError("DNS answer: id %d flags %#x" % (hid, flags))
    def skip_name(i):
        while True:
            l = r[i]
            if l == 0: return i + 1
            if l & 0xC0 == 0xC0: return i + 2
            i += 1 + l
    i = 12
    for _ in range(qd):
        i = skip_name(i) + 4
    out = []
    for _ in range(an):
        i = skip_name(i)
        typ, _cls, _ttl, ln = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if typ == 1:
            out.append(socket.inet_ntoa(r[i:i + ln]))
        i += ln
    return out

if vaddr not in query():
    sys.exit("%s not in DNS before the kill" % vaddr)
# Kill right after a heartbeat arrived: the down timeout then runs in full.
hb = get("/v1/nodes/" + vid)["last_heartbeat_ms"]
end = time.time() + 5
while get("/v1/nodes/" + vid)["last_heartbeat_ms"] == hb:
    if time.time() > end:
        sys.exit("no heartbeat of the victim in 5 s")
    time.sleep(0.01)
os.kill(pid, signal.SIGKILL)
t0 = time.monotonic()  # CLOCK_MONOTONIC: the same in the forked child
hb_age = time.time() * 1000 - get("/v1/nodes/" + vid)["last_heartbeat_ms"]
deadline = t0 + down_ms / 1000 + 60

rd, wr = os.pipe()
child = os.fork()
if child == 0:  # the DNS poller
    res = {}
    while time.monotonic() < deadline:
        try:
            got = query()
        except Exception:  # a lost datagram: ask again
            got = [vaddr]
        if vaddr not in got:
            res = {"dns": time.monotonic() - t0, "left": len(set(got))}
            break
        time.sleep(0.02)
    os.write(wr, json.dumps(res).encode())
    os._exit(0)
os.close(wr)
found = {}
while time.monotonic() < deadline:
    t = time.monotonic()
    try:
        inst = get("/v1/instances?env=default&stack=loss")
        if "down" not in found and get("/v1/nodes/" + vid)["status"] == "down":
            found["down"] = time.monotonic() - t0
    except Exception:
        inst = None
    if inst is not None:
        ok = sum(i["state"] == "healthy" and i.get("node") != vid for i in inst)
        if ok == total and not any(i.get("node") == vid for i in inst):
            found["run"] = time.monotonic() - t0
            break
    time.sleep(max(0, 0.1 - (time.monotonic() - t)))
found.update(json.loads(os.read(rd, 4096) or b"{}"))
os.waitpid(child, 0)
print("killed agent: its last heartbeat reached the server %.0f ms before the kill" % hb_age)
if "down" in found:
    print("node loss: node status down after %.0f ms (API polled every 100 ms)" % (found["down"] * 1000))
for key, what in (("dns", "out of DNS"), ("run", "running elsewhere")):
    if key not in found:
        sys.exit("node loss: not %s within %.0f s" % (what, deadline - t0))
    ms = found[key] * 1000
    print("node loss: %s after %.0f ms (down timeout %d ms; X - Y = %.0f ms)" % (what, ms, down_ms, ms - down_ms))
print("node loss: %d addresses left in the DNS answer" % found["left"])
PY
agent_pids[k]=  # killed; its orphans go with the cleanup
silent=$(sed -n "s/.*node is down node=$victim_name silent=\([0-9.]*\)s.*/\1/p" "$work/b-server.err" | tail -n 1)
[ -z "$silent" ] || echo "node loss: the server's log: down when silent for $(awk -v s="$silent" 'BEGIN{printf "%.0f", s*1000}') ms"
[ "$(nodes_down)" = "$((d0 + 1))" ] \
  || echo "warning: nodes marked down during (b): $(($(nodes_down) - d0)) (1 expected)"
stop_cluster
ok=1
