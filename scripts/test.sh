#!/usr/bin/env bash
# Runs every test of elasticfs, installing what the tests need first.
# Real parts only: FUSE mounts (needs root and /dev/fuse), S3 over HTTP on 127.0.0.1 (an
# in-process s3s-fs server, built as a dev dependency), pjdfstest from crates.io, the NFS
# wire protocol (nfs3_client, and Debian's libnfs-utils), fio.
# With CI=true a missing prerequisite fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

require() {
  if [ "${CI:-}" = "true" ]; then echo "missing prerequisite: $1" >&2; exit 1; fi
  echo "warning: $1; the tests that need it will skip" >&2
}

[ "$(id -u)" = 0 ] || require "not root (FUSE mounts and pjdfstest need root)"
modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || require "/dev/fuse is missing (load the fuse module)"

# The TLS test makes its certificate with openssl; the NFS tests copy with libnfs-utils.
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >/dev/null 2>&1 ||
    { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >/dev/null; }
}
command -v openssl >/dev/null || apt_install openssl || require "openssl is missing"
command -v nfs-cp >/dev/null || apt_install libnfs-utils || require "nfs-cp (libnfs-utils) is missing"
# fio writes files at random for the data-safety tests, with its own verification.
command -v fio >/dev/null || apt_install fio || require "fio is missing"
# strace shows that a durable metadata commit reaches the disk (what a SIGKILL cannot show).
command -v strace >/dev/null || apt_install strace || require "strace is missing"

# The metadata engine's etcd driver is tested on a real 3-member cluster (Debian's
# etcd-server); building its gRPC client needs protoc.
# The tests drive the cluster with etcdctl (etcd-client): a host with only etcd-server gets it too.
command -v etcd >/dev/null || apt_install etcd-server || require "etcd (etcd-server) is missing"
command -v etcdctl >/dev/null || apt_install etcd-client || require "etcdctl (etcd-client) is missing"
command -v protoc >/dev/null || apt_install protobuf-compiler || require "protoc (protobuf-compiler) is missing"

# What every stop is asked to check is checked here too.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

cargo build --release --workspace --bins
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  scripts/pjdfstest.sh
  # Deferred commits (-o commit=) change when changes become durable, not what they do.
  ELASTICFS_PJD_OPTIONS=commit=1s scripts/pjdfstest.sh
fi
cargo test --release --workspace
