#!/usr/bin/env bash
# Runs the whole pipeline on this machine: the native stack (Kafka-protocol
# broker + two ClickHouse shards), the schema migrations, one ingester and one
# agent collecting this host's metrics. After SPILLWAY_PIPELINE_SECS seconds
# (default 30; 0 = until Ctrl-C) it prints what of this run reached ClickHouse, stops the
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
# The stack's addresses, as the ingester (SPILLWAY_INGESTER_*) and the agent
# (SPILLWAY_AGENT_*) read them.
eval "$(scripts/stack.sh env)"
export SPILLWAY_INGESTER_CLICKHOUSE_DATABASE=spillway

step "cargo build --bins (2-4 minutes the first time on 2 cores)"
cargo build --workspace --bins
BIN=$ROOT/target/debug

step "create topic $TOPIC (4 partitions)"
tansu topic create --broker "tcp://$SPILLWAY_AGENT_KAFKA_BROKERS" --partitions 4 "$TOPIC" >/dev/null 2>&1 || true

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

# This run's rows: this host's (the agent's host id is /etc/machine-id,
# else the host name), from the second the agent started. Older runs' rows
# and other hosts' stay out of the figures below.
HOST_ID=$(head -n1 /etc/machine-id 2>/dev/null || true)
[ -n "$HOST_ID" ] || HOST_ID=$(hostname)
SINCE=$(date +%s)
step "starting spillway-agent, 2 s interval, heartbeat every 5 s (log: $STATE/agent.log)"
printf '[agent]\nstatus_interval = "5s"\n' >"$STATE/agent.toml"
SPILLWAY_AGENT_CONFIG=$STATE/agent.toml SPILLWAY_AGENT_SPOOL_DIR=$STATE/spool SPILLWAY_AGENT_INTERVAL=2s \
  SPILLWAY_AGENT_HTTP_LISTEN=127.0.0.1:9465 "$BIN/spillway-agent" >"$STATE/agent.log" 2>&1 &
pids+=($!)

# Bold headers only on a terminal; plain text in logs.
if [ -t 1 ]; then TABLE=PrettyCompactMonoBlock; else TABLE=PrettyCompactNoEscapes; fi

# One server, the `_all` tables: every shard's rows (docs/queries.md).
query() {
  curl -fsS "${SPILLWAY_INGESTER_CLICKHOUSE_URLS%%,*}/?database=spillway" --data-binary "$1" || true
}
THIS_RUN="host_id = '$HOST_ID' AND time >= toDateTime($SINCE)"
made() {
  curl -fsS http://127.0.0.1:9465/metrics 2>/dev/null \
    | awk '$1 == "spillway_agent_ticks_total" {printf "%d", $2}' || true
}

start=$SECONDS
while [ "$SECS" = 0 ] || [ $((SECONDS - start)) -lt "$SECS" ]; do
  sleep 5
  read -r rows ticks < <(query "SELECT count(), uniqExact(instance_id, seq) FROM samples_all WHERE $THIS_RUN" | tr '\t' ' ')
  printf '  %3ds: %s rows in ClickHouse from %s of the %s ticks the agent made\n' \
    $((SECONDS - start)) "${rows:-0}" "${ticks:-0}" "$(made)"
done

step "this host's latest CPU utilization by mode, from ClickHouse"
query "SELECT labels, round(argMax(value, time_ms), 3) AS utilization FROM samples_all
       WHERE metric = 'system.cpu.utilization' AND labels LIKE 'cpu.mode=%' AND $THIS_RUN
       GROUP BY labels ORDER BY labels FORMAT $TABLE"
step "this run's rows per metric (top 10)"
query "SELECT metric, count() AS n FROM samples_all WHERE $THIS_RUN
       GROUP BY metric ORDER BY n DESC LIMIT 10 FORMAT $TABLE"
step "this agent's latest heartbeat"
query "SELECT hostname, instance_id, last_seq, spool_records, last_error FROM agent_status_all
       WHERE $THIS_RUN ORDER BY time DESC LIMIT 1 FORMAT $TABLE"
