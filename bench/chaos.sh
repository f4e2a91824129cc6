#!/usr/bin/env bash
# Chaos at scale, a nightly-style run (not in CI): N seeded runs of
# tests/tests/chaos.rs in a row (ingester kill -9 and SIGTERM, ClickHouse
# replica kills, two ingesters, one shard of two replicas, agents producing
# in real time), each reporting its faults, rows lost (offsets committed past
# rows not stored), duplicates, rows not yet ingested (a stall), and whose
# fault a stall was, with the evidence.
#
#   bench/chaos.sh [N] [SECONDS]   (default 20 seeds, 60 s of faults each)
#
# Seeds are random; SPILLWAY_CHAOS_SEEDS="s1 s2 ..." replays chosen ones.
# Needs the stack (scripts/stack.sh up). Debug builds (the test suite's).
# Results: bench/results/DATE-chaos.md, one row per seed, and for a seed
# that did not end exact, its verdict (offsets, records lost or pending).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
N=${1:-20}
SECS=${2:-60}
scripts/stack.sh status >/dev/null || { echo "start the stack first: scripts/stack.sh up" >&2; exit 1; }
eval "$(scripts/stack.sh env)"
if [ "${BENCH_CHECK:-0}" = 1 ]; then
  echo "bench: $(basename "$0") set-up ok"
  exit 0
fi
# The binaries of this moment: a run takes long, and a build meanwhile must
# not change what the later seeds test.
cargo build --quiet --workspace --bins
snapshot=$(mktemp -d)
cp target/debug/spillway-ingester "$snapshot/"
test_bin=$(cargo test --quiet -p spillway-e2e --test chaos --no-run --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "chaos":
        print(m["executable"])')
cp "$test_bin" "$snapshot/chaos"
export SPILLWAY_E2E_INGESTER_BIN=$snapshot/spillway-ingester
read -r -a seeds <<<"${SPILLWAY_CHAOS_SEEDS:-}"
while [ "${#seeds[@]}" -lt "$N" ]; do
  seeds+=("$(python3 -c 'import random; print(random.getrandbits(63))')")
done
out_dir=${BENCH_RESULTS:-bench/results}
mkdir -p "$out_dir"
out=$out_dir/$(date -u +%F)-chaos.md
logs=$(mktemp -d)
{
  echo "# Chaos: $N seeds, ${SECS} s of faults each ($(date -u '+%F %H:%M UTC'))"
  echo
  echo "\`bench/chaos.sh $N $SECS\` on $(nproc) cores; ClickHouse $(curl -fsS "${SPILLWAY_INGESTER_CLICKHOUSE_URLS%%,*}/?query=SELECT%20version()" || echo '?') (one shard of two replicas, ZooKeeper), tansu; two ingesters (debug builds); 100 agents x 40 samples a second."
  echo "Lost: rows whose offsets the group committed but which are not stored. Not yet ingested: rows above the committed offsets when the run gave up (a stall). Blame: with the members stopped, a plain client joining the group gets partitions within 30 s (the ingester's fault) or not (the broker's coordinator is stuck)."
  echo
  echo "| seed | result | faults | produced | distinct stored | lost | duplicates | not yet ingested | tiers exact | members restarted | stall blame | time |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} >"$out"
for seed in "${seeds[@]:0:$N}"; do
  log=$logs/seed-$seed.log
  start=$SECONDS
  if SPILLWAY_CHAOS_SEED=$seed SPILLWAY_CHAOS_SECS=$SECS \
      "$snapshot/chaos" --include-ignored --nocapture >"$log" 2>&1; then
    result=exact
  else
    result=FAILED
  fi
  line=$(grep -m1 '^chaos-result ' "$log" || true)
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
  if [ -z "$line" ]; then
    echo "| $seed | $result (no result line: $(grep -m1 -E '^Error|panicked' "$log" | cut -c1-120 | tr '|' '/')) | | | | | | | | | | $((SECONDS - start)) s |" >>"$out"
  else
    tiers=$(field tiers)
    stored=$(field distinct)
    exact_tiers=no
    [ "$tiers" = "$(field stored)/$(field stored)" ] && exact_tiers=yes
    blame=$(sed -n 's/.* stall_blame="\([^"]*\)".*/\1/p' <<<"$line")
    echo "| $seed | $result | $(field faults) | $(field produced) | $stored | $(field lost) | $(field duplicates) | $(field not_yet_ingested) | $exact_tiers | $(field restarted) | ${blame:-none} | $((SECONDS - start)) s |" >>"$out"
  fi
  echo "seed $seed: $result"
done
{
  echo
  echo "## Seeds that did not end exact"
  echo
  found=0
  for seed in "${seeds[@]:0:$N}"; do
    log=$logs/seed-$seed.log
    grep -q '^chaos-result .* lost=0 duplicates=0 not_yet_ingested=0 ' "$log" && continue
    found=1
    echo "### seed $seed"
    echo
    echo '```'
    grep -E "^chaos-result|^seed $seed: [0-9]+ records|^Error|rows (lost|not yet ingested)" "$log" | cut -c1-2000 || true
    echo '```'
    echo
  done
  [ "$found" = 1 ] || echo "None."
} >>"$out"
rm -rf "$logs" "$snapshot"
echo "results: $out"
