# Sourced by the stack benchmarks: checks that the stack is up, loads its
# environment for one ClickHouse shard, and picks the build profile.
# BENCH_PROFILE=debug (CI's smoke runs) skips the release build: a smoke run
# checks that the benchmark runs, not its figures.
export PATH="$HOME/.cargo/bin:$PATH"
scripts/stack.sh status >/dev/null || { echo "start the stack first: scripts/stack.sh up" >&2; exit 1; }
eval "$(scripts/stack.sh env)"
# One shard (the first), named in the benchmarks' configs, and the broker.
CH=${SPILLWAY_INGESTER_CLICKHOUSE_URLS%%,*}
BROKERS=$SPILLWAY_INGESTER_KAFKA_BROKERS
# The binaries get configuration files: the stack's variables stay in the
# scripts, not in the binaries' environment (where they would win).
unset SPILLWAY_AGENT_KAFKA_BROKERS SPILLWAY_INGESTER_KAFKA_BROKERS \
  SPILLWAY_INGESTER_CLICKHOUSE_URLS SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER
export -n SPILLWAY_STACK_ZOOKEEPER_PORT
profile=${BENCH_PROFILE:-release}
flag=--release
if [ "$profile" = debug ]; then flag=; fi
# BENCH_CHECK=1: stop here, after the set-up every benchmark shares, so the
# test suite can check that each one starts in its default (release) mode
# without spending minutes on it.
if [ "${BENCH_CHECK:-0}" = 1 ]; then
  echo "bench: $(basename "$0") set-up ok (profile $profile)"
  exit 0
fi
