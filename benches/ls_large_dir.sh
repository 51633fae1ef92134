#!/bin/bash
# `ls -l` of one large directory after dropping caches, on an embedded mount (chunks in a local
# directory) beside the local disk, and the FUSE requests the listing sent (perf's fuse
# tracepoint). The entries are created with `-o commit=5s` (quicker to set up; a listing does
# not depend on the commit mode). Needs root, perf and about 1 GiB of disk per million entries.
#   benches/ls_large_dir.sh [ENTRIES] [WORKDIR]     (default 1000000, /tmp/ls-large-dir; wiped)
set -euo pipefail
N=${1:-1000000}
W=${2:-/tmp/ls-large-dir}
B=${ELASTICFS_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/elasticfs}
cleanup() { "$B" umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cleanup
mkdir -p "$W/mnt" "$W/local/d"
"$B" format --meta "sled://$W/meta" --storage file --bucket "$W/chunks" >/dev/null
"$B" mount --meta "sled://$W/meta" -d -o "cache-dir=$W/cache,commit=5s" "$W/mnt" >/dev/null
mkdir "$W/mnt/d"
create() { (cd "$1" && seq 1 "$N" | xargs touch); }
timed_ls() {
    sync; echo 3 > /proc/sys/vm/drop_caches
    local start end
    start=$(date +%s.%N); ls -l "$1" | wc -l >/dev/null; end=$(date +%s.%N)
    echo "$N / ($end - $start)" | bc
}
create "$W/mnt/d"
create "$W/local/d"
local_rate=$(timed_ls "$W/local/d")
perf record -q -e fuse:fuse_request_send -a -o "$W/fuse.data" -- sleep 100000 >/dev/null 2>&1 &
perf_pid=$!
sleep 1
ours=$(timed_ls "$W/mnt/d")
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
echo "ls -l of $N entries after dropping caches, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  local disk: $local_rate entries/s"
echo "  elasticfs:  $ours entries/s ($(echo "scale=2; $ours / $local_rate" | bc)x the local disk)"
echo "  FUSE requests of the listing:"
perf script -i "$W/fuse.data" 2>/dev/null | grep -o "opcode [0-9]* ([A-Z_]*)" | sort | uniq -c | sort -rn | sed 's/^/    /'
