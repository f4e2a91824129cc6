#!/usr/bin/env bash
# Writes agent/link-order.txt: the functions of the agent's binary that a
# running agent executes (start-up, a minute of collections and publishing,
# a configuration reload, shutdown), which the agent's build script hands to
# the linker (lld's --symbol-ordering-file) so that they sit together at the
# start of .text.
#
# Why: the kernel maps a binary's code in 64 KiB around each page a process
# touches (fault-around), so code that runs once, scattered over a 7 MiB
# .text, kept 4 MiB of it resident; packed together the functions that run
# span 1.3 MiB (bench/agent-footprint.sh measures the agent's RSS). C code
# is built with a section per function (.cargo/config.toml), so librdkafka's
# functions are placed one by one too.
#
#   scripts/agent-link-order.sh [SECONDS]     (default 60)
#
# Needs the stack (scripts/stack.sh up) for the broker, and valgrind (Debian).
# The names are the release build's mangled symbols: they stay valid while
# Cargo.lock and the Rust toolchain do (the symbol hashes depend on them); a
# name that no longer exists is ignored by the linker, and
# bench/agent-footprint.sh reports how many of them the binary still has.
# Run it again after a toolchain or dependency update.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-60}
export PATH="$HOME/.cargo/bin:$PATH"
command -v valgrind >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
scripts/stack.sh status >/dev/null || { echo "start the stack first: scripts/stack.sh up" >&2; exit 1; }
eval "$(scripts/stack.sh env)"
cargo build --release -p spillway-agent --quiet
AGENT=$ROOT/target/release/spillway-agent
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/agent.toml" <<TOML
[agent]
interval = "1s"
host_id = "link-order"
[kafka]
brokers = "$SPILLWAY_AGENT_KAFKA_BROKERS"
topic = "link.order"
[buffer]
spool_dir = "$work/spool"
[http]
listen = "127.0.0.1:19466"
TOML
tansu topic create --broker "tcp://$SPILLWAY_AGENT_KAFKA_BROKERS" --partitions 1 link.order >/dev/null 2>&1 || true

# Under callgrind the agent runs some 50 times slower: SECONDS of wall time
# are still several collections, publications and /metrics scrapes.
valgrind --tool=callgrind --demangle=no --compress-strings=no --compress-pos=no \
  --callgrind-out-file="$work/callgrind.out" \
  "$AGENT" --config "$work/agent.toml" >"$work/agent.log" 2>&1 &
pid=$!
end=$((SECONDS + SECS))
reloaded=0
while [ $SECONDS -lt $end ]; do
  sleep 5
  curl -fsS 127.0.0.1:19466/metrics >/dev/null 2>&1 || true
  if [ $reloaded = 0 ] && [ $SECONDS -gt $((end - SECS / 2)) ]; then
    kill -HUP $pid; reloaded=1
  fi
done
kill -TERM $pid
wait $pid || true
pid=

python3 - "$work/callgrind.out" "$AGENT" >agent/link-order.txt <<'PY'
# callgrind's output names each object (ob=) and, within it, each function
# that ran (fn=); keep the functions of the agent's own binary.
import sys
out, binary = sys.argv[1], sys.argv[2]
names, current = set(), None
for line in open(out, errors="replace"):
    if line.startswith("ob="):
        current = line[3:].strip()
    elif line.startswith("fn=") and current == binary:
        name = line[3:].strip()
        if not name.startswith("0x"):
            names.add(name)
print("\n".join(sorted(names)))
PY
echo "agent/link-order.txt: $(wc -l <agent/link-order.txt) functions"
