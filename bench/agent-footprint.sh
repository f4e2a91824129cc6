#!/usr/bin/env bash
# Agent footprint, side by side with Prometheus node_exporter on the same
# machine, at the same interval: RSS and CPU time per collection.
#
#   bench/agent-footprint.sh [SECONDS]      (default 60; CI's smoke run uses 5)
#
# Needs the stack (scripts/stack.sh up) for the agent's broker, and installs
# Debian's prometheus-node-exporter if missing. node_exporter is scraped once
# per interval, as Prometheus would; the agent collects and publishes once per
# interval. CPU is utime+stime from /proc/PID/stat over the run, divided by
# the collections made; RSS is sampled every interval (mean and peak).
# Results go to bench/results/DATE-agent-footprint.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-60}
INTERVAL=1
NE_PORT=19100
AGENT_PORT=19465
export PATH="$HOME/.cargo/bin:$PATH"

command -v prometheus-node-exporter >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-node-exporter >/dev/null
}
scripts/stack.sh status >/dev/null || { echo "start the stack first: scripts/stack.sh up" >&2; exit 1; }
eval "$(scripts/stack.sh env)"
# BENCH_PROFILE=debug (CI's smoke run) skips the release build.
profile=${BENCH_PROFILE:-release}
flag=--release
if [ "$profile" = debug ]; then flag=; fi
if [ "${BENCH_CHECK:-0}" = 1 ]; then echo "bench: $(basename "$0") set-up ok (profile $profile)"; exit 0; fi
cargo build $flag -p spillway-agent --quiet
AGENT=$ROOT/target/$profile/spillway-agent
work=$(mktemp -d)
trap 'kill $ne_pid $agent_pid 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/agent.toml" <<TOML
[agent]
interval = "${INTERVAL}s"
host_id = "bench-footprint"
[collect]
top_processes = 0
[kafka]
brokers = "$SPILLWAY_AGENT_KAFKA_BROKERS"
topic = "bench.footprint"
[buffer]
spool_dir = "$work/spool"
[http]
listen = "127.0.0.1:$AGENT_PORT"
[log]
level = "warn"
TOML
tansu topic create --broker "tcp://$SPILLWAY_AGENT_KAFKA_BROKERS" --partitions 1 bench.footprint >/dev/null 2>&1 || true

prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" >"$work/ne.log" 2>&1 &
ne_pid=$!
# As packaged (packaging/spillway-agent.service, the Dockerfile): one malloc arena.
MALLOC_ARENA_MAX=1 "$AGENT" --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
agent_pid=$!
sleep 3

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
agent_ticks() { curl -fsS "127.0.0.1:$AGENT_PORT/metrics" | awk '/^spillway_agent_ticks_total / {print $2}'; }

# Warm-up scrape so node_exporter's first-scrape costs are not counted.
curl -fsS "127.0.0.1:$NE_PORT/metrics" >/dev/null
ne_cpu0=$(cpu_ticks $ne_pid); ag_cpu0=$(cpu_ticks $agent_pid); ag_t0=$(agent_ticks)
ne_rss=(); ag_rss=(); scrapes=0; series=0
end=$((SECONDS + SECS))
while [ $SECONDS -lt $end ]; do
  series=$(curl -fsS "127.0.0.1:$NE_PORT/metrics" | grep -vc '^#')
  scrapes=$((scrapes + 1))
  ne_rss+=("$(rss_kb $ne_pid)"); ag_rss+=("$(rss_kb $agent_pid)")
  sleep $INTERVAL
done
ne_cpu1=$(cpu_ticks $ne_pid); ag_cpu1=$(cpu_ticks $agent_pid); ag_t1=$(agent_ticks)
hz=$(getconf CLK_TCK)
ticks=$(awk -v a="$ag_t0" -v b="$ag_t1" 'BEGIN {print b - a}')
samples=$(curl -fsS "127.0.0.1:$AGENT_PORT/metrics" >/dev/null && echo ok)

stats() { printf '%s\n' "$@" | awk '{s+=$1; if ($1>m) m=$1} END {printf "%.1f %.1f", s/NR/1024, m/1024}'; }
read -r ne_mean ne_peak <<<"$(stats "${ne_rss[@]}")"
read -r ag_mean ag_peak <<<"$(stats "${ag_rss[@]}")"
ne_ms=$(awk -v a="$ne_cpu0" -v b="$ne_cpu1" -v n="$scrapes" -v hz="$hz" 'BEGIN {printf "%.2f", (b-a)*1000/hz/n}')
ag_ms=$(awk -v a="$ag_cpu0" -v b="$ag_cpu1" -v n="$ticks" -v hz="$hz" 'BEGIN {printf "%.2f", (b-a)*1000/hz/(n>0?n:1)}')
rss_ratio=$(awk -v a="$ag_mean" -v b="$ne_mean" 'BEGIN {printf "%.2f", a/b}')
cpu_ratio=$(awk -v a="$ag_ms" -v b="$ne_ms" 'BEGIN {printf "%.2f", (b>0 ? a/b : 0)}')
agent_samples=$(curl -fsS "127.0.0.1:$AGENT_PORT/metrics" | awk '/^spillway_agent_records_published_total / {print $2}')
# How much of agent/link-order.txt (scripts/agent-link-order.sh) names
# functions this build has: the names go stale with a toolchain or
# dependency update, and then the agent's code is no longer packed.
order_total=$(grep -c . agent/link-order.txt || true)
order_found=$(nm --defined-only "$AGENT" 2>/dev/null | awk '{print $3}' | sort -u \
  | comm -12 - <(sort -u agent/link-order.txt) | wc -l)

out=${BENCH_RESULTS:-bench/results}/$(date -u +%Y-%m-%d)-agent-footprint.md
[ "$SECS" -ge 30 ] && [ "$profile" = release ] || out=$work/smoke.md
cat >"$out" <<MD
# Agent footprint vs node_exporter ($(date -u +%Y-%m-%dT%H:%MZ))

Machine: $(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GiB, $(uname -sr).
Command: \`bench/agent-footprint.sh $SECS\` — interval ${INTERVAL} s for both, ${SECS} s run,
agent release build with \`top_processes = 0\` publishing to the local tansu broker,
node_exporter $(prometheus-node-exporter --version 2>&1 | head -1 | awk '{print $3}') (Debian, default collectors,
${series} series per scrape) scraped once per interval.

| | spillway-agent | node_exporter | ratio (agent / node_exporter) |
|---|---|---|---|
| RSS mean (MiB) | $ag_mean | $ne_mean | $rss_ratio |
| RSS peak (MiB) | $ag_peak | $ne_peak | |
| CPU per collection (ms) | $ag_ms | $ne_ms | $cpu_ratio |
| collections | $ticks | $scrapes | |

Agent records acknowledged by the broker during the run: ${agent_samples}.
Functions of agent/link-order.txt in this build (packed together by the linker): ${order_found} of ${order_total}.
Targets (issue 3): RSS ratio ≤ 0.5, CPU ratio ≤ 0.5.
MD
cat "$out"
