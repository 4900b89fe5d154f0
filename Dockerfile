# syntax=docker/dockerfile:1
# billstream's container image (docker-compose.yml builds it).
#
# Builder: the Rust toolchain plus what rdkafka's bundled librdkafka build
# needs. rdkafka's default features (libz, no cmake-build) plus `ssl`
# (billstream's `tls` feature: TLS, and SASL PLAIN/SCRAM over it), so
# librdkafka is built with its own ./configure and make and links the
# system zlib and OpenSSL (no cmake, no Cyrus SASL/GSSAPI). Builder and
# runtime are the same Debian release, so glibc and OpenSSL match.
FROM rust:1.95-trixie AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Release build without the debug info the benchmarks' profile keeps.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features tls --bin billstream \
    && cp target/release/billstream /usr/local/bin/billstream

# Runtime: the binary (schemas, CQL and default configuration are built
# into it), curl for health checks and schema registration, jq for the
# latter, and the one-shot init scripts. Runs as an unprivileged user.
FROM debian:trixie-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl jq libssl3t64 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 billstream \
    && useradd --system --uid 10001 --gid billstream --home-dir /var/lib/billstream \
       --create-home --shell /usr/sbin/nologin billstream
COPY --from=builder /usr/local/bin/billstream /usr/local/bin/billstream
COPY schemas /usr/local/share/billstream/schemas
COPY deploy/init.sh deploy/register-schemas.sh /usr/local/share/billstream/
USER billstream
WORKDIR /var/lib/billstream
ENV BILLSTREAM_LOG=info BILLSTREAM_LOG_FORMAT=json
# 9464: /metrics, /healthz, /readyz (metrics.listen); 8080: the read API.
EXPOSE 9464 8080
ENTRYPOINT ["billstream"]
CMD ["run"]
