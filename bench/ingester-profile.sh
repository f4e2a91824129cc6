#!/usr/bin/env bash
# Where the ingester's CPU goes while it drains, user and system time apart:
# a topic of ROWS sample rows drained once under `perf record` (cpu-clock,
# call graphs, the kernel's side included: run as root) and once under
# `strace -c -f` (system calls by count and time; strace slows the drain,
# so only the shares are meaningful).
#
#   bench/ingester-profile.sh [ROWS] [HOSTS]     (default 1000000 1000)
#
# Needs the stack (scripts/stack.sh up) and Debian's linux-perf and strace.
# Prints the top of each report; results go to
# bench/results/DATE-ingester-profile.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${1:-1000000}
HOSTS=${2:-1000}
SAMPLES=50
TICKS=$(( (ROWS + HOSTS * SAMPLES - 1) / (HOSTS * SAMPLES) ))
ROWS=$(( HOSTS * SAMPLES * TICKS ))
# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v perf >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
command -v strace >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
cargo build $flag --quiet -p spillway-ingester --bins
INGESTER=$ROOT/target/$profile/spillway-ingester
run=$(date +%s)
topic=bench_profile_$run
work=$(mktemp -d)
trap 'kill ${pid:-} 2>/dev/null || true; tansu topic delete --broker "tcp://$BROKERS" "$topic" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
ch() { curl -sS --fail-with-body "$CH/" --data-binary "$1"; }
config() { # database group
  printf '[kafka]\nbrokers = "%s"\ntopics = ["%s"]\ngroup_id = "%s"\n[[clickhouse.shards]]\nurl = "%s"\ndatabase = "%s"\n' \
    "$BROKERS" "$topic" "$2" "$CH" "$1"
}
tansu topic create --broker "tcp://$BROKERS" --partitions 8 "$topic" >/dev/null
config fill fill >"$work/fill.toml"
"$INGESTER" -c "$work/fill.toml" loadgen --topic "$topic" --hosts "$HOSTS" --ticks "$TICKS" --samples $SAMPLES >/dev/null

# drain WRAPPER... : runs the ingester (under WRAPPER) until every row is in.
drain() {
  local db=bench_profile_${run}_$1; shift
  config "$db" "$db" >"$work/$db.toml"
  "$INGESTER" -c "$work/$db.toml" migrate >/dev/null
  "$@" "$INGESTER" -c "$work/$db.toml" run 2>"$work/$db.log" &
  pid=$!
  while [ "$(ch "SELECT count() FROM $db.samples")" -lt "$ROWS" ]; do sleep 0.2; done
  # The wrapper's child is the ingester: stop it, and the wrapper writes
  # its report.
  kill -TERM "$(pgrep -P $pid)" || true
  wait $pid || true
  ch "DROP DATABASE $db"
}
drain perf perf record -q -e cpu-clock -F 999 -g -o "$work/perf.data" --
drain strace strace -c -f -o "$work/strace.txt"

{
  echo "# Ingester profile, $(date +%F)"
  echo
  echo "$(nproc) CPUs, $(uname -sr); ClickHouse $(ch 'SELECT version()'), revision $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')."
  echo "Command: \`bench/ingester-profile.sh $ROWS $HOSTS\` ($ROWS rows)."
  echo
  echo "## CPU samples by user and kernel side (perf, cpu-clock)"
  echo
  perf report -i "$work/perf.data" --stdio --no-children -g none --sort dso 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 | sed 's/^/    /'
  echo
  echo "## Top kernel symbols"
  echo
  perf report -i "$work/perf.data" --stdio --no-children -g none --sort sym 2>/dev/null | grep '\[k\]' | head -15 | sed 's/^/    /'
  echo
  echo "## Top threads"
  echo
  perf report -i "$work/perf.data" --stdio --no-children -g none --sort comm 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12 | sed 's/^/    /'
  echo
  echo "## System calls (strace -c -f)"
  echo
  head -25 "$work/strace.txt" | sed 's/^/    /'
} | tee "${BENCH_RESULTS:-bench/results}/$(date +%F)-ingester-profile.md"
