#!/usr/bin/env bash
# Steady state: HOSTS simulated agents, each ticking once per INTERVAL (spread
# evenly over it, records stamped when produced), through the broker and the
# ingester into ClickHouse. Measures freshness, collection time -> durable
# (queryable) in ClickHouse, p50 and p99, over a window after a warm-up:
#   - from the ingester's `freshness_seconds` histogram (ms precision, taken
#     when ClickHouse acknowledged the INSERT), differenced over the window;
#   - cross-checked by ClickHouse itself: the server's now() at insert (a
#     view the benchmark adds to its own database) minus `time`, both whole
#     seconds, so +-1 s.
# Also the ingester's CPU per million rows at that load.
#
#   bench/freshness.sh [HOSTS] [SECONDS] [INTERVAL]   (default 5000 120 10s; CI smoke: 50 6 2s)
#
# The target is p99 <= batch.max_age (1 s by default) + 2 s.
# Needs the stack (scripts/stack.sh up); one ClickHouse shard. Release builds
# (BENCH_PROFILE=debug for the smoke run). Results: bench/results/DATE-freshness.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HOSTS=${1:-5000}
WINDOW=${2:-120}
INTERVAL=${3:-10s}
SAMPLES=50
PARTITIONS=8
MAX_AGE=1s

# shellcheck source=bench/lib.sh
source bench/lib.sh
cargo build $flag --quiet -p spillway-ingester --bins
INGESTER=$ROOT/target/$profile/spillway-ingester
interval_s=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(ms|s|m)', sys.argv[1]); print(int(m[1]) * {'ms': 0.001, 's': 1, 'm': 60}[m[2]])" "$INTERVAL")
warmup=$(python3 -c "print(max(2 * $interval_s, 10))")
ticks=$(python3 -c "import math; print(math.ceil(($warmup + $WINDOW) / $interval_s) + 2)")
run=$(date +%s)
topic=bench_fresh_$run
db=bench_fresh_$run
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
cleanup() {
  kill "${gen_pid:-}" "${ing_pid:-}" 2>/dev/null || true
  tansu topic delete --broker "tcp://$BROKERS" "$topic" >/dev/null 2>&1 || true
  curl -sS "$CH/" --data-binary "DROP DATABASE IF EXISTS $db" || true
  rm -rf "$work"
}
trap cleanup EXIT
ch() { curl -sS --fail-with-body "$CH/" --data-binary "$1"; }
cat >"$work/ingester.toml" <<TOML
[kafka]
brokers = "$BROKERS"
topics = ["$topic"]
group_id = "$db"
[[clickhouse.shards]]
url = "$CH"
database = "$db"
[batch]
max_age = "$MAX_AGE"
[http]
listen = "127.0.0.1:$port"
[retention]
samples_days = 0
rollup_days = 0
quality_days = 0
TOML

rows_per_s=$(python3 -c "print(f'{$HOSTS * $SAMPLES / $interval_s:,.0f}')")
echo "==> $HOSTS hosts x $SAMPLES samples every $INTERVAL ($rows_per_s rows/s), warm-up ${warmup} s, window $WINDOW s"
tansu topic create --broker "tcp://$BROKERS" --partitions $PARTITIONS "$topic" >/dev/null
"$INGESTER" -c "$work/ingester.toml" migrate >/dev/null
# The server's clock at insert, per row, for the cross-check.
ch "CREATE MATERIALIZED VIEW $db.arrivals ENGINE = MergeTree() ORDER BY time
    AS SELECT time, now() AS ingested FROM $db.samples"
"$INGESTER" -c "$work/ingester.toml" run 2>"$work/ingester.log" &
ing_pid=$!
until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do
  kill -0 $ing_pid 2>/dev/null || { tail -20 "$work/ingester.log"; exit 1; }
  sleep 0.2
done
"$INGESTER" -c "$work/ingester.toml" loadgen --topic "$topic" --hosts "$HOSTS" \
  --ticks "$ticks" --samples $SAMPLES --interval "$INTERVAL" >"$work/loadgen.log" 2>&1 &
gen_pid=$!

snapshot() { # file
  curl -sf "http://127.0.0.1:$port/metrics" | grep '^spillway_ingester_freshness_seconds_bucket' >"$1"
  awk '{print $14 + $15}' /proc/$ing_pid/stat >>"$1"
}
sleep "$warmup"
snapshot "$work/a"; ta=$(date +%s)
sleep "$WINDOW"
snapshot "$work/b"; tb=$(date +%s)
kill -0 $gen_pid 2>/dev/null || { echo "loadgen stopped early:"; cat "$work/loadgen.log"; exit 1; }
kill $gen_pid; wait $gen_pid 2>/dev/null || true; gen_pid=
# Let the last batches land before ClickHouse's view of the window.
sleep "$(python3 -c "print($interval_s + 3)")"
chq=$(ch "SELECT count(), quantilesExact(0.5, 0.99)(toUInt32(ingested) - toUInt32(time))
          FROM $db.arrivals WHERE time >= toDateTime($ta) AND time < toDateTime($tb) FORMAT TSV")
kill -TERM $ing_pid; wait $ing_pid || true; ing_pid=

python3 - "$work/a" "$work/b" "$chq" "$MAX_AGE" "$WINDOW" "$SAMPLES" "$(getconf CLK_TCK)" "$interval_s" "$HOSTS" <<'PY' | tee "$work/summary.md"
import re, sys
def read(path):
    lines = open(path).read().split("\n")
    buckets = {}
    for l in lines:
        m = re.match(r'.*le="([^"]+)"\} (\d+)', l)
        if m:
            buckets[float(m[1])] = int(m[2])
    cpu = int([l for l in lines if l.strip()][-1])
    return buckets, cpu
(a, cpu_a), (b, cpu_b) = read(sys.argv[1]), read(sys.argv[2])
count, q = sys.argv[3].split("\t")
ch_p50, ch_p99 = (int(x) for x in q.strip("[]").split(","))
max_age = float(sys.argv[4].rstrip("s"))
window, samples, tck = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
bounds = sorted(b)
cum = [b[x] - a.get(x, 0) for x in bounds]
total = cum[-1]
def quantile(q):
    rank, lower, below = q * total, 0.0, 0
    for bound, c in zip(bounds, cum):
        if c >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(c - below, 1)
        lower, below = bound, c
    return lower
p50, p99 = quantile(0.5), quantile(0.99)
rows = total * samples
cpu = (cpu_b - cpu_a) / tck
target = max_age + 2
print(f"{total:,} records ({total / window:,.0f}/s, {rows / window:,.0f} rows/s) in the {window} s window.")
print()
print("| measure | figure | target |")
print("|---|---|---|")
print(f"| freshness p50 (ingester histogram) | {p50:.2f} s | |")
print(f"| **freshness p99** (ingester histogram) | **{p99:.2f} s** | <= {target:.0f} s (max_age {max_age:g} s + 2 s) |")
print(f"| ClickHouse check, ingested - time, p50 / p99 (whole seconds, +-1 s) | {ch_p50} s / {ch_p99} s | |")
expected = int(round(window / float(sys.argv[8]))) * int(sys.argv[9]) * samples
print(f"| rows collected in the window, in ClickHouse | {int(count):,} | {expected:,} (hosts x ticks x samples) |")
print(f"| ingester CPU at this load | {cpu:.2f} CPU-s, {cpu / window * 100:.1f}% of a core, {cpu / (rows / 1e6) if rows else 0:.2f} CPU-s per million rows | |")
PY

out=${BENCH_RESULTS:-bench/results}/$(date +%F)-freshness.md
if [ "$profile" = release ] && [ "$WINDOW" -ge 60 ]; then
  {
    echo "# Freshness at steady load, $(date +%F)"
    echo
    echo "Machine: $(nproc) CPUs, $(uname -sr); tansu (memory storage), ClickHouse $(ch 'SELECT version()'), release builds, revision $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')."
    echo "The broker, ClickHouse, the ingester and the load generator share the machine."
    echo
    echo "Command: \`bench/freshness.sh $HOSTS $WINDOW $INTERVAL\` ($HOSTS hosts, $SAMPLES samples per tick, every $INTERVAL, $rows_per_s rows/s)"
    echo
    cat "$work/summary.md"
  } >>"$out"
  echo "==> appended to $out"
fi
