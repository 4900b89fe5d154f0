#!/usr/bin/env bash
# The one test command (README "Run the tests"): everything a fresh machine
# needs, then every test of the project in one `cargo test` invocation.
#
# Today billstream's tests need only the Rust toolchain: the engine, the
# contracts, the embedded store (with a kill -9 test), `simulate` golden
# tests and the demo smoke test. When the Kafka runtime lands, this script
# also installs and starts the tansu broker on 127.0.0.1 and stops it after.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 2
fi

# Tests that start child processes need a writable temp dir; keep it local.
export TMPDIR="${TMPDIR:-/tmp}"

cargo test --locked "$@"
