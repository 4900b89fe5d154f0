#!/usr/bin/env bash
# The end-to-end benchmark harness (BENCHMARKS.md "End to end"): starts
# tansu on 127.0.0.1 (installing it when missing), runs
# `cargo bench --bench kafka_e2e` against it, and stops it.
# Sizes: BENCH_ACCOUNTS (100000), BENCH_USAGE (200000), BENCH_ROUNDS (3),
# BENCH_LATENCY_SECS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/broker.sh
source scripts/broker.sh
export BILLSTREAM_BENCH_BROKERS="$BROKERS"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench --bench kafka_e2e "$@"
