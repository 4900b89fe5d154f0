#!/usr/bin/env bash
# The one test command (README "Run the tests"): every set-up step a fresh
# machine needs, then every test of the project in one `cargo test`.
#
# - OpenSSL's headers and pkg-config, from Debian's packages when missing
#   (rdkafka links OpenSSL for TLS; scripts/deps.sh);
# - Apache Kafka (KRaft, with a plaintext and a TLS listener), Apache
#   Cassandra (the CQL database ScyllaDB is compatible with) and Apicurio
#   Registry (a Confluent-compatible Schema Registry), fetched once from
#   Maven Central and started on 127.0.0.1 by scripts/services.sh (Java 17
#   and Maven are installed from Debian's packages when missing; for Java
#   21+, which Debian 12 lacks, services.sh says exactly what to install);
# - `cargo test` with the services' addresses in the environment, so every
#   test runs: the Kafka end-to-end, crash-loop, rebalance, transactional
#   and TLS tests, the store conformance suite on the CQL store, the
#   Kafka end-to-end tests once more with `store.kind = "scylla"`, and the
#   Schema Registry live test;
# - Debian's chromium for the support console's browser test
#   (tests/console.rs drives it headless over the DevTools protocol);
# - the services are stopped when the tests end, pass or fail (their logs
#   stay in ${TMPDIR:-/tmp}/billstream-services-<uid>).
# Extra arguments go to `cargo test` (e.g. `-- kafka_e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 2
fi
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/deps.sh
source scripts/deps.sh

# Java 17 and Maven run Kafka and Cassandra (scripts/services.sh): on
# Debian they are installed from its packages when missing, like OpenSSL's
# headers above. (Apicurio needs Java 21+, which Debian 12 does not carry;
# services.sh says where to get it.)
if command -v dpkg >/dev/null 2>&1; then
  missing=()
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  # The support console's browser test drives headless Chromium.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  ls /usr/lib/jvm/*17*/bin/javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} from Debian's packages (one time: the test services run on Java, the console browser test on Chromium)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd=sudo
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
  fi
fi

# Build first, while nothing else needs the two cores.
cargo test --locked --features tls --no-run "$@"

trap 'bash scripts/services.sh stop' EXIT
# Cassandra with PasswordAuthenticator: every CQL test logs in, and the
# authentication test sees wrong and missing credentials refused.
BILLSTREAM_CASSANDRA_AUTH=1 bash scripts/services.sh start kafka cassandra apicurio
set -a
eval "$(bash scripts/services.sh env)"
set +a
export BILLSTREAM_TEST_CRASH="${BILLSTREAM_TEST_CRASH:-1}"
# The console's browser test must run here (it skips itself only when
# neither a chromium binary nor this variable is there).
export BILLSTREAM_TEST_BROWSER=1

status=0
cargo test --locked --features tls "$@" || status=$?
# The Kafka end-to-end tests once more, with `store.kind = "scylla"` on the
# Cassandra above (the crash-loop test has a CQL variant in the run above).
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  echo "== the Kafka end-to-end tests with the CQL store"
  BILLSTREAM_TEST_STORE=scylla cargo test --locked --features tls --test main -- kafka_e2e:: || status=$?
fi
if [ "$status" -ne 0 ]; then
  run=${BILLSTREAM_SERVICES_RUN:-${TMPDIR:-/tmp}/billstream-services-$(id -u)}
  echo "== Kafka log (last 40 lines; all logs in $run)" >&2
  tail -n 40 "$run/kafka/logs/server.log" >&2 || true
  echo "== Cassandra log (warnings and errors, last 20)" >&2
  grep -E "^(WARN|ERROR)" "$run/cassandra/logs/system.log" | tail -n 20 >&2 || true
fi
exit "$status"
