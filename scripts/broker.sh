#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/bench-e2e.sh: installs the
# Kafka-protocol test broker when it is missing (a one-time `cargo install`,
# 10-16 minutes on two cores), starts it on 127.0.0.1 with durable
# sqlite storage in a temporary folder, exports BROKERS=127.0.0.1:<port>,
# and stops it (removing the folder) when the calling script exits.
# $broker_dir/broker.log holds its log.

# BILLSTREAM_BROKER picks the broker: "nisshi" (the default where a nightly
# toolchain can build it: it needs rustc >= 1.96) or "tansu" (its
# predecessor, on stable). nisshi is the default because it holds up under
# the crash-loop and rebalance tests, where tansu 0.6 stops answering
# (README "Known broker issues").
if [ -z "${BILLSTREAM_BROKER:-}" ]; then
  if command -v nisshi >/dev/null 2>&1 || cargo +nightly --version >/dev/null 2>&1; then
    BILLSTREAM_BROKER=nisshi
  else
    BILLSTREAM_BROKER=tansu
  fi
fi
BROKER=$BILLSTREAM_BROKER
case "$BROKER" in
  tansu)
    BROKER_VERSION=0.6.0
    if ! command -v tansu >/dev/null 2>&1; then
      echo "== installing tansu $BROKER_VERSION (one time)"
      cargo install tansu --version "$BROKER_VERSION" --locked --features dynostore,libsql
    fi
    ;;
  nisshi)
    BROKER_VERSION=0.8.1
    if ! command -v nisshi >/dev/null 2>&1; then
      echo "== installing nisshi $BROKER_VERSION (one time, nightly toolchain)"
      cargo +nightly install "nisshi@$BROKER_VERSION" --locked --no-default-features --features dynostore,libsql
    fi
    ;;
  *)
    echo "BILLSTREAM_BROKER must be tansu or nisshi, not $BROKER" >&2
    exit 2
    ;;
esac

broker_dir=$(mktemp -d -p "${BILLSTREAM_BROKER_TMP:-${TMPDIR:-/tmp}}")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$broker_dir/data"
(
  cd "$broker_dir"
  exec "$BROKER" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://data/broker.db"
) >"$broker_dir/broker.log" 2>&1 &
broker_pid=$!
stop_broker() {
  kill "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  rm -rf "$broker_dir"
}
trap stop_broker EXIT

for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    break
  fi
  if ! kill -0 "$broker_pid" 2>/dev/null; then
    echo "$BROKER did not start:" >&2
    cat "$broker_dir/broker.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "== $BROKER $BROKER_VERSION on 127.0.0.1:$port"
export BROKERS="127.0.0.1:$port"

