#!/usr/bin/env bash
# The one test command (README "Run the tests"): every set-up step a fresh
# machine needs, then every test of the project in one `cargo test`.
#
# It installs OpenSSL's headers and pkg-config from Debian's packages when
# they are missing (rdkafka links OpenSSL for TLS; scripts/deps.sh), and
# the Kafka-protocol test broker when it is missing (nisshi with
# a nightly toolchain, else tansu; a one-time `cargo install`, 10-16 minutes
# on two cores; scripts/broker.sh), starts it on 127.0.0.1 with durable
# sqlite storage in a temporary folder, runs the tests with
# BILLSTREAM_TEST_BROKERS pointing at it, and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 2
fi
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/deps.sh
source scripts/deps.sh

# shellcheck source=scripts/broker.sh
source scripts/broker.sh
export BILLSTREAM_TEST_BROKERS="$BROKERS"
# The crash-loop and rebalance tests need a broker that survives them.
if [ "$BROKER" = nisshi ]; then
  export BILLSTREAM_TEST_CRASH="${BILLSTREAM_TEST_CRASH:-1}"
  # The TLS test starts a nisshi of its own with a TLS-only listener.
  export BILLSTREAM_TEST_NISSHI="$(command -v nisshi)"
else
  echo "== $BROKER: the crash-loop, rebalance and TLS tests are skipped (they need nisshi)"
fi

status=0
cargo test --locked --features tls "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== broker log (last 40 lines)" >&2
  tail -n 40 "$broker_dir/broker.log" >&2 || true
fi
exit "$status"
