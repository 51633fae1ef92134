#!/usr/bin/env bash
# What the throughput governor costs: 1 GiB sequential write and read through a FUSE mount of
# one file system in `elastic` mode (every request metered and paid from leases, under a
# ceiling far above this machine) and in `off` mode (no governor), alternating, in one run
# (benches/seq_ab.sh: chunks in memory, embedded metadata, so that neither a disk nor a network
# hides the governor's cost: this is its largest share of a request). Medians over the rounds;
# the governor costs 1 - elastic/off.
#   benches/governor_overhead.sh [WORKDIR] [ROUNDS]   (default /tmp/governor-overhead, 5; wiped)
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/release/elasticfs
exec benches/seq_ab.sh "elastic=$B:elastic" "off=$B:off" "${2:-5}" "${1:-/tmp/governor-overhead}"
