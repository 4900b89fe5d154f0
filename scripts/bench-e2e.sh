#!/usr/bin/env bash
# The end-to-end benchmark harness (BENCHMARKS.md "End to end"): starts
# Apache Kafka on 127.0.0.1 (scripts/services.sh; fetched once from Maven
# Central), runs `cargo bench --bench kafka_e2e` against it, and stops it.
# Sizes: BENCH_ACCOUNTS (100000), BENCH_USAGE (200000), BENCH_ROUNDS (3),
# BENCH_LATENCY_SECS (10), BENCH_VARIANTS (1; 0 skips the metrics-off and
# id-headers loops), BENCH_STORE (embedded; "scylla" also starts Cassandra
# and runs the loops on it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
trap 'bash scripts/services.sh stop' EXIT
if [ "${BENCH_STORE:-embedded}" = scylla ]; then
  bash scripts/services.sh start kafka cassandra
else
  bash scripts/services.sh start kafka
fi
set -a
eval "$(bash scripts/services.sh env)"
set +a
export BILLSTREAM_BENCH_BROKERS="$BILLSTREAM_TEST_BROKERS"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench --bench kafka_e2e "$@"
