#!/usr/bin/env bash
# Storage: compressed bytes per sample, total and per column, of the previous
# layout ("today") and storage v2 side by side, on ClickHouse 26.9 (chdb,
# modern profile) and ClickHouse 18.16 (the stack, legacy profile), for
#   (a) real agent data: bench/data/agent-1s.rec.zst, 20 minutes of this
#       machine at a 1 s interval (BENCH_COLLECT=SECS collects afresh: a
#       release agent at 1 s through the stack's broker);
#   (b) a simulated fleet: HOSTS hosts for TICKS ticks 10 s apart
#       (`loadgen --values host`: host-like values);
# (Dashboard panel latency on the same layouts: bench/dashboard.sh.)
#
#   bench/storage.sh [HOSTS] [TICKS]      (default 20 360; CI smoke: 2 30)
#
# Needs the stack (scripts/stack.sh up) and chdb-core (pip). Results:
# bench/results/DATE-storage.md. Last line:
#   storage: v2 modern X.XX bytes/sample (agent), Y.YY (fleet); today A.AA, B.BB
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HOSTS=${1:-20}
TICKS=${2:-360}

# shellcheck source=bench/lib.sh
source bench/lib.sh
python3 -c 'import chdb, lz4' 2>/dev/null || python3 -m pip install --quiet 'chdb-core==26.9.0' 'lz4>=4'
command -v zstd >/dev/null || { echo "zstd is needed (apt-get install zstd)" >&2; exit 1; }
cargo build $flag --quiet -p spillway-ingester -p spillway-agent --bins
cargo build $flag --quiet -p spillway-e2e --example storage_rows
INGESTER=$ROOT/target/$profile/spillway-ingester
ROWS=$ROOT/target/$profile/examples/storage_rows
work=$(mktemp -d)
trap 'kill "${agent_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

agent_data=$work/agent.rec
if [ -n "${BENCH_COLLECT:-}" ]; then
  topic=bench_storage_agent_$(date +%s)
  tansu topic create --broker "tcp://$BROKERS" --partitions 1 "$topic" >/dev/null
  echo "==> collecting ${BENCH_COLLECT}s of this machine's metrics at 1 s"
  SPILLWAY_AGENT_KAFKA_BROKERS=$BROKERS SPILLWAY_AGENT_KAFKA_TOPIC=$topic \
    SPILLWAY_AGENT_INTERVAL=1s SPILLWAY_AGENT_SPOOL_DIR=$work/spool \
    "$ROOT/target/$profile/spillway-agent" >"$work/agent.log" 2>&1 &
  agent_pid=$!
  sleep "$BENCH_COLLECT"
  kill -TERM "$agent_pid"; wait "$agent_pid" || true; agent_pid=
  "$ROWS" dump "$BROKERS" "$topic" "$agent_data"
  tansu topic delete --broker "tcp://$BROKERS" "$topic" >/dev/null 2>&1 || true
else
  zstd -q -d bench/data/agent-1s.rec.zst -o "$agent_data"
fi
"$ROWS" fleet "$HOSTS" "$TICKS" "$work/fleet.rec"

out=${BENCH_RESULTS:-bench/results}/$(date +%F)-storage.md
mkdir -p "$(dirname "$out")"
python3 bench/storage.py --ingester "$INGESTER" --rows "$ROWS" --legacy-url "$CH" \
  --agent "$agent_data" --fleet "$work/fleet.rec" --out "$work/tables.md" | tee "$work/log"
{
  echo "# Storage: previous layout vs storage v2 ($(date +%F))"
  echo
  echo "\`bench/storage.sh $HOSTS $TICKS\`, on $(nproc) cores."
  echo "Agent data: $(if [ -n "${BENCH_COLLECT:-}" ]; then echo "collected now, ${BENCH_COLLECT} s"; else echo "bench/data/agent-1s.rec.zst (20 minutes of this machine at 1 s)"; fi);"
  echo "fleet: $HOSTS simulated hosts x $TICKS ticks at 10 s."
  echo "Compressed bytes per raw sample after merging each table to one part per partition;"
  echo "today's \`ingested\` is set to time + 1 s (a bulk load would make it constant)."
  cat "$work/tables.md"
  echo
  tail -1 "$work/log"
} >"$out"
echo "results: $out"
tail -1 "$work/log"
