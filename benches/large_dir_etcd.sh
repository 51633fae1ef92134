#!/usr/bin/env bash
# A directory of N entries (default 1,000,000) on a 3-member etcd cluster, listed completely
# through a FUSE mount: every name exactly once, the time it took, and the mount's memory.
# The file system is made in memory and moved to etcd with `elasticfs meta load` (creating a
# million files through a mount would take most of an hour here).
# Usage: benches/large_dir_etcd.sh [N]   (root; after `cargo build --release --bins`)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000000}
bin="$PWD/target/release/elasticfs"
work=$(mktemp -d /tmp/elasticfs-bigdir.XXXXXX)
free_gib=$(df --output=avail -BG /tmp | tail -1 | tr -dc 0-9)
if [ "$free_gib" -lt 10 ]; then
  echo "needs 10 GiB free under /tmp (etcd keeps three copies); $free_gib GiB free" >&2
  exit 1
fi
pids=()
cleanup() {
  "$bin" umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

peers=""
for i in 0 1 2; do peers="${peers:+$peers,}m$i=http://127.0.0.1:$((24480 + i))"; done
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$work/etcd/m$i" \
    --listen-client-urls "http://127.0.0.1:$((24470 + i))" --advertise-client-urls "http://127.0.0.1:$((24470 + i))" \
    --listen-peer-urls "http://127.0.0.1:$((24480 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((24480 + i))" \
    --initial-cluster "$peers" --initial-cluster-state new --quota-backend-bytes $((8 << 30)) \
    --auto-compaction-mode revision --auto-compaction-retention 10000 >"$work/etcd-m$i.log" 2>&1 &
  pids+=($!)
done
endpoints="127.0.0.1:24470,127.0.0.1:24471,127.0.0.1:24472"
until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; do sleep 0.2; done
meta="etcd://$endpoints/big"

cargo run -q --release -p elasticfs-benches --example large_dir_dump -- "$count" "file://$work/bucket" >"$work/dump"
start=$(date +%s.%N)
"$bin" meta load --meta "$meta" <"$work/dump"
echo "meta load of $(stat -c %s "$work/dump") bytes: $(echo "$(date +%s.%N) - $start" | bc) s"
rm "$work/dump"

mkdir "$work/mnt"
"$bin" mount --meta "$meta" "$work/mnt" -d --log "$work/mount.log" -o cache-dir="$work/cache" >/dev/null
mount_pid=$(pgrep -f -n "elasticfs mount --meta $meta")
rss_kib() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$mount_pid/status"; }
ls "$work/mnt" >/dev/null
before=$(rss_kib VmRSS)
python3 - "$work/mnt/big" "$count" <<'PY'
import os, sys, time
path, count = sys.argv[1], int(sys.argv[2])
start = time.monotonic()
seen, listed = set(), 0
with os.scandir(path) as entries:
    for entry in entries:
        listed += 1
        seen.add(entry.name)
seconds = time.monotonic() - start
expected = {f"f{n:07d}" for n in range(count)}
assert listed == count and seen == expected, f"listed {listed} entries, {len(seen)} distinct, expected {count}"
print(f"listed {listed} entries, each exactly once, in {seconds:.1f} s ({listed / seconds:.0f} entries/s)")
PY
echo "mount's resident memory: $before KiB before the listing, peak $(rss_kib VmHWM) KiB, $(rss_kib VmRSS) KiB after"
