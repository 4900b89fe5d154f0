#!/usr/bin/env bash
# Sourced by .ci/run and scripts/test.sh: the C libraries the build links
# that a new machine may lack. rdkafka's `ssl` feature (TLS and SASL to
# Kafka) links the system OpenSSL, found through pkg-config; on Debian they
# are installed from its packages when missing (root, or sudo).
if command -v dpkg >/dev/null 2>&1; then
  if ! dpkg -s libssl-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
    echo "== installing libssl-dev and pkg-config from Debian's packages (one time: rdkafka links OpenSSL for TLS)"
    sudo_cmd=""
    if [ "$(id -u)" -ne 0 ]; then
      sudo_cmd=sudo
    fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libssl-dev pkg-config
  fi
fi
