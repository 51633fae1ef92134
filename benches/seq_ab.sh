#!/usr/bin/env bash
# Two variants of elasticfs on the same sequential workload, alternating, in one run: 1 GiB
# written with dd (1 MiB writes, fsync at the end) and read back after dropping the page cache,
# through a FUSE mount of a file system formatted for each round. Chunks stay in memory
# (`--storage memory`, lost at unmount) with the disk cache off, and the metadata is embedded,
# so neither a disk nor a network hides what the engine costs. Medians over the rounds.
#
#   benches/seq_ab.sh NAME=BINARY:MODE NAME=BINARY:MODE [ROUNDS=5] [WORKDIR=/tmp/seq-ab]
#
# MODE is the file system's throughput mode (`off`, `elastic`, ...). Two builds:
#   benches/seq_ab.sh old=/tmp/old/elasticfs:off new=target/release/elasticfs:off
# The governor's cost (benches/governor_overhead.sh): one build, `elastic` against `off`.
set -euo pipefail
A=$1
B=$2
ROUNDS=${3:-5}
W=${4:-/tmp/seq-ab}
SIZE_MIB=1024

rm -rf "$W" && mkdir -p "$W/mnt"
# In tmpfs, so that dropping the page cache before each read does not send the next write's
# source to the disk.
SOURCE=/dev/shm/seq-ab-source
trap 'rm -f "$SOURCE"' EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$SOURCE"
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
results=()
for round in $(seq "$ROUNDS"); do
  # Alternate which variant goes first, so that neither always runs on a warmer machine.
  if (( round % 2 )); then variants="$A $B"; else variants="$B $A"; fi
  for variant in $variants; do
    name=${variant%%=*}; spec=${variant#*=}; bin=${spec%:*}; mode=${spec##*:}
    rm -rf "$W/meta"
    "$bin" format --meta "sled://$W/meta" --storage memory --throughput "$mode" > /dev/null
    "$bin" mount --meta "sled://$W/meta" -d -o "cache-dir=$W/cache,disk-cache=0" "$W/mnt" > /dev/null
    t0=$(now); dd if="$SOURCE" of="$W/mnt/f.bin" bs=1M conv=fsync status=none; t1=$(now)
    drop
    t2=$(now); dd if="$W/mnt/f.bin" of=/dev/null bs=1M status=none; t3=$(now)
    "$bin" umount "$W/mnt"
    results+=("$name $t0 $t1 $t2 $t3")
  done
done
rm -rf "$W"
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
mib = '"$SIZE_MIB"'
first, second = "'"${A%%=*}"'", "'"${B%%=*}"'"
rates = {}
for n, line in enumerate(sys.stdin):
    name, t0, t1, t2, t3 = line.split()
    w, r = mib / (float(t1) - float(t0)), mib / (float(t3) - float(t2))
    print(f"round {n // 2 + 1} {name:<8} write {w:7.1f} MiB/s  read {r:7.1f} MiB/s")
    rates.setdefault(name, ([], []))
    rates[name][0].append(w)
    rates[name][1].append(r)
for i, what in enumerate(("write", "read")):
    a, b = statistics.median(rates[first][i]), statistics.median(rates[second][i])
    print(f"median {what}: {first} {a:.1f}, {second} {b:.1f} MiB/s: {first}/{second} {a / b:.3f}")
'
