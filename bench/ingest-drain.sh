#!/usr/bin/env bash
# Ingest drain (peak shaving): a topic pre-filled with ROWS sample rows from
# HOSTS simulated hosts, drained into ClickHouse. In the same run and on the
# same records it measures:
#   - raw consume: an rdkafka consumer that reads every record, decodes nothing;
#   - raw insert, same work: one large RowBinary INSERT of the same rows (no
#     Kafka) into the table the ingester writes to (`samples_in` where it
#     exists), with its rollup views and the ingester's deduplication
#     settings: the limit the ingester is measured against;
#   - the same INSERT with the rows sorted by the table's sort key first;
#   - raw insert, no views: into `samples` with the rollup views dropped
#     (ClickHouse's bare insert, kept as a second line);
#   - the ingester: from the moment its group gives it the partitions (its
#     "partitions assigned" log line) to the last row in ClickHouse (wall
#     time), its CPU seconds (utime+stime from /proc) and peak RSS (VmHWM).
#     The group join before that is the broker's: it holds the first
#     JoinGroup for its rebalance delay (5 s on tansu; Apache Kafka's
#     group.initial.rebalance.delay.ms is 3 s) while the raw consumer, which
#     assigns its partitions, joins nothing. The join is a line of its own,
#     and the ratio from the process's start a second one.
#
#   bench/ingest-drain.sh [ROWS] [HOSTS]     (default 5000000 5000; CI smoke: 20000 100)
#
# The hand-written Python consumer (bench/python-baseline/consumer.py) drains
# the same topic after the ingester in each run (BENCH_PYTHON=0 skips it).
# BENCH_BASELINE_INGESTER=PATH drains it with another ingester binary too (an
# earlier build, on tables this revision migrates), so a change is
# measured side by side with the code before it; odd runs drain this
# revision first, even runs the baseline first. BENCH_BASELINE_UNTIL=VERSION
# migrates the baseline's tables only up to VERSION (e.g. 0007, to measure
# migration 0008 with the same binary).
#
# Each measurement runs BENCH_RUNS times (default 3) on the same topic, with a
# fresh database and consumer group per run; the summary quotes medians.
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
RUNS=${BENCH_RUNS:-3}

# shellcheck source=bench/lib.sh
source bench/lib.sh
cargo build $flag --quiet -p spillway-ingester --bins
cargo build $flag --quiet -p spillway-e2e --example raw_limits
INGESTER=$ROOT/target/$profile/spillway-ingester
LIMITS=$ROOT/target/$profile/examples/raw_limits
run=$(date +%s)
topic=bench_drain_$run
work=$(mktemp -d)
cleanup() {
  kill "${ing_pid:-}" 2>/dev/null || true
  tansu topic delete --broker "tcp://$BROKERS" "$topic" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

ch() { curl -sS --fail-with-body "$CH/" --data-binary "$1"; }
config() { # database group
  cat <<TOML
[kafka]
brokers = "$BROKERS"
topics = ["$topic"]
group_id = "$2"
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

echo "==> $ROWS rows = $HOSTS hosts x $TICKS ticks x $SAMPLES samples ($RECORDS records), $PARTITIONS partitions, $RUNS runs"
tansu topic create --broker "tcp://$BROKERS" --partitions $PARTITIONS "$topic" >/dev/null
start=$SECONDS
config "bench_fill_$run" "bench_fill_$run" >"$work/fill.toml"
"$INGESTER" -c "$work/fill.toml" loadgen --topic "$topic" \
  --hosts "$HOSTS" --ticks "$TICKS" --samples $SAMPLES >/dev/null
echo "    filled in $((SECONDS - start)) s"

tck=$(getconf CLK_TCK)
# drain BINARY CONFIG DATABASE LABEL: runs an ingester until every row is in
# DATABASE.samples; sets `drained` to "LABEL t0=.. t1=.. utime=.. ...".
drain() {
  "$1" -c "$2" run 2>"$work/$4.log" &
  ing_pid=$!
  local t0 t1 ta n utime stime hwm
  t0=$(date +%s.%N)
  while :; do
    n=$(ch "SELECT count() FROM $3.samples")
    [ "$n" -ge "$ROWS" ] && break
    kill -0 $ing_pid 2>/dev/null || { tail -20 "$work/$4.log"; exit 1; }
    sleep 0.1
  done
  t1=$(date +%s.%N)
  # The assignment's time, from the log line's RFC 3339 timestamp.
  ta=$(grep -m1 'partitions assigned' "$work/$4.log" | cut -d' ' -f1)
  ta=$(date -d "$ta" +%s.%N)
  read -r utime stime < <(awk '{print $14, $15}' /proc/$ing_pid/stat)
  hwm=$(awk '/VmHWM/ {print $2}' /proc/$ing_pid/status)
  kill -TERM $ing_pid; wait $ing_pid || true
  ing_pid=
  # Parts its INSERTs created (merged ones are listed, inactive, for minutes).
  local parts
  parts=$(ch "SELECT count() FROM system.parts WHERE database = '$3' AND table = 'samples' AND level = 0")
  drained="$4 t0=$t0 assigned=$ta t1=$t1 utime=$utime stime=$stime ticks=$tck hwm_kib=$hwm stored=$n parts=$parts"
}
drain_ingester() {
  echo "==> run $i: ingester"
  drain "$INGESTER" "$work/ingester.toml" "$db" ingester
  line="$line | $drained"
}
drain_baseline() {
  echo "==> run $i: baseline ingester $BENCH_BASELINE_INGESTER"
  base=bench_base_${run}_$i
  config "$base" "$base" >"$work/base.toml"
  # The same tables (this revision's migrations), so only the ingester
  # differs; BENCH_BASELINE_UNTIL=VERSION stops them at that migration
  # instead, to measure a migration's cost with one binary.
  "$INGESTER" -c "$work/base.toml" migrate ${BENCH_BASELINE_UNTIL:+--until "$BENCH_BASELINE_UNTIL"} >/dev/null
  drain "$BENCH_BASELINE_INGESTER" "$work/base.toml" "$base" baseline
  line="$line | $drained"
  ch "DROP DATABASE $base"
}
# The hand-written Python consumer (bench/python-baseline); BENCH_PYTHON=0 skips it.
PYTHON=
[ "${BENCH_PYTHON:-1}" = 1 ] && PYTHON=$(bench/python-baseline/setup.sh)
: >"$work/runs"
for i in $(seq "$RUNS"); do
  db=bench_drain_${run}_$i raw=bench_raw_${run}_$i entry=bench_entry_${run}_$i sorted=bench_sorted_${run}_$i
  config "$db" "bench_${run}_$i" >"$work/ingester.toml"
  "$INGESTER" -c "$work/ingester.toml" migrate >/dev/null
  config "$raw" "bench_raw_${run}_$i" >"$work/raw.toml"
  "$INGESTER" -c "$work/raw.toml" migrate >/dev/null
  # The bare insert goes to a table without the rollup views, as a plain INSERT.
  ch "DROP TABLE $raw.samples_1m_mv"
  ch "DROP TABLE $raw.samples_1h_mv"
  # The same-work inserts go where the ingester's go, views and all.
  config "$entry" "bench_entry_${run}_$i" >"$work/entry.toml"
  "$INGESTER" -c "$work/entry.toml" migrate >/dev/null
  config "$sorted" "bench_sorted_${run}_$i" >"$work/sorted.toml"
  "$INGESTER" -c "$work/sorted.toml" migrate >/dev/null

  echo "==> run $i: raw consume"
  consume=$("$LIMITS" consume "$BROKERS" "$topic" $RECORDS)
  echo "    $consume"
  echo "==> run $i: raw insert, same work"
  same=$("$LIMITS" insert "$BROKERS" "$topic" $RECORDS "$CH" "$entry" entry)
  echo "    $same"
  echo "==> run $i: raw insert, same work, rows sorted"
  sorted_line=$("$LIMITS" insert "$BROKERS" "$topic" $RECORDS "$CH" "$sorted" sorted)
  echo "    $sorted_line"
  echo "==> run $i: raw insert, no views"
  insert=$("$LIMITS" insert "$BROKERS" "$topic" $RECORDS "$CH" "$raw")
  echo "    $insert"

  line="$consume | $same | $sorted_line | $insert"
  if [ -z "${BENCH_BASELINE_INGESTER:-}" ]; then
    drain_ingester
  elif [ $((i % 2)) = 1 ]; then
    drain_ingester; drain_baseline
  else
    # The first to drain does so while ClickHouse still merges the raw
    # insert's part, and pays for it (a binary measured against itself
    # came out 1.24x CPU when first): the order alternates between runs.
    drain_baseline; drain_ingester
  fi

  if [ -n "$PYTHON" ]; then
    echo "==> run $i: python baseline"
    py=bench_py_${run}_$i
    config "$py" "$py" >"$work/py.toml"
    "$INGESTER" -c "$work/py.toml" migrate >/dev/null
    t0=$(date +%s.%N)
    "$PYTHON" bench/python-baseline/consumer.py "$BROKERS" "$topic" "$py" "$CH" "$py" "$ROWS" >"$work/py.out"
    t1=$(date +%s.%N)
    n=$(ch "SELECT count() FROM $py.samples")
    line="$line | $(cat "$work/py.out") t0=$t0 t1=$t1 stored=$n"
    ch "DROP DATABASE $py"
  fi
  echo "$line" >>"$work/runs"
  ch "DROP DATABASE $db"; ch "DROP DATABASE $raw"; ch "DROP DATABASE $entry"; ch "DROP DATABASE $sorted"
done

python3 - "$ROWS" "$RECORDS" "$work/runs" <<'PY' | tee "$work/summary.md"
import statistics, sys
rows, records = int(sys.argv[1]), int(sys.argv[2])
kv = lambda s: dict(p.split("=") for p in s.split()[1:])
runs = []
for line in open(sys.argv[3]):
    parts = {part.split()[0]: kv(part) for part in line.split(" | ")}
    c, i, g = parts["consume"], parts["insert"], parts["ingester"]
    e, so = parts["entry"], parts["sorted"]
    p, b = parts.get("python"), parts.get("baseline")
    wall = float(g["t1"]) - float(g["assigned"])
    total = float(g["t1"]) - float(g["t0"])
    cpu = (int(g["utime"]) + int(g["stime"])) / int(g["ticks"])
    r = dict(
        consume=rows / float(c["seconds"]),
        insert=int(i["rows"]) / float(i["seconds"]),
        entry=int(e["rows"]) / float(e["seconds"]),
        sorted=int(so["rows"]) / float(so["seconds"]),
        sorted_vs_entry=float(so["seconds"]) / float(e["seconds"]),
        ingester=rows / wall,
        wall=wall,
        join=total - wall,
        total=total,
        cpu=cpu / (rows / 1e6),
        rss=int(g["hwm_kib"]) / 1024,
        stored=int(g["stored"]),
        parts=int(g["parts"]) / (wall / 60),
        bytes=int(c["bytes"]),
    )
    r["ratio"] = r["ingester"] / min(r["consume"], r["entry"])
    r["ratio_bare"] = r["ingester"] / min(r["consume"], r["insert"])
    r["ratio_total"] = rows / total / min(r["consume"], r["entry"])
    if b:
        bwall = float(b["t1"]) - float(b["assigned"])
        r["base"] = rows / bwall
        r["base_ratio"] = r["base"] / min(r["consume"], r["entry"])
        r["base_cpu"] = (int(b["utime"]) + int(b["stime"])) / int(b["ticks"]) / (rows / 1e6)
        r["cpu_vs_base"] = r["cpu"] / r["base_cpu"]
        r["base_parts"] = int(b["parts"]) / (bwall / 60)
        r["parts_vs_base"] = r["parts"] / r["base_parts"]
    if p:
        r["python"] = rows / (float(p["t1"]) - float(p["t0"]))
        r["python_cpu"] = (float(p["utime"]) + float(p["stime"])) / (rows / 1e6)
        r["python_rss"] = int(p["maxrss_kib"]) / 1024
        r["vs_python"] = r["ingester"] / r["python"]
    runs.append(r)
med = lambda k: statistics.median(r[k] for r in runs)
print(f"{rows:,} rows in {records:,} records ({runs[0]['bytes']/1e6:.1f} MB); {len(runs)} runs, median first.")
print()
print("| measure | median | runs | target |")
print("|---|---|---|---|")
def line(name, key, fmt, target=""):
    each = ", ".join(fmt.format(r[key]) for r in runs)
    print(f"| {name} | {fmt.format(med(key))} | {each} | {target} |")
line("raw consume, rows/s", "consume", "{:,.0f}")
line("raw insert, same work (one INSERT into the ingester's table, views and dedup settings), rows/s", "entry", "{:,.0f}")
line("the same, rows sorted by the sort key first, rows/s", "sorted", "{:,.0f}")
line("sorted INSERT time / unsorted", "sorted_vs_entry", "{:.2f}")
line("raw insert, no views (`samples` without its rollup views), rows/s", "insert", "{:,.0f}")
line("ingester drain, rows/s", "ingester", "{:,.0f}")
line("ingester drain (assignment to last row), s", "wall", "{:.2f}")
line("group join before it (the broker's rebalance delay), s", "join", "{:.2f}")
line("**ingester / min(raw consume, raw insert same work)**", "ratio", "{:.2f}", ">= 0.85")
line("ingester / min(raw consume, raw insert no views)", "ratio_bare", "{:.2f}")
line("the same work, from the ingester's process start (join included)", "ratio_total", "{:.2f}")
line("**ingester CPU-s per million rows**", "cpu", "{:.2f}", "<= 2")
line("ingester peak RSS (VmHWM), MiB", "rss", "{:.0f}")
line("rows stored", "stored", "{:,.0f}")
line("samples parts created per minute", "parts", "{:,.0f}")
if "base" in runs[0]:
    line("baseline ingester drain, rows/s", "base", "{:,.0f}")
    line("baseline ingester / min(limits)", "base_ratio", "{:.2f}")
    line("baseline ingester CPU-s per million rows", "base_cpu", "{:.2f}")
    line("**ingester CPU / baseline CPU**", "cpu_vs_base", "{:.2f}")
    line("baseline samples parts per minute", "base_parts", "{:,.0f}")
    line("**parts per minute / baseline**", "parts_vs_base", "{:.2f}")
if "python" in runs[0]:
    line("Python baseline, rows/s", "python", "{:,.0f}")
    line("Python baseline CPU-s per million rows", "python_cpu", "{:.2f}")
    line("Python baseline peak RSS, MiB", "python_rss", "{:.0f}")
    line("**ingester / Python baseline**", "vs_python", "{:.1f}", ">= 5")
PY

out=${BENCH_RESULTS:-bench/results}/$(date +%F)-ingest-drain.md
if [ "$ROWS" -ge 1000000 ] && [ "$profile" = release ]; then
  {
    echo "# Ingest drain, $(date +%F)"
    echo
    echo "Machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr);"
    echo "tansu $(tansu --version 2>/dev/null | head -1 || echo '?') (memory storage), ClickHouse $(ch 'SELECT version()'), release builds, revision $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')."
    echo "The broker, ClickHouse and the ingester share the machine."
    echo
    echo "Command: \`bench/ingest-drain.sh ${1:-5000000} $HOSTS\` (BENCH_RUNS=$RUNS)"
    echo
    cat "$work/summary.md"
    echo
    echo "Raw figures, one line per run:"
    echo
    sed 's/^/    /' "$work/runs"
  } >"$out"
  echo "==> wrote $out"
fi
