#!/usr/bin/env bash
# Issue 21's data benchmarks, in one run on this machine, loopback only:
#  1. MariaDB with ROWS rows ready from a seed snapshot (x-skiff.seed: tar+zstd of a data
#     directory, unpacked by the agent; `skiff up` until the readiness check passes, then a
#     count(*) that must see every row) vs. a fresh server importing the same rows from a
#     mysqldump file (mariadb-install-db, mariadbd, `mariadb < dump.sql`, the same count):
#     the same server flags, the ratio fresh/seeded (target >= 10x).
#  2. The copy of that environment's volume (POST /v1/envs/{env}/copy-data, the MariaDB frozen
#     for it): time, bytes, bytes written — on the data dir's file system (ext4 here: a plain
#     copy) and, as root with a loop device, on an XFS image made with reflink=1 (reflinks).
# Prints "seed: rows N, seeded ready S ms, dump import F ms, ratio R" and per file system
# "copy (FS): method M, bytes B, written W, ms T" (bench/all.sh reads those).
# Usage: bench/seed.sh [ROWS=1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
. bench/lib.sh
install_missing mariadbd:mariadb-server zstd:zstd mkfs.xfs:xfsprogs curl:curl
[ -n "${SKIFF_BIN:-}" ] || cargo build -q --release -p skiff -p skiff-demo
target=$(realpath "${CARGO_TARGET_DIR:-target}")
skiff=${SKIFF_BIN:-$target/release/skiff}

work=$(mktemp -d)
chmod 755 "$work"
mnt=
user=; [ "$(id -u)" = 0 ] && user=--user=root
flags="--no-defaults --skip-networking=0 --innodb-log-file-size=64M --innodb-buffer-pool-size=256M $user"
fresh_pid=
cleanup() {
  stop_dev
  [ -n "$fresh_pid" ] && kill "$fresh_pid" 2>/dev/null && wait "$fresh_pid" 2>/dev/null
  [ -n "$mnt" ] && umount -d "$mnt" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ms() { date +%s%3N; }

# wait_sql SOCKET: until the server answers.
wait_sql() {
  for _ in $(seq 600); do
    mariadb --no-defaults -uroot -S "$1" -e 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "mariadbd at $1 never answered" >&2
  return 1
}

# fresh_server NAME: a new data dir $work/NAME, its server on $work/NAME.sock (fresh_pid).
fresh_server() {
  mariadb-install-db --no-defaults --datadir="$work/$1" --auth-root-authentication-method=normal \
    --skip-test-db $user --innodb-log-file-size=64M >/dev/null
  # shellcheck disable=SC2086
  mariadbd $flags --datadir="$work/$1" --socket="$work/$1.sock" --port=0 --skip-networking \
    2>"$work/$1.err" &
  fresh_pid=$!
  wait_sql "$work/$1.sock"
}

echo "== making the data: $ROWS rows, a snapshot and a dump"
fresh_server src
mariadb --no-defaults -uroot -S "$work/src.sock" -e "
  create database shop; use shop;
  create table shop.items (id int primary key, name varchar(40), price decimal(10,2),
                           note varchar(100));
  insert into shop.items select seq, concat('item-', seq), seq % 1000 + 0.99,
                                repeat('x', 60) from seq_1_to_$ROWS;"
mariadb-dump --no-defaults -uroot -S "$work/src.sock" --databases shop > "$work/dump.sql"
mariadb-admin --no-defaults -uroot -S "$work/src.sock" shutdown
wait "$fresh_pid" || true
fresh_pid=
tar -C "$work/src" -cf - . | zstd -q -T0 -o "$work/db.tar.zst"
echo "data dir $(du -sm "$work/src" | cut -f1) MB, snapshot $(( $(stat -c %s "$work/db.tar.zst") >> 20 )) MB, dump $(( $(stat -c %s "$work/dump.sql") >> 20 )) MB"

mkdir -p "$work/project"
cat > "$work/project/compose.yaml" <<EOF
name: shop
x-skiff: {driver: process}
services:
  db:
    command:
      - sh
      - -c
      - >-
        exec mariadbd $flags --datadir="\$\$SKIFF_VOLUME_DATA" --port="\$\$PORT"
        --bind-address="\$\$SKIFF_HOST" --socket="\$\$SKIFF_VOLUME_DATA/mysqld.sock"
    ports: [{name: sql, target: 3306}]
    volumes: [data:/var/lib/mysql]
    stop_grace_period: 60s
    x-skiff:
      seed: {from: $work/db.tar.zst, into: data}
      readiness:
        test: [CMD-SHELL, 'mariadb-admin --no-defaults -uroot -h"\$\$SKIFF_HOST" -P"\$\$PORT" ping']
        interval: 1s
        timeout: 330ms
volumes:
  data: {}
EOF

# count ENV: count(*) through the instance's port.
count() {
  local port
  port=$("$skiff" ps -n "$1" -o json | sed -n 's/.*"sql": *\([0-9]*\).*/\1/p' | head -n 1)
  mariadb --no-defaults -uroot -h127.0.0.1 -P"$port" -N -e 'select count(*) from shop.items'
}

echo "== seeded: skiff up -n seeded until ready, then count(*)"
start_dev "$work/data"
t0=$(ms)
(cd "$work/project" && "$skiff" up -n seeded --timeout 600 >/dev/null)
n=$(count seeded)
seeded_ms=$(( $(ms) - t0 ))
[ "$n" = "$ROWS" ] || { echo "seeded server counts $n rows, not $ROWS" >&2; exit 1; }
echo "seeded: $n rows ready in $seeded_ms ms"

echo "== fresh: install-db, mariadbd, import the dump, count(*)"
t0=$(ms)
fresh_server fresh
mariadb --no-defaults -uroot -S "$work/fresh.sock" < "$work/dump.sql"
n=$(mariadb --no-defaults -uroot -S "$work/fresh.sock" -N -e 'select count(*) from shop.items')
fresh_ms=$(( $(ms) - t0 ))
mariadb-admin --no-defaults -uroot -S "$work/fresh.sock" shutdown
wait "$fresh_pid" || true
fresh_pid=
[ "$n" = "$ROWS" ] || { echo "the fresh server counts $n rows, not $ROWS" >&2; exit 1; }
echo "fresh: $n rows imported and ready in $fresh_ms ms"
echo "seed: rows $ROWS, seeded ready $seeded_ms ms, dump import $fresh_ms ms, ratio $(awk -v f="$fresh_ms" -v s="$seeded_ms" 'BEGIN{printf "%.1f", f/s}')"

# copy FS-NAME: copy-data seeded -> clone on the running dev, one line of figures.
copy() {
  local answer
  answer=$(curl -s -X POST -H 'content-type: application/json' -d '{"to":"clone"}' \
    "$SKIFF_ADDR/v1/envs/seeded/copy-data")
  echo "$answer" | grep -q '"method"' || { echo "copy-data: $answer" >&2; return 1; }
  echo "copy ($1): $(echo "$answer" | sed -n 's/.*"bytes":\([0-9]*\),"written":\([0-9]*\),"method":"\([a-z]*\)","ms":\([0-9]*\).*/method \3, bytes \1, written \2, ms \4/p')"
}
echo "== copy of the seeded environment's volume (MariaDB frozen for it)"
copy "$(df --output=fstype "$work" | tail -n 1)"
stop_dev

if [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && command -v mkfs.xfs >/dev/null; then
  echo "== the same on an XFS image with reflink=1"
  truncate -s 4G "$work/xfs.img"
  mkfs.xfs -q -m reflink=1 "$work/xfs.img"
  mnt="$work/xfs"
  mkdir -p "$mnt"
  mount -o loop "$work/xfs.img" "$mnt"
  start_dev "$mnt/data"
  (cd "$work/project" && "$skiff" up -n seeded --timeout 600 >/dev/null)
  copy xfs
  stop_dev
else
  echo "copy (xfs): not run (needs root, a loop device and mkfs.xfs)"
fi
