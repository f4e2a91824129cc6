#!/usr/bin/env bash
# Runs the whole pipeline on this machine: the native stack (Kafka-protocol
# broker + two ClickHouse shards), the schema migrations, one ingester and one
# agent collecting this host's metrics. After SPILLWAY_PIPELINE_SECS seconds
# (default 30; 0 = until Ctrl-C) it prints what reached ClickHouse, stops the
# agent and the ingester (SIGTERM), and leaves the stack up for queries
# (`scripts/stack.sh down` stops it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
SECS=${SPILLWAY_PIPELINE_SECS:-30}
TOPIC=spillway.metrics
STATE=$ROOT/.stack/pipeline
step() { printf '\n==> %s\n' "$*"; }

step "scripts/stack.sh up"
scripts/stack.sh up >/dev/null
eval "$(scripts/stack.sh env)"
# The ingester reads SPILLWAY_INGESTER_*, the agent SPILLWAY_AGENT_*.
export SPILLWAY_INGESTER_KAFKA_BROKERS=$SPILLWAY_KAFKA_BROKERS
export SPILLWAY_INGESTER_CLICKHOUSE_URLS=$SPILLWAY_CLICKHOUSE_URLS
export SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER=$SPILLWAY_CLICKHOUSE_CLUSTER
export SPILLWAY_INGESTER_CLICKHOUSE_USER=$SPILLWAY_CLICKHOUSE_USER
export SPILLWAY_INGESTER_CLICKHOUSE_PASSWORD=$SPILLWAY_CLICKHOUSE_PASSWORD
export SPILLWAY_INGESTER_CLICKHOUSE_DATABASE=spillway
export SPILLWAY_AGENT_KAFKA_BROKERS=$SPILLWAY_KAFKA_BROKERS

step "cargo build --bins (2-4 minutes the first time on 2 cores)"
cargo build --workspace --bins
BIN=$ROOT/target/debug

step "create topic $TOPIC (4 partitions)"
tansu topic create --broker "tcp://$SPILLWAY_KAFKA_BROKERS" --partitions 4 "$TOPIC" >/dev/null 2>&1 || true

step "spillway-ingester migrate (every shard)"
"$BIN/spillway-ingester" migrate

mkdir -p "$STATE"
pids=()
stop() {
  step "stopping the agent and the ingester (SIGTERM)"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT

step "starting spillway-ingester (log: $STATE/ingester.log)"
SPILLWAY_INGESTER_TOPICS=$TOPIC "$BIN/spillway-ingester" >"$STATE/ingester.log" 2>&1 &
pids+=($!)

step "starting spillway-agent, 2 s interval (log: $STATE/agent.log)"
SPILLWAY_AGENT_SPOOL_DIR=$STATE/spool SPILLWAY_AGENT_INTERVAL=2s SPILLWAY_AGENT_HTTP_LISTEN=127.0.0.1:9465 \
  "$BIN/spillway-agent" >"$STATE/agent.log" 2>&1 &
pids+=($!)

# Bold headers only on a terminal; plain text in logs.
if [ -t 1 ]; then TABLE=PrettyCompactMonoBlock; else TABLE=PrettyCompactNoEscapes; fi

query() {
  local sql=$1 url
  for url in ${SPILLWAY_CLICKHOUSE_URLS//,/ }; do
    curl -fsS "$url/?database=spillway" --data-binary "$sql" || true
  done
}

start=$SECONDS
while [ "$SECS" = 0 ] || [ $((SECONDS - start)) -lt "$SECS" ]; do
  sleep 5
  rows=$(query "SELECT count() FROM samples" | awk '{s+=$1} END {print s+0}')
  ticks=$(query "SELECT uniqExact(seq) FROM samples" | awk '{s+=$1} END {print s+0}')
  printf '  %3ds: %s rows in ClickHouse from %s ticks\n' $((SECONDS - start)) "$rows" "$ticks"
done

step "this host's latest CPU utilization by mode, from ClickHouse"
query "SELECT labels, round(argMax(value, time_ms), 3) FROM samples
       WHERE metric = 'system.cpu.utilization' AND labels LIKE 'cpu.mode=%'
       GROUP BY labels ORDER BY labels FORMAT $TABLE"
step "rows per metric family (top 10)"
query "SELECT metric, count() AS n FROM samples GROUP BY metric ORDER BY n DESC LIMIT 10
       FORMAT $TABLE"
step "agent status"
query "SELECT hostname, instance_id, last_seq, spool_records, last_error FROM agent_status
       ORDER BY time DESC LIMIT 1 FORMAT $TABLE"
