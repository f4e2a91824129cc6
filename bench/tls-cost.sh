#!/usr/bin/env bash
# What TLS costs, side by side in one run:
#   - the ingester draining the same records from a plaintext broker and from
#     a broker behind TLS (stunnel, Debian's, in front of tansu): wall time
#     and CPU-seconds per million rows, runs alternating which goes first;
#   - two agents at once, one publishing in plaintext and one over TLS, for
#     SECS seconds: CPU per collection and RSS (mean of 1 s samples).
#
#   bench/tls-cost.sh [HOSTS] [TICKS] [SECS]   (default 2000 50 60: 4M rows; CI smoke: 50 4 5)
#
# Needs the stack (scripts/stack.sh up: its test CA signs stunnel's
# certificate, its first ClickHouse takes the rows); both brokers are tansu
# instances of its own, fresh, one behind stunnel.
# Results: bench/results/DATE-tls-cost.md; last line:
#   tls-cost: ingester CPU per million rows TLS / plaintext X.XX, agent CPU Y.YY, RSS Z.ZZ
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HOSTS=${1:-2000}
TICKS=${2:-50}
SECS=${3:-60}
RUNS=${BENCH_RUNS:-3}
SAMPLES=40
ROWS=$((HOSTS * TICKS * SAMPLES))

# shellcheck source=bench/lib.sh
source bench/lib.sh
command -v stunnel >/dev/null || { echo "stunnel is needed (apt-get install stunnel4)" >&2; exit 1; }
TLS=$(eval "$(scripts/stack.sh env)"; echo "$SPILLWAY_STACK_TLS_DIR")
# Apart: built with the ingester, the agent would link libcurl too (Cargo.toml).
cargo build $flag --quiet -p spillway-ingester --bins
cargo build $flag --quiet -p spillway-agent --bins
INGESTER=$ROOT/target/$profile/spillway-ingester
AGENT=$ROOT/target/$profile/spillway-agent
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
ch() { curl -fsS "$CH" --data-binary "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Two brokers of the same kind, fresh: one in plaintext, one advertising
# stunnel's port, so only TLS differs.
direct=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$direct" --advertised-listener-url "tcp://127.0.0.1:$direct" \
  --storage-engine memory://tansu/ >"$work/tansu-plain.log" 2>&1 &
pids+=($!)
PLAIN_BROKER=127.0.0.1:$direct
plain=$(free_port); secure=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$plain" --advertised-listener-url "tcp://127.0.0.1:$secure" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
pids+=($!)
printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s/server.pem\nkey = %s/server.key\n' \
  "$secure" "$plain" "$TLS" "$TLS" >"$work/stunnel.conf"
stunnel "$work/stunnel.conf" >"$work/stunnel.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$secure") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$plain") 2>/dev/null \
    && (exec 3<>"/dev/tcp/127.0.0.1/$direct") 2>/dev/null && break
  sleep 0.1
done
TLS_BROKER=127.0.0.1:$secure

run=$(date +%s)
topic=bench.tls.$run
# config BROKER DB GROUP TLS(0/1)
config() {
  cat <<TOML
[kafka]
brokers = "$1"
topics = ["$topic"]
group_id = "$3"
$( [ "$4" = 1 ] && printf '[kafka.tls]\nca_file = "%s/ca.pem"\n' "$TLS" )
[[clickhouse.shards]]
url = "$CH"
database = "$2"
[retention]
samples_days = 0
rollup_days = 0
quality_days = 0
TOML
}
echo "==> $ROWS rows = $HOSTS hosts x $TICKS ticks x $SAMPLES samples, $RUNS runs each way"
for b in "$PLAIN_BROKER:0" "$TLS_BROKER:1"; do
  tansu topic create --broker "tcp://$( [ "${b##*:}" = 1 ] && echo "127.0.0.1:$plain" || echo "${b%:*}")" \
    --partitions 4 "$topic" >/dev/null
  config "${b%:*}" fill fill "${b##*:}" >"$work/fill.toml"
  "$INGESTER" -c "$work/fill.toml" loadgen --topic "$topic" --hosts "$HOSTS" --ticks "$TICKS" \
    --samples $SAMPLES >/dev/null
done

tck=$(getconf CLK_TCK)
# drain LABEL BROKER TLS: CPU-s per million rows and wall seconds, appended to $work/LABEL.
drain() {
  local db=bench_tls_${run}_$1_$i
  config "$2" "$db" "$db" "$3" >"$work/$1.toml"
  "$INGESTER" -c "$work/$1.toml" migrate >/dev/null
  "$INGESTER" -c "$work/$1.toml" run 2>"$work/$1.log" &
  local pid=$! t0 t1 n
  t0=$(date +%s.%N)
  while :; do
    n=$(ch "SELECT count() FROM $db.samples")
    [ "$n" -ge "$ROWS" ] && break
    kill -0 $pid 2>/dev/null || { tail -20 "$work/$1.log"; exit 1; }
    sleep 0.2
  done
  t1=$(date +%s.%N)
  read -r utime stime < <(awk '{print $14, $15}' /proc/$pid/stat)
  kill -TERM $pid; wait $pid || true
  awk -v u="$utime" -v s="$stime" -v hz="$tck" -v r="$ROWS" -v a="$t0" -v b="$t1" \
    'BEGIN {printf "%.3f %.2f\n", (u + s) / hz / (r / 1e6), b - a}' >>"$work/$1"
  ch "DROP DATABASE $db"
}
: >"$work/plain"; : >"$work/tls"
for i in $(seq "$RUNS"); do
  if [ $((i % 2)) = 1 ]; then order="plain tls"; else order="tls plain"; fi
  for w in $order; do
    echo "==> run $i: $w"
    if [ "$w" = plain ]; then drain plain "$PLAIN_BROKER" 0; else drain tls "$TLS_BROKER" 1; fi
    tail -1 "$work/$w"
  done
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
p_cpu=$(awk '{print $1}' "$work/plain" | median); t_cpu=$(awk '{print $1}' "$work/tls" | median)
p_wall=$(awk '{print $2}' "$work/plain" | median); t_wall=$(awk '{print $2}' "$work/tls" | median)

# Two agents at once, the same settings but for TLS.
agent() {
  local port
  port=$(free_port)
  cat >"$work/agent-$1.toml" <<TOML
[agent]
interval = "1s"
host_id = "bench-tls-$1"
[collect]
top_processes = 0
[kafka]
brokers = "$2"
topic = "$topic"
$( [ "$1" = tls ] && printf '[kafka.tls]\nca_file = "%s/ca.pem"\n' "$TLS" )
[buffer]
spool_dir = "$work/spool-$1"
[http]
listen = "127.0.0.1:$port"
[log]
level = "warn"
TOML
  MALLOC_ARENA_MAX=1 "$AGENT" --config "$work/agent-$1.toml" >"$work/agent-$1.log" 2>&1 &
  pids+=($!)
  agent_pid=$! agent_port=$port
}
agent plain "$PLAIN_BROKER"; pa=$agent_pid port_a=$agent_port
agent tls "$TLS_BROKER"; ta=$agent_pid port_t=$agent_port
sleep 3
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
ticks() { curl -fsS "127.0.0.1:$1/metrics" | awk '/^spillway_agent_ticks_total / {print $2}'; }
spooled() { curl -fsS "127.0.0.1:$1/metrics" | awk '/^spillway_agent_spool_records / {print $2 + 0}'; }
c0a=$(cpu $pa); c0t=$(cpu $ta); k0a=$(ticks $port_a); k0t=$(ticks $port_t)
ra=0; rt=0; n=0
end=$((SECONDS + SECS))
while [ $SECONDS -lt $end ]; do
  ra=$((ra + $(rss $pa))); rt=$((rt + $(rss $ta))); n=$((n + 1)); sleep 1
done
c1a=$(cpu $pa); c1t=$(cpu $ta); k1a=$(ticks $port_a); k1t=$(ticks $port_t)
# Both agents delivered: nothing left in either spool (a spool may hold the
# first ticks while a connection is made; it drains within seconds).
for _ in $(seq 30); do
  [ "$(spooled $port_t)" = 0 ] && [ "$(spooled $port_a)" = 0 ] && break
  sleep 1
done
for p in $port_a $port_t; do
  [ "$(spooled $p)" = 0 ] || { echo "an agent could not deliver (spool $(spooled $p)):" >&2; tail -n 5 "$work"/agent-*.log >&2; exit 1; }
done
read -r a_ms t_ms a_rss t_rss < <(awk -v c0a="$c0a" -v c1a="$c1a" -v c0t="$c0t" -v c1t="$c1t" \
  -v k0a="$k0a" -v k1a="$k1a" -v k0t="$k0t" -v k1t="$k1t" -v hz="$tck" -v ra="$ra" -v rt="$rt" -v n="$n" \
  'BEGIN {printf "%.2f %.2f %.1f %.1f\n", (c1a - c0a) / hz * 1000 / (k1a - k0a), (c1t - c0t) / hz * 1000 / (k1t - k0t), ra / n / 1024, rt / n / 1024}')

out=${BENCH_RESULTS:-bench/results}/$(date +%F)-tls-cost.md
mkdir -p "$(dirname "$out")"
summary=$(awk -v pc="$p_cpu" -v tc="$t_cpu" -v am="$a_ms" -v tm="$t_ms" -v ar="$a_rss" -v tr="$t_rss" \
  'BEGIN {printf "tls-cost: ingester CPU per million rows TLS / plaintext %.2f, agent CPU %.2f, RSS %.2f", tc / pc, tm / am, tr / ar}')
{
  echo "# TLS cost: plaintext and TLS side by side ($(date +%F))"
  echo
  echo "\`bench/tls-cost.sh $HOSTS $TICKS $SECS\`, $RUNS drains each way (alternating which goes first), medians; on $(nproc) cores."
  echo "Two fresh tansu brokers, one of them behind stunnel (Debian) terminating TLS 1.3; the TLS clients verify the server against the stack's test CA."
  echo
  echo "| | plaintext | TLS | TLS / plaintext |"
  echo "|---|---:|---:|---:|"
  awk -v pc="$p_cpu" -v tc="$t_cpu" -v pw="$p_wall" -v tw="$t_wall" -v am="$a_ms" -v tm="$t_ms" -v ar="$a_rss" -v tr="$t_rss" -v rows="$ROWS" 'BEGIN {
    printf "| ingester CPU-s per million rows (drain of %d rows) | %.3f | %.3f | %.2f |\n", rows, pc, tc, tc / pc
    printf "| ingester drain wall time, s | %.2f | %.2f | %.2f |\n", pw, tw, tw / pw
    printf "| agent CPU per collection, ms (1 s interval) | %.2f | %.2f | %.2f |\n", am, tm, tm / am
    printf "| agent RSS, MiB (mean) | %.1f | %.1f | %.2f |\n", ar, tr, tr / ar }'
  echo
  echo "Per-run drains (CPU-s per million rows, wall s): plaintext $(tr '\n' ';' <"$work/plain") TLS $(tr '\n' ';' <"$work/tls")"
  echo
  echo "$summary"
} >"$out"
cat "$out"
echo "results: $out"
echo "$summary"
