# Sourced by the bench scripts: install the comparators they need, and start and stop one
# `skiff dev` on free loopback ports (after `skiff`, the binary, and `work`, a scratch dir,
# are set).
dev_pid=

# install_missing PROGRAM:PACKAGE...: apt-get installs the packages of programs not found
# (on PATH or in /usr/sbin).
install_missing() {
  local need=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; }
}

# start_dev DATA_DIR: sets dev_pid, exports SKIFF_ADDR (the API), sets dev_dns (host:port).
start_dev() {
  "$skiff" dev --api 127.0.0.1:0 --dns 127.0.0.1:0 --ingress 127.0.0.1:0 --data-dir "$1" \
    > "$work/dev.out" 2> "$work/dev.err" &
  dev_pid=$!
  for _ in $(seq 200); do
    grep -q "api listening" "$work/dev.out" 2>/dev/null && break
    sleep 0.05
  done
  SKIFF_ADDR=$(sed -n 's/^skiff dev: api listening on //p' "$work/dev.out")
  dev_dns=$(sed -n 's/^skiff dev: dns listening on \([^ ]*\).*/\1/p' "$work/dev.out")
  if [ -z "$SKIFF_ADDR" ]; then
    echo "skiff dev did not start:" >&2
    cat "$work/dev.out" >&2
    cat "$work/dev.err" >&2
    exit 1
  fi
  export SKIFF_ADDR
}

# stop_dev: SIGTERM (skiff dev stops its instances) and wait.
stop_dev() {
  [ -n "$dev_pid" ] || return 0
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  dev_pid=
}
