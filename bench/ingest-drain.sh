#!/usr/bin/env bash
# Ingest drain (peak shaving): a topic pre-filled with ROWS sample rows from
# HOSTS simulated hosts, drained into ClickHouse. In the same run and on the
# same records it measures:
#   - raw consume: an rdkafka consumer that reads every record, decodes nothing;
#   - raw insert: one large RowBinary INSERT of the same rows (no Kafka);
#   - the ingester: first record to last row in ClickHouse (wall time), its
#     CPU seconds (utime+stime from /proc) and peak RSS (VmHWM).
#
#   bench/ingest-drain.sh [ROWS] [HOSTS]     (default 5000000 5000; CI smoke: 20000 100)
#
# Needs the stack (scripts/stack.sh up). One ClickHouse shard, so the limits
# and the ingester write to the same server. Release builds. Results go to
# bench/results/DATE-ingest-drain.md (with the raw figures).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-5000000}
HOSTS=${2:-5000}
SAMPLES=50
TICKS=$(( (ROWS + HOSTS * SAMPLES - 1) / (HOSTS * SAMPLES) ))
ROWS=$(( HOSTS * SAMPLES * TICKS ))
RECORDS=$(( HOSTS * TICKS ))
PARTITIONS=8
export PATH="$HOME/.cargo/bin:$PATH"

scripts/stack.sh status >/dev/null || { echo "start the stack first: scripts/stack.sh up" >&2; exit 1; }
eval "$(scripts/stack.sh env)"
# One shard, named in the configs below.
unset SPILLWAY_CLICKHOUSE_URLS SPILLWAY_CLICKHOUSE_CLUSTER
CH=${SPILLWAY_CLICKHOUSE_URL:-http://127.0.0.1:18123}
# BENCH_PROFILE=debug (CI's smoke run) skips the release build: it checks
# that the benchmark runs, not its figures.
profile=${BENCH_PROFILE:-release}
flag=--release; [ "$profile" = debug ] && flag=
cargo build $flag --quiet -p spillway-ingester --bins
cargo build $flag --quiet -p spillway-e2e --example raw_limits
INGESTER=$ROOT/target/$profile/spillway-ingester
LIMITS=$ROOT/target/$profile/examples/raw_limits
run=$(date +%s)
topic=bench_drain_$run
work=$(mktemp -d)
trap 'kill "${ing_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

ch() { curl -sS --fail-with-body "$CH/" --data-binary "$1"; }
config() { # database
  cat <<TOML
[kafka]
brokers = "$SPILLWAY_KAFKA_BROKERS"
topics = ["$topic"]
group_id = "bench_$run"
[[clickhouse.shards]]
url = "$CH"
database = "$1"
[quality]
interval = "10s"
[retention]
samples_days = 0
rollup_days = 0
quality_days = 0
TOML
}

echo "==> $ROWS rows = $HOSTS hosts x $TICKS ticks x $SAMPLES samples ($RECORDS records), $PARTITIONS partitions"
tansu topic create --broker "tcp://$SPILLWAY_KAFKA_BROKERS" --partitions $PARTITIONS "$topic" >/dev/null
config "bench_drain_$run" >"$work/ingester.toml"
"$INGESTER" -c "$work/ingester.toml" migrate >/dev/null
config "bench_raw_$run" >"$work/raw.toml"
"$INGESTER" -c "$work/raw.toml" migrate >/dev/null
# The raw insert goes to a table without the rollup view, as a plain INSERT.
ch "DROP TABLE bench_raw_$run.samples_1m_mv"
start=$SECONDS
"$INGESTER" -c "$work/ingester.toml" loadgen --topic "$topic" \
  --hosts "$HOSTS" --ticks "$TICKS" --samples $SAMPLES >/dev/null
echo "    filled in $((SECONDS - start)) s"

echo "==> raw consume"
consume=$("$LIMITS" consume "$SPILLWAY_KAFKA_BROKERS" "$topic" $RECORDS)
echo "    $consume"
echo "==> raw insert"
insert=$("$LIMITS" insert "$SPILLWAY_KAFKA_BROKERS" "$topic" $RECORDS "$CH" "bench_raw_$run")
echo "    $insert"

echo "==> ingester"
"$INGESTER" -c "$work/ingester.toml" run 2>"$work/ingester.log" &
ing_pid=$!
t0=$(date +%s.%N)
while :; do
  n=$(ch "SELECT count() FROM bench_drain_$run.samples")
  [ "$n" -ge "$ROWS" ] && break
  kill -0 $ing_pid 2>/dev/null || { tail -20 "$work/ingester.log"; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
read -r utime stime < <(awk '{print $14, $15}' /proc/$ing_pid/stat)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$ing_pid/status)
kill -TERM $ing_pid; wait $ing_pid || true
tck=$(getconf CLK_TCK)

python3 - "$ROWS" "$RECORDS" "$consume" "$insert" "$t0" "$t1" "$utime" "$stime" "$tck" "$hwm" "$n" <<'PY' | tee "$work/summary.md"
import sys
rows, records = int(sys.argv[1]), int(sys.argv[2])
kv = lambda s: dict(p.split("=") for p in s.split()[1:])
c, i = kv(sys.argv[3]), kv(sys.argv[4])
t0, t1 = float(sys.argv[5]), float(sys.argv[6])
cpu = (int(sys.argv[7]) + int(sys.argv[8])) / int(sys.argv[9])
hwm_mib = int(sys.argv[10]) / 1024
stored = int(sys.argv[11])
consume_rps = rows / float(c["seconds"])
insert_rps = int(i["rows"]) / float(i["seconds"])
wall = t1 - t0
ing_rps = rows / wall
limit = min(consume_rps, insert_rps)
print(f"| measure | figure |")
print(f"|---|---|")
print(f"| rows / records | {rows:,} / {records:,} ({int(c['bytes'])/1e6:.1f} MB of records) |")
print(f"| raw consume | {float(c['seconds']):.2f} s, {consume_rps:,.0f} rows/s |")
print(f"| raw insert (one INSERT) | {float(i['seconds']):.2f} s, {insert_rps:,.0f} rows/s |")
print(f"| ingester drain | {wall:.2f} s, {ing_rps:,.0f} rows/s ({stored:,} rows stored) |")
print(f"| ingester / min(limits) | **{ing_rps/limit:.2f}** (target >= 0.8) |")
print(f"| ingester CPU | {cpu:.2f} s, **{cpu/(rows/1e6):.2f} CPU-s per million rows** (target <= 2) |")
print(f"| ingester peak RSS (VmHWM) | {hwm_mib:.0f} MiB |")
PY

out=bench/results/$(date +%F)-ingest-drain.md
if [ "$ROWS" -ge 1000000 ] && [ "$profile" = release ]; then
  {
    echo "# Ingest drain, $(date +%F)"
    echo
    echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr);"
    echo "tansu $(tansu --version 2>/dev/null | head -1 || echo '?') (memory storage), ClickHouse $(ch 'SELECT version()'), release builds."
    echo "The broker, ClickHouse and the ingester share the machine."
    echo
    echo "Command: \`bench/ingest-drain.sh ${1:-5000000} $HOSTS\`"
    echo
    cat "$work/summary.md"
    echo
    echo "Raw: \`$consume\`, \`$insert\`, ingester t0=$t0 t1=$t1 utime=$utime stime=$stime ticks/s=$tck VmHWM=${hwm} KiB."
  } >"$out"
  echo "==> wrote $out"
fi
ch "DROP DATABASE bench_drain_$run" ; ch "DROP DATABASE bench_raw_$run"
