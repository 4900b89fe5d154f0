#!/usr/bin/env bash
# The one test command (README "Run the tests"): every set-up step a fresh
# machine needs, then every test of the project in one `cargo test`.
#
# It installs the tansu Kafka-protocol broker when it is missing (a one-time
# `cargo install`, about 10 minutes on two cores), starts it on 127.0.0.1
# with durable sqlite storage in a temporary folder, runs the tests with
# BILLSTREAM_TEST_BROKERS pointing at it, and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 2
fi
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/broker.sh
source scripts/broker.sh
export BILLSTREAM_TEST_BROKERS="$BROKERS"

status=0
cargo test --locked "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== broker log (last 40 lines)" >&2
  tail -n 40 "$broker_dir/broker.log" >&2 || true
fi
exit "$status"
