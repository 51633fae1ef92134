#!/usr/bin/env bash
# The NFS gateway beside a FUSE mount of the same engine, on this machine: 1 GiB sequential
# write and read (dd through FUSE; nfs-cp in and nfs-cat out over NFSv3; the nfs-rs client
# over NFSv4.1, 1 MiB calls, 4 in flight) in ROUNDS rounds, each frontend on a fresh file
# system, the order rotating; then READDIRPLUS of a 100,000-entry directory (nfs-ls) and
# small-file creates over NFSv3 (a raw-RPC client below: CREATE calls on one connection, as a
# client's `touch` would send) and over NFSv4.1 (OPEN with create, then CLOSE).
# Needs a release build (with `cargo build --release -p elasticfs-benches --example nfs41_io`)
# and libnfs-utils. Everything (source, metadata, chunks, caches) lives
# in tmpfs, so that the frontends are what is measured, not this machine's disk (whose speed
# swings between runs) nor an object store.
#   benches/nfs_vs_fuse.sh [ROUNDS] [WORKDIR]   (3, /dev/shm/nfs-vs-fuse; wiped before and after)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/release/elasticfs
NFS41=$PWD/target/release/examples/nfs41_io
ROUNDS=${1:-3}
W=${2:-/dev/shm/nfs-vs-fuse}
SIZE_MIB=1024
ENTRIES=100000
CREATES=10000

GW=
cleanup() {
  [ -z "$GW" ] || kill "$GW" 2>/dev/null || true
  umount "$W/fs/mnt" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$W" && mkdir -p "$W"
SOURCE=$W/source
head -c $((SIZE_MIB << 20)) /dev/urandom > "$SOURCE"
now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.1f}')" "$@"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

fresh_file_system() {
  rm -rf "$W/fs" && mkdir -p "$W/fs/mnt"
  # elastic: the governor meters every request, under a ceiling (10 GiB/s) above this machine.
  $B format --meta "sled://$W/fs/meta" --storage file --bucket "$W/fs/chunks" --throughput elastic > /dev/null
}

# Sets GW (its pid), P (its port) and Q (the query string libnfs needs).
start_gateway() {
  $B nfs serve --meta "sled://$W/fs/meta" --listen 127.0.0.1:0 --squash none -o "cache-dir=$W/fs/cache-nfs" \
    > "$W/fs/nfs.out" 2> "$W/fs/nfs.log" &
  GW=$!
  for _ in $(seq 100); do grep -q "listening on" "$W/fs/nfs.out" 2>/dev/null && break; sleep 0.1; done
  P=$(sed -n 's/listening on 127.0.0.1://p' "$W/fs/nfs.out")
  Q="version=3&nfsport=$P&mountport=$P"
}

stop_gateway() {
  kill -TERM "$GW" && wait "$GW"
  GW=
}

# Each sets WRITE and READ (MiB/s). `sync` first, so that no writeback of earlier work competes.
fuse_round() {
  $B mount --meta "sled://$W/fs/meta" -d -o "cache-dir=$W/fs/cache-fuse" "$W/fs/mnt" > /dev/null 2>&1
  sync
  t0=$(now); dd if="$SOURCE" of="$W/fs/mnt/fuse.bin" bs=1M conv=fsync status=none; t1=$(now)
  WRITE=$(rate $SIZE_MIB "$t0" "$t1")
  drop
  t0=$(now); dd if="$W/fs/mnt/fuse.bin" of=/dev/null bs=1M status=none; t1=$(now)
  READ=$(rate $SIZE_MIB "$t0" "$t1")
  $B umount "$W/fs/mnt"
}

nfs_round() {
  start_gateway
  sync
  t0=$(now); nfs-cp "$SOURCE" "nfs://127.0.0.1//nfs.bin?$Q" > /dev/null; t1=$(now)
  WRITE=$(rate $SIZE_MIB "$t0" "$t1")
  drop
  t0=$(now); nfs-cat "nfs://127.0.0.1//nfs.bin?$Q" > /dev/null; t1=$(now)
  READ=$(rate $SIZE_MIB "$t0" "$t1")
  stop_gateway
}

nfs41_round() {
  start_gateway
  sync
  t0=$(now); $NFS41 put "$P" "$SOURCE" nfs41.bin > /dev/null; t1=$(now)
  WRITE=$(rate $SIZE_MIB "$t0" "$t1")
  drop
  t0=$(now); $NFS41 get "$P" nfs41.bin > /dev/null; t1=$(now)
  READ=$(rate $SIZE_MIB "$t0" "$t1")
  stop_gateway
}

# --- sequential throughput ------------------------------------------------------------------
rounds=()
orders=("fuse nfs nfs41" "nfs nfs41 fuse" "nfs41 fuse nfs")
for round in $(seq "$ROUNDS"); do
  order=${orders[$(( (round - 1) % 3 ))]}
  for frontend in $order; do
    # A file system of its own, so that no write is deduplicated against another's.
    fresh_file_system
    "${frontend}_round"
    declare "${frontend}_write=$WRITE" "${frontend}_read=$READ"
  done
  echo "round $round ($order): fuse write $fuse_write read $fuse_read MiB/s; nfs3 write $nfs_write read $nfs_read MiB/s; nfs4.1 write $nfs41_write read $nfs41_read MiB/s"
  rounds+=("$fuse_write $fuse_read $nfs_write $nfs_read $nfs41_write $nfs41_read")
done
python3 - "${rounds[@]}" <<'EOF'
import statistics, sys
rounds = [list(map(float, r.split())) for r in sys.argv[1:]]
med = lambda i: statistics.median(r[i] for r in rounds)
ratio = lambda nfs, fuse: statistics.median(r[nfs] / r[fuse] for r in rounds)
print(f"median fuse seq write MiB/s: {med(0):.1f}  read: {med(1):.1f}")
print(f"median nfs3 seq write MiB/s: {med(2):.1f}  read: {med(3):.1f}")
print(f"median nfs4.1 seq write MiB/s: {med(4):.1f}  read: {med(5):.1f}")
print(f"median of the rounds' NFSv3/FUSE ratios: write {ratio(2, 0):.2f}x, read {ratio(3, 1):.2f}x")
print(f"median of the rounds' NFSv4.1/FUSE ratios: write {ratio(4, 0):.2f}x, read {ratio(5, 1):.2f}x")
EOF

# --- directory listing and creates ----------------------------------------------------------
fresh_file_system
$B mount --meta "sled://$W/fs/meta" -d -o "cache-dir=$W/fs/cache-fuse" "$W/fs/mnt" > /dev/null 2>&1
python3 - "$W/fs/mnt/dir" $ENTRIES <<'EOF'
import os, sys
os.mkdir(sys.argv[1])
for i in range(int(sys.argv[2])):
    os.close(os.open(f"{sys.argv[1]}/entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
EOF
$B umount "$W/fs/mnt"
start_gateway
t0=$(now); listed=$(nfs-ls "nfs://127.0.0.1/dir?$Q" | wc -l); t1=$(now)
echo "nfs readdirplus entries/s: $(rate "$listed" "$t0" "$t1") ($listed entries)"
python3 - "$P" $CREATES <<'EOF'
# CREATE (UNCHECKED, mode unset) of empty files on one connection, each answered before the next.
import socket, struct, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
def call(xid, prog, proc, args):
    cred = struct.pack(">IIIII", 0, 0, 0, 0, 0)  # AUTH_SYS: stamp, no name, uid 0, gid 0, no groups
    body = struct.pack(">IIIIII", xid, 0, 2, prog, 3, proc) + struct.pack(">II", 1, len(cred)) + cred
    body += struct.pack(">II", 0, 0) + args
    s.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
    n = struct.unpack(">I", s.recv(4))[0] & 0x7FFFFFFF
    reply = b""
    while len(reply) < n:
        reply += s.recv(n - len(reply))
    return reply
def opaque(b):
    return struct.pack(">I", len(b)) + b + b"\0" * (-len(b) % 4)
reply = call(1, 100005, 1, opaque(b"/"))
fh_len = struct.unpack(">I", reply[28:32])[0]
root = reply[32:32 + fh_len]
mkdir = call(2, 100003, 9, opaque(root) + opaque(b"creates") + struct.pack(">6I", 0, 0, 0, 0, 0, 0))
assert struct.unpack(">I", mkdir[24:28])[0] == 0, "MKDIR failed"
dir_fh = mkdir[36:36 + struct.unpack(">I", mkdir[32:36])[0]]
start = time.perf_counter()
for i in range(count):
    reply = call(3 + i, 100003, 8, opaque(dir_fh) + opaque(b"f%06d" % i) + struct.pack(">7I", 0, 0, 0, 0, 0, 0, 0))
    assert struct.unpack(">I", reply[24:28])[0] == 0, f"CREATE {i} failed"
print(f"nfs3 creates/s: {count / (time.perf_counter() - start):.0f}")
EOF
t0=$(now); $NFS41 creates "$P" creates41 $CREATES; t1=$(now)
echo "nfs4.1 creates/s: $(rate $CREATES "$t0" "$t1") (its mount is in the time)"
stop_gateway
