#!/usr/bin/env bash
# Real Apache Kafka, Apache Cassandra and Apicurio Registry on 127.0.0.1,
# fetched from Maven Central (deploy/services/*/pom.xml), for the tests.
#
#   scripts/services.sh start [kafka|cassandra|apicurio|all]...   (default: all)
#   scripts/services.sh stop            stops what start started (also after a failure)
#   scripts/services.sh status
#   scripts/services.sh env             KEY=value lines for the tests:
#       BILLSTREAM_TEST_BROKERS, BILLSTREAM_TEST_TLS_BROKERS (Kafka's TLS
#       listener, tests/fixtures/tls), BILLSTREAM_SCYLLA_NODES,
#       BILLSTREAM_SCHEMA_REGISTRY_URL (the Confluent-compatible API)
#     use: set -a; eval "$(scripts/services.sh env)"; set +a
#   scripts/services.sh kafka-run <main class | File.java> [args]   a Kafka tool
#       with the fetched jars, e.g. org.apache.kafka.tools.TopicCommand
#       --bootstrap-server 127.0.0.1:<port> --list, or
#       deploy/services/kafka/TxCheck.java 127.0.0.1:<port> (transactions check)
#   scripts/services.sh cql ["CQL statement"]...        runs statements on the running
#       Cassandra and prints the first row of each
#
# The first start fetches each component once with Maven into
# $BILLSTREAM_SERVICES_DIR (default ~/.cache/billstream-services; Maven's
# own cache is ~/.m2) and refetches only when its deploy/services/<component>
# folder changes. Each start writes configs and data into a fresh run folder
# ($BILLSTREAM_SERVICES_RUN, default ${TMPDIR:-/tmp}/billstream-services-<uid>),
# picks free ports, starts the components in parallel under `nice`, and waits
# until each answers (Kafka: a metadata request; Cassandra: a CQL query;
# Apicurio: GET /apis/ccompat/v7/subjects is 200). On failure it prints the
# component's log, stops everything it started and exits 1. `stop` deletes
# the data folders and keeps the logs (<run>/<component>/logs, out.log).
#
# Java: Kafka and Cassandra run on Java 17 (Cassandra 5.0 supports 11 and 17;
# 5.0.9 fails to start on 25); Apicurio Registry 3.3 is compiled for Java 21
# and runs on 21 or newer.
# Override with BILLSTREAM_JAVA17 / BILLSTREAM_JAVA21 (paths to `java`).
# Heaps: Kafka 768 MB, Cassandra 1 GB, Apicurio 512 MB.
# BILLSTREAM_SERVICES_TIMEOUT (seconds, default 300) bounds the wait.
# BILLSTREAM_CASSANDRA_AUTH=1 (opt-in, at start) turns on Cassandra's
# PasswordAuthenticator and CassandraAuthorizer (user cassandra, password
# cassandra); `env` then prints BILLSTREAM_SCYLLA_USERNAME / _PASSWORD and
# `cql` is not available (its client sends no credentials). Use a run
# folder of its own (BILLSTREAM_SERVICES_RUN) next to a default instance.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${BILLSTREAM_SERVICES_DIR:-$HOME/.cache/billstream-services}
RUN=${BILLSTREAM_SERVICES_RUN:-${TMPDIR:-/tmp}/billstream-services-$(id -u)}
TIMEOUT=${BILLSTREAM_SERVICES_TIMEOUT:-300}
NICE=${BILLSTREAM_SERVICES_NICE:-15}
ALL=(kafka cassandra apicurio)

say() { echo "== services: $*" >&2; }
die() { echo "services: $*" >&2; exit 1; }

pom_version() { # component property
  sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "$ROOT/deploy/services/$1/pom.xml" | head -n 1
}

# --------------------------------------------------------------- Java, Maven

java_major() { # path to java
  "$1" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p' | head -n 1
}

# Prints the first `java` found whose major version is in [$1, $2].
find_java() {
  local lo=$1 hi=$2 override=$3 cand major
  local cands=("$override")
  [ -n "${JAVA_HOME:-}" ] && cands+=("$JAVA_HOME/bin/java")
  cands+=(/usr/lib/jvm/*/bin/java)
  command -v java >/dev/null 2>&1 && cands+=("$(command -v java)")
  for cand in "${cands[@]}"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    major=$(java_major "$cand")
    if [ -n "$major" ] && [ "$major" -ge "$lo" ] && [ "$major" -le "$hi" ]; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}

java17() {
  if [ -z "${JAVA17:-}" ]; then
    JAVA17=$(find_java 17 17 "${BILLSTREAM_JAVA17:-}") || die "Java 17 not found (Kafka and Cassandra run on it; Cassandra 5.0 supports Java 11 and 17 only).
  Debian 12 / Ubuntu 22.04+: sudo apt-get install -y openjdk-17-jdk-headless
  elsewhere: a Temurin 17 JDK (https://adoptium.net), then BILLSTREAM_JAVA17=<jdk>/bin/java"
  fi
  echo "$JAVA17"
}

java21() {
  if [ -z "${JAVA21:-}" ]; then
    JAVA21=$(find_java 21 99 "${BILLSTREAM_JAVA21:-}") || die "Java 21 or newer not found (Apicurio Registry $(pom_version apicurio apicurio.version) is compiled for Java 21).
  Debian 13 / Ubuntu 24.04: sudo apt-get install -y openjdk-21-jdk-headless
  Debian 12: a Temurin 21 or 25 JDK (https://adoptium.net, or its apt repository
  https://packages.adoptium.net/artifactory/deb: apt-get install -y temurin-21-jdk),
  then BILLSTREAM_JAVA21=<jdk>/bin/java if it is not under /usr/lib/jvm"
  fi
  echo "$JAVA21"
}

need_mvn() {
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) not found; it fetches the components from Maven Central.
  Debian / Ubuntu: sudo apt-get install -y maven"
}

# ------------------------------------------------------------------- fetching

stamp_of() { # component: a hash of what its cached folder is made from
  local files=("$ROOT/deploy/services/$1/pom.xml")
  [ "$1" = cassandra ] && files+=("$ROOT/deploy/services/cassandra/CqlCheck.java")
  cat "${files[@]}" | sha256sum | cut -c1-16
}

fetch() { # component
  local comp=$1 dest=$CACHE/$1 stamp pom t0
  pom=$ROOT/deploy/services/$comp/pom.xml
  stamp=$(stamp_of "$comp")
  if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ]; then
    return 0
  fi
  need_mvn
  local j17 mvn_java_home
  j17=$(java17)
  mvn_java_home=$(dirname "$(dirname "$(readlink -f "$j17")")")
  say "fetching $comp from Maven Central into $dest (one time)"
  t0=$SECONDS
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  local mlog=$CACHE/$comp.fetch.log
  case $comp in
    apicurio)
      # Unpacked by the POM's pinned maven-dependency-plugin (3.8.1 keeps
      # the archive's long PAX file names; Maven 3.8's default one cuts them).
      JAVA_HOME=$mvn_java_home mvn -q -B -Dstyle.color=never -f "$pom" dependency:unpack-dependencies \
        -DoutputDirectory="$dest.tmp/app" -DmarkersDirectory="$dest.tmp/markers" >"$mlog" 2>&1 ||
        { cat "$mlog" >&2; die "mvn could not fetch $comp (output above, also in $mlog)"; }
      [ -f "$dest.tmp/app/quarkus-run.jar" ] || die "no quarkus-run.jar in $dest.tmp/app"
      ;;
    *)
      JAVA_HOME=$mvn_java_home mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$dest.tmp/lib" >"$mlog" 2>&1 ||
        { cat "$mlog" >&2; die "mvn could not fetch $comp (output above, also in $mlog)"; }
      ;;
  esac
  if [ "$comp" = cassandra ]; then
    # A tiny CQL client (the DataStax driver cassandra-all ships) for the
    # readiness check and `services.sh cql`.
    mkdir -p "$dest.tmp/check"
    "$(dirname "$(readlink -f "$j17")")/javac" -nowarn -d "$dest.tmp/check" \
      -cp "$dest.tmp/lib/*" "$ROOT/deploy/services/cassandra/CqlCheck.java" ||
      die "javac could not compile CqlCheck.java (a JDK 17, not only a JRE, is needed: openjdk-17-jdk-headless)"
  fi
  echo "$stamp" >"$dest.tmp/.stamp"
  rm -rf "$dest"
  mv "$dest.tmp" "$dest"
  say "fetched $comp in $((SECONDS - t0)) s ($(du -sh "$dest" | cut -f1))"
}

# ------------------------------------------------------------------ processes

free_ports() { # count: prints that many distinct free TCP ports on 127.0.0.1
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid of a component if it is running and is ours (its environment
# carries BILLSTREAM_SERVICE_ID=<run>/<component>); nothing otherwise.
live_pid() {
  local comp=$1 pid
  [ -f "$RUN/$comp/pid" ] || return 1
  pid=$(cat "$RUN/$comp/pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qx "BILLSTREAM_SERVICE_ID=$RUN/$comp" || return 1
  echo "$pid"
}

# Runs $RUN/<component>/run.sh in a session of its own (so the whole process
# group can be stopped) and records its pid, which is the group's id.
launch() {
  local comp=$1 d=$RUN/$1
  BILLSTREAM_SERVICE_ID="$d" setsid bash "$d/run.sh" >"$d/out.log" 2>&1 </dev/null &
  for _ in $(seq 1 50); do
    [ -s "$d/pid" ] && return 0
    sleep 0.1
  done
  die "$comp: no pid file after 5 s"
}

# Stops the given components together: TERM to each process group, up to
# 20 s to exit, then KILL. Deletes their data folders, keeps their logs.
stop_comps() {
  local comp pid pids=() names=()
  for comp in "$@"; do
    if pid=$(live_pid "$comp"); then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$comp")
    fi
  done
  local i alive
  for _ in $(seq 1 200); do
    alive=0
    for pid in "${pids[@]+"${pids[@]}"}"; do
      kill -0 -- "-$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 -- "-${pids[$i]}" 2>/dev/null; then
      say "${names[$i]} (pid ${pids[$i]}) did not stop in 20 s: killing it"
      kill -KILL -- "-${pids[$i]}" 2>/dev/null || true
    fi
    say "stopped ${names[$i]} (pid ${pids[$i]})"
  done
  for comp in "$@"; do
    rm -f "$RUN/$comp/pid"
    rm -rf "$RUN/$comp/data"
  done
}

stop_all() {
  [ -d "$RUN" ] || return 0
  local comp present=()
  for comp in "${ALL[@]}"; do
    [ -d "$RUN/$comp" ] && present+=("$comp")
  done
  stop_comps "${present[@]+"${present[@]}"}"
  return 0
}

# ---------------------------------------------------------------------- Kafka

setup_kafka() {
  local d=$RUN/kafka lib=$CACHE/kafka/lib port cport sport cid j
  read -r port cport sport <<<"$(free_ports 3)"
  j=$(java17)
  mkdir -p "$d/data" "$d/logs"
  # A random cluster id (base64url of 16 bytes) that does not start with
  # "-": StorageTool's argument parser takes such a value for an option
  # ("--cluster-id: expected one argument"; Kafka's own Uuid.randomUuid
  # skips those for the same reason). Seen failing CI once in 64 starts.
  cid=$(python3 -c 'import base64, uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"):
        print(c)
        break')
  cat >"$d/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SSL://127.0.0.1:$sport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SSL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL
# the TLS listener, with the test certificate of tests/fixtures/tls (made
# for 127.0.0.1 and localhost; test-only key): a client of it speaks TLS only
ssl.keystore.type=PEM
ssl.keystore.location=$d/keystore.pem
ssl.client.auth=none
log.dirs=$d/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$d/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $d/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
  cat >"$d/tools-log4j2.properties" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
EOF
  cat >"$d/run.sh" <<EOF
# written by scripts/services.sh: formats the KRaft log folder, then runs
# one Kafka node as broker and controller
echo \$\$ >"$d/pid"
cd "$d"
nice -n $NICE "$j" -Xmx256m -Dlog4j2.configurationFile="$d/tools-log4j2.properties" \\
  -cp "$lib/*" kafka.tools.StorageTool format --standalone --cluster-id="$cid" -c "$d/server.properties" || exit 1
exec nice -n $NICE "$j" -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \\
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \\
  -Dlog4j2.configurationFile="$d/log4j2.properties" -Dkafka.logs.dir="$d/logs" \\
  -cp "$lib/*" kafka.Kafka "$d/server.properties"
EOF
  cat "$ROOT/tests/fixtures/tls/broker.key" "$ROOT/tests/fixtures/tls/broker.pem" >"$d/keystore.pem"
  echo "127.0.0.1:$port" >"$d/endpoint"
  echo "127.0.0.1:$sport" >"$d/tls-endpoint"
  echo "Kafka $(pom_version kafka kafka.version): 127.0.0.1:$port, TLS 127.0.0.1:$sport (controller 127.0.0.1:$cport)" >"$d/describe"
}

kafka_run() { # main class, args: a Kafka tool with the fetched jars
  local d=$RUN/kafka
  ${TIMEOUT_CMD:-} nice -n "$NICE" "$(java17)" -Xmx256m -Dlog4j2.configurationFile="$d/tools-log4j2.properties" \
    -cp "$CACHE/kafka/lib/*" "$@"
}

ready_kafka() {
  local ep
  ep=$(cat "$RUN/kafka/endpoint")
  port_open "${ep##*:}" || return 1
  TIMEOUT_CMD="timeout 60" kafka_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$ep" --list \
    >"$RUN/kafka/ready.log" 2>&1
}

# ------------------------------------------------------------------ Cassandra

setup_cassandra() {
  local d=$RUN/cassandra lib=$CACHE/cassandra/lib native storage jmx j jamm
  read -r native storage jmx <<<"$(free_ports 3)"
  j=$(java17)
  jamm=$(ls "$lib"/jamm-*.jar | head -n 1)
  mkdir -p "$d/data" "$d/logs" "$d/triggers"
  cat >"$d/cassandra.yaml" <<EOF
# written by scripts/services.sh: one node on 127.0.0.1, for tests
cluster_name: billstream-test
num_tokens: 16
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
data_file_directories:
  - $d/data/data
commitlog_directory: $d/data/commitlog
saved_caches_directory: $d/data/saved_caches
hints_directory: $d/data/hints
cdc_raw_directory: $d/data/cdc_raw
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $native
start_native_transport: true
# without it, TTLs whose expiry falls after 2038 are refused
storage_compatibility_mode: NONE
EOF
  rm -f "$d/auth"
  if [ "${BILLSTREAM_CASSANDRA_AUTH:-}" = 1 ]; then
    cat >>"$d/cassandra.yaml" <<EOF
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
EOF
    touch "$d/auth"
  fi
  cat >"$d/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$d/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter"><level>WARN</level></filter>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDERR"/>
  </root>
</configuration>
EOF
  # JVM options: conf/jvm17-server.options of Cassandra 5.0 (G1, JPMS
  # exports/opens, Netty), the jamm agent, and the system properties
  # bin/cassandra would set.
  cat >"$d/run.sh" <<EOF
# written by scripts/services.sh: runs one Cassandra node
echo \$\$ >"$d/pid"
cd "$d"
exec nice -n $NICE "$j" -Xms256m -Xmx1g \\
  -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m \\
  -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70 \\
  -XX:+ExitOnOutOfMemoryError \\
  -Djdk.attach.allowAttachSelf=true \\
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED \\
  --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \\
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED \\
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED \\
  --add-exports java.sql/java.sql=ALL-UNNAMED \\
  --add-exports java.base/java.lang.ref=ALL-UNNAMED \\
  --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED \\
  --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED \\
  --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED \\
  --add-opens java.base/java.lang.module=ALL-UNNAMED \\
  --add-opens java.base/jdk.internal.loader=ALL-UNNAMED \\
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED \\
  --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED \\
  --add-opens java.base/jdk.internal.math=ALL-UNNAMED \\
  --add-opens java.base/jdk.internal.module=ALL-UNNAMED \\
  --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED \\
  --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED \\
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED \\
  --add-opens java.base/java.io=ALL-UNNAMED \\
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED \\
  --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED \\
  --add-opens java.base/java.lang=ALL-UNNAMED \\
  --add-opens java.base/java.util=ALL-UNNAMED \\
  -Dio.netty.tryReflectionSetAccessible=true \\
  -Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11 \\
  -javaagent:"$jamm" \\
  -Djava.net.preferIPv4Stack=true \\
  -Dcassandra.jmx.local.port=$jmx \\
  -Dcassandra-foreground=yes \\
  -Dcassandra.config="file://$d/cassandra.yaml" \\
  -Dcassandra.storagedir="$d/data" \\
  -Dcassandra.logdir="$d/logs" \\
  -Dcassandra.triggers_dir="$d/triggers" \\
  -Dlogback.configurationFile="$d/logback.xml" \\
  -Dcassandra.skip_wait_for_gossip_to_settle=0 \\
  -Dcassandra.superuser_setup_delay_ms=0 \\
  -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon
EOF
  echo "127.0.0.1:$native" >"$d/endpoint"
  echo "Cassandra $(pom_version cassandra cassandra.version): CQL 127.0.0.1:$native (storage $storage, JMX $jmx; datacenter datacenter1)" >"$d/describe"
}

cql() { # statements: runs them with CqlCheck on the running Cassandra
  local ep
  ep=$(cat "$RUN/cassandra/endpoint")
  ${TIMEOUT_CMD:-} nice -n "$NICE" "$(java17)" -Xmx128m -Dlogback.configurationFile="$RUN/cassandra/logback-client.xml" \
    -cp "$CACHE/cassandra/check:$CACHE/cassandra/lib/*" CqlCheck "${ep%:*}" "${ep##*:}" "$@"
}

ready_cassandra() {
  local ep
  ep=$(cat "$RUN/cassandra/endpoint")
  port_open "${ep##*:}" || return 1
  grep -q "Starting listening for CQL clients" "$RUN/cassandra/logs/system.log" 2>/dev/null || return 1
  if [ -f "$RUN/cassandra/auth" ]; then
    # CqlCheck sends no credentials: ready once the superuser exists.
    grep -q "Created default superuser role" "$RUN/cassandra/logs/system.log" 2>/dev/null
    return
  fi
  [ -f "$RUN/cassandra/logback-client.xml" ] || cat >"$RUN/cassandra/logback-client.xml" <<'EOF'
<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
EOF
  TIMEOUT_CMD="timeout 60" cql >"$RUN/cassandra/ready.log" 2>&1
}

# ------------------------------------------------------------------- Apicurio

setup_apicurio() {
  local d=$RUN/apicurio app=$CACHE/apicurio/app http mgmt j
  read -r http mgmt <<<"$(free_ports 2)"
  j=$(java21)
  mkdir -p "$d/data" "$d/logs"
  cat >"$d/run.sh" <<EOF
# written by scripts/services.sh: runs Apicurio Registry (Quarkus) with its
# default in-memory storage
echo \$\$ >"$d/pid"
cd "$d/data"
exec nice -n $NICE "$j" -Xms128m -Xmx512m \\
  -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port=$http \\
  -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port=$mgmt \\
  -Djava.io.tmpdir="$d/data" \\
  -jar "$app/quarkus-run.jar"
EOF
  echo "http://127.0.0.1:$http" >"$d/endpoint"
  echo "Apicurio Registry $(pom_version apicurio apicurio.version): http://127.0.0.1:$http/apis/ccompat/v7 (management $mgmt)" >"$d/describe"
}

ready_apicurio() {
  local url code
  url=$(cat "$RUN/apicurio/endpoint")
  code=$(curl -s -o "$RUN/apicurio/ready.log" -w '%{http_code}' --max-time 10 "$url/apis/ccompat/v7/subjects" || true)
  [ "$code" = 200 ]
}

# ---------------------------------------------------------------------- start

start() {
  local comps=() comp
  for comp in "$@"; do
    case $comp in
      all) comps+=("${ALL[@]}") ;;
      kafka | cassandra | apicurio) comps+=("$comp") ;;
      *) die "unknown component $comp (kafka, cassandra, apicurio or all)" ;;
    esac
  done
  [ ${#comps[@]} -gt 0 ] || comps=("${ALL[@]}")
  # shellcheck disable=SC2207
  comps=($(printf '%s\n' "${comps[@]}" | awk '!seen[$0]++'))

  for comp in "${ALL[@]}"; do
    if live_pid "$comp" >/dev/null; then
      die "$comp is already running ($RUN/$comp); run scripts/services.sh stop first"
    fi
  done
  command -v python3 >/dev/null 2>&1 || die "python3 not found (used to pick free ports): sudo apt-get install -y python3"
  command -v curl >/dev/null 2>&1 || die "curl not found: sudo apt-get install -y curl"
  command -v setsid >/dev/null 2>&1 || die "setsid not found: sudo apt-get install -y util-linux"
  # Check the Java versions before any download.
  for comp in "${comps[@]}"; do
    case $comp in
      apicurio) java21 >/dev/null ;;
      *) java17 >/dev/null ;;
    esac
  done
  # One Maven at a time: they share ~/.m2.
  for comp in "${comps[@]}"; do
    fetch "$comp"
  done

  rm -rf "$RUN"
  mkdir -p "$RUN"
  STARTED_OK=0
  trap '[ "$STARTED_OK" = 1 ] || stop_all' EXIT
  trap 'exit 130' INT TERM

  declare -A began
  for comp in "${comps[@]}"; do
    mkdir -p "$RUN/$comp"
    "setup_$comp"
    launch "$comp"
    began[$comp]=$SECONDS
  done
  say "starting ${comps[*]} in $RUN"

  local pending=("${comps[@]}") still t0=$SECONDS
  while [ ${#pending[@]} -gt 0 ]; do
    still=()
    for comp in "${pending[@]}"; do
      if ! live_pid "$comp" >/dev/null; then
        echo "services: $comp exited while starting; its output (logs in $RUN/$comp):" >&2
        tail -n 40 "$RUN/$comp/out.log" >&2 || true
        [ -f "$RUN/$comp/logs/system.log" ] && tail -n 40 "$RUN/$comp/logs/system.log" >&2
        [ -f "$RUN/$comp/logs/server.log" ] && tail -n 40 "$RUN/$comp/logs/server.log" >&2
        exit 1
      fi
      if "ready_$comp"; then
        say "$(cat "$RUN/$comp/describe") ready after $((SECONDS - began[$comp])) s"
      else
        still+=("$comp")
      fi
    done
    pending=("${still[@]+"${still[@]}"}")
    [ ${#pending[@]} -eq 0 ] && break
    if [ $((SECONDS - t0)) -ge "$TIMEOUT" ]; then
      for comp in "${pending[@]}"; do
        echo "services: $comp did not answer within $TIMEOUT s; its output (logs in $RUN/$comp):" >&2
        tail -n 40 "$RUN/$comp/out.log" >&2 || true
        tail -n 20 "$RUN/$comp/ready.log" >&2 2>/dev/null || true
      done
      exit 1
    fi
    sleep 1
  done
  STARTED_OK=1
  say "all ready in $((SECONDS - t0)) s; stop them with scripts/services.sh stop"
}

status() {
  local comp pid any=1
  for comp in "${ALL[@]}"; do
    if pid=$(live_pid "$comp"); then
      echo "$comp: running, pid $pid, $(cat "$RUN/$comp/describe")"
      any=0
    else
      echo "$comp: not running"
    fi
  done
  return $any
}

print_env() {
  if live_pid kafka >/dev/null; then
    echo "BILLSTREAM_TEST_BROKERS=$(cat "$RUN/kafka/endpoint")"
    echo "BILLSTREAM_TEST_TLS_BROKERS=$(cat "$RUN/kafka/tls-endpoint")"
  fi
  live_pid cassandra >/dev/null && echo "BILLSTREAM_SCYLLA_NODES=$(cat "$RUN/cassandra/endpoint")"
  if live_pid cassandra >/dev/null && [ -f "$RUN/cassandra/auth" ]; then
    echo "BILLSTREAM_SCYLLA_USERNAME=cassandra"
    echo "BILLSTREAM_SCYLLA_PASSWORD=cassandra"
  fi
  live_pid apicurio >/dev/null && echo "BILLSTREAM_SCHEMA_REGISTRY_URL=$(cat "$RUN/apicurio/endpoint")/apis/ccompat/v7"
  return 0
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  start) start "$@" ;;
  stop) stop_all ;;
  status) status ;;
  env) print_env ;;
  kafka-run)
    live_pid kafka >/dev/null || die "Kafka is not running"
    kafka_run "$@"
    ;;
  cql)
    live_pid cassandra >/dev/null || die "Cassandra is not running"
    cql "$@"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
