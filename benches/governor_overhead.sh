#!/usr/bin/env bash
# What the throughput governor costs: 1 GiB sequential write and read through a FUSE mount of
# one file system in `elastic` mode (every request metered and paid from leases, under a
# ceiling far above this machine) and in `off` mode (no governor), alternating, in one run.
# Chunks stay in memory (`--storage memory`, lost at unmount: each round writes and reads in
# one mount of a file system formatted for it) and the metadata is embedded, so neither a disk nor a network hides the
# governor's cost: this is its largest share of a request. Medians over the rounds.
#   benches/governor_overhead.sh [WORKDIR] [ROUNDS]   (default /tmp/governor-overhead, 5; wiped)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/release/elasticfs
W=${1:-/tmp/governor-overhead}
ROUNDS=${2:-5}
SIZE_MIB=1024

rm -rf "$W" && mkdir -p "$W/mnt"
# In tmpfs, so that dropping the page cache before each read does not send the next write's
# source to the disk.
SOURCE=/dev/shm/governor-overhead-source
trap 'rm -f "$SOURCE"' EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$SOURCE"
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
results=()
for round in $(seq "$ROUNDS"); do
  # Alternate which mode goes first, so that neither always runs on a warmer machine.
  if (( round % 2 )); then modes="elastic off"; else modes="off elastic"; fi
  for mode in $modes; do
    rm -rf "$W/meta"
    $B format --meta "sled://$W/meta" --storage memory --throughput "$mode" > /dev/null
    $B mount --meta "sled://$W/meta" -d -o "cache-dir=$W/cache,disk-cache=0" "$W/mnt" > /dev/null
    t0=$(now); dd if="$SOURCE" of="$W/mnt/f.bin" bs=1M conv=fsync status=none; t1=$(now)
    drop
    t2=$(now); dd if="$W/mnt/f.bin" of=/dev/null bs=1M status=none; t3=$(now)
    $B umount "$W/mnt"
    results+=("$mode $t0 $t1 $t2 $t3")
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
mib = '"$SIZE_MIB"'
rates = {}
for n, line in enumerate(sys.stdin):
    mode, t0, t1, t2, t3 = line.split()
    w, r = mib / (float(t1) - float(t0)), mib / (float(t3) - float(t2))
    print(f"round {n // 2 + 1} {mode:<7} write {w:7.1f} MiB/s  read {r:7.1f} MiB/s")
    rates.setdefault(mode, ([], []))
    rates[mode][0].append(w)
    rates[mode][1].append(r)
for i, what in enumerate(("write", "read")):
    on, off = statistics.median(rates["elastic"][i]), statistics.median(rates["off"][i])
    print(f"median {what}: elastic {on:.1f}, off {off:.1f} MiB/s: governor costs {100 * (1 - on / off):+.1f}%")
'
