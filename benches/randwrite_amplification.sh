#!/usr/bin/env bash
# What fsbench's rand-write-4k workload costs an elasticfs mount besides time: bytes uploaded per
# byte written (and how much of it compaction uploaded), and the mount's peak resident memory. The same fio jobs as fsbench (the file
# laid out first, 4 KiB random writes over it with one fsync at the end, then an fsync after
# every 16 writes for a fixed time), on an embedded store whose chunks are in a local directory,
# so that the bucket's growth is what was uploaded (fio's data does not deduplicate).
#
#   benches/randwrite_amplification.sh [FILE_MIB=256] [SECONDS=30] [MOUNT_OPTIONS]
#
# Needs root, FUSE and fio; works in a fresh directory under /tmp, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-256}
SECONDS_FSYNC16=${2:-30}
OPTIONS=${3:-}
BIN=$PWD/target/release/elasticfs
[ -x "$BIN" ] || cargo build --release --bins
WORK=$(mktemp -d /tmp/randwrite.XXXXXX)
MNT=$WORK/mnt
cleanup() {
  "$BIN" umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Worst case: the layout, the file again at the end fsync, and every fsync16 write a whole block.
FREE_MIB=$(($(df --output=avail -m /tmp | tail -1)))
[ "$FREE_MIB" -gt $((MIB * 4 + 20480)) ] || { echo "not enough free disk in /tmp ($FREE_MIB MiB)" >&2; exit 1; }

mkdir -p "$MNT"
"$BIN" format --meta "sled://$WORK/meta" --bucket "$WORK/chunks" >/dev/null
"$BIN" mount --meta "sled://$WORK/meta" "$MNT" -d --log "$WORK/mount.log" \
  -o "cache-dir=$WORK/cache${OPTIONS:+,$OPTIONS}" >/dev/null
PID=$(cat "/run/elasticfs/$(realpath "$MNT" | tr / _).pid")
stored() { du -sb "$WORK/chunks" | cut -f1; }
mib() { echo "scale=1; $1 / 1048576" | bc; }

fio_job() {
  fio --name="$1" --filename="$MNT/randwrite.dat" --size="${MIB}m" --rw=randwrite --bs=4k --numjobs=1 \
    --output-format=json "${@:2}" > "$WORK/$1.json"
  python3 -c "import json,sys; j=json.load(open(sys.argv[1]))['jobs'][0]['write']; print(f\"{j['iops']:.0f} IOPS, {j['io_bytes']} bytes\")" "$WORK/$1.json"
}

before=$(stored)
echo "end-fsync: $(fio_job end-fsync --end_fsync=1)"
after=$(stored)
echo "  bucket grew $(mib $((after - before))) MiB for a ${MIB} MiB file laid out and then written at random"
before=$after
out=$(fio_job fsync16 --fsync=16 --time_based --runtime="$SECONDS_FSYNC16")
echo "fsync16: $out"
written=$(echo "$out" | sed 's/.*IOPS, \([0-9]*\) bytes/\1/')
after=$(stored)
echo "  bucket grew $(mib $((after - before))) MiB for $(mib "$written") MiB written: $(echo "scale=0; ($after - $before) / $written" | bc)x"
# The mount publishes its counters in status.json every few seconds: give it time to.
sleep 6
"$BIN" status --meta "sled://$WORK/meta" --json | python3 -c "
import json, sys
c = json.load(sys.stdin)['mount']['client']
mib = lambda n: f'{n / 1048576:.1f} MiB'
print(f\"whole run: {mib(c['written_bytes'])} written; {mib(c['slice_bytes'])} uploaded as slices, \"
      f\"{mib(c['compaction_bytes'])} by {c['compactions']} compactions\")"
echo "peak RSS of the mount: $(grep VmHWM "/proc/$PID/status" | awk '{print $2 / 1024 " MiB"}')"
