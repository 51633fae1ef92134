#!/usr/bin/env bash
# Runs every test of elasticfs, installing what the tests need first.
# Real parts only: FUSE mounts (needs root and /dev/fuse), S3 over HTTP on 127.0.0.1 (an
# in-process s3s-fs server, built as a dev dependency), pjdfstest from crates.io.
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

# The TLS test makes its certificate with openssl.
command -v openssl >/dev/null || apt-get install -y openssl >/dev/null || require "openssl is missing"

cargo build --release --workspace --bins
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  scripts/pjdfstest.sh
fi
cargo test --release --workspace
