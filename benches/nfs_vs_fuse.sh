#!/usr/bin/env bash
# The NFS gateway beside a FUSE mount of the same engine, in one run on this machine:
# 1 GiB sequential write and read (dd through FUSE; nfs-cp in and nfs-cat out through the
# gateway), READDIRPLUS of a 100,000-entry directory (nfs-ls), and small-file creates over NFS
# (a raw-RPC client below: CREATE calls on one connection, as a client's `touch` would send).
# Needs a release build and libnfs-utils; chunks go to a local directory, so the object store
# is not what is measured.
#   benches/nfs_vs_fuse.sh [WORKDIR]        (default /tmp/nfs-vs-fuse; wiped first)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/release/elasticfs
W=${1:-/tmp/nfs-vs-fuse}
SIZE_MIB=1024
ENTRIES=100000
CREATES=10000

rm -rf "$W" && mkdir -p "$W/mnt"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/source"
# elastic: the governor meters every request, under a ceiling (10 GiB/s) above this machine.
$B format --meta "sled://$W/meta" --storage file --bucket "$W/chunks" --throughput elastic > /dev/null
now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.1f}')" "$@"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# --- FUSE -----------------------------------------------------------------------------------
$B mount --meta "sled://$W/meta" -d -o "cache-dir=$W/cache-fuse" "$W/mnt"
t0=$(now); dd if="$W/source" of="$W/mnt/fuse.bin" bs=1M conv=fsync status=none; t1=$(now)
echo "fuse seq write MiB/s: $(rate $SIZE_MIB "$t0" "$t1")"
drop
t0=$(now); dd if="$W/mnt/fuse.bin" of=/dev/null bs=1M status=none; t1=$(now)
echo "fuse seq read MiB/s: $(rate $SIZE_MIB "$t0" "$t1")"
python3 - "$W/mnt/dir" $ENTRIES <<'EOF'
import os, sys
os.mkdir(sys.argv[1])
for i in range(int(sys.argv[2])):
    os.close(os.open(f"{sys.argv[1]}/entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
EOF
$B umount "$W/mnt"

# --- NFS ------------------------------------------------------------------------------------
$B nfs serve --meta "sled://$W/meta" --listen 127.0.0.1:0 --squash none -o "cache-dir=$W/cache-nfs" \
  > "$W/nfs.out" 2> "$W/nfs.log" &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$W/nfs.out" 2>/dev/null && break; sleep 0.1; done
P=$(sed -n 's/listening on 127.0.0.1://p' "$W/nfs.out")
Q="version=3&nfsport=$P&mountport=$P"
t0=$(now); nfs-cp "$W/source" "nfs://127.0.0.1//nfs.bin?$Q" > /dev/null; t1=$(now)
echo "nfs seq write MiB/s: $(rate $SIZE_MIB "$t0" "$t1")"
drop
t0=$(now); nfs-cat "nfs://127.0.0.1//nfs.bin?$Q" > /dev/null; t1=$(now)
echo "nfs seq read MiB/s: $(rate $SIZE_MIB "$t0" "$t1")"
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
print(f"nfs creates/s: {count / (time.perf_counter() - start):.0f}")
EOF
kill -TERM $GW && wait $GW
trap - EXIT
