#!/usr/bin/env bash
# POSIX conformance: the pjdfstest suite (crates.io port) against a real elasticfs mount.
# Usage: scripts/pjdfstest.sh   (root; after `cargo build --release --bins`)
# ELASTICFS_PJD_META=etcd://…/NAME runs it on that metadata store instead of an embedded one
# (the etcd test in tests/tests/etcd_mounts.rs does, on a cluster of its own), and
# ELASTICFS_PJD_OPTIONS adds mount options (scripts/test.sh runs it again with commit=1s).
# Passes when pjdfstest reports 0 failures with ../shared/conformance/pjdfstest.toml (or the
# copy in conformance/ when shared/ is not beside this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="$root/.tools"
if [ ! -x "$tools/bin/pjdfstest" ]; then
  cargo install pjdfstest --version 0.2.2 --locked --root "$tools"
fi
config="$root/../shared/conformance/pjdfstest.toml"
[ -f "$config" ] || config="$root/conformance/pjdfstest.toml"
work=$(mktemp -d /tmp/elasticfs-pjd.XXXXXX)
secondary="$work/secondary"
mkdir -p "$work/mnt" "$secondary"
mount -t tmpfs -o size=64m pjd-secondary "$secondary"
bin="$root/target/release/elasticfs"
meta="${ELASTICFS_PJD_META:-sled://$work/meta}"
"$bin" format --meta "$meta" --storage file --bucket "$work/chunks" >/dev/null
"$bin" mount --meta "$meta" "$work/mnt" -d --log "$work/mount.log" -o "cache-dir=$work/cache${ELASTICFS_PJD_OPTIONS:+,$ELASTICFS_PJD_OPTIONS}" >/dev/null
cleanup() {
  "$bin" umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
  umount "$secondary" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/mnt/pjd"
# pjdfstest switches to the dummy users, who must be able to reach the test directory.
chmod 0755 "$work" "$work/mnt"
set +e
"$tools/bin/pjdfstest" -c "$config" -p "$work/mnt/pjd" -s "$secondary" > "$work/pjd.out" 2>&1
set -e
grep -E "FAILED|failed unexpectedly|passed unexpectedly" "$work/pjd.out" | head -50 || true
summary=$(grep -E "^Summary:" "$work/pjd.out" | tail -1)
echo "pjdfstest${ELASTICFS_PJD_OPTIONS:+ (-o $ELASTICFS_PJD_OPTIONS)} $summary"
failed=$(sed -E 's/.*Summary: ([0-9]+) failed.*/\1/' <<<"$summary")
[ -n "$summary" ] && [ "$failed" = "0" ]
