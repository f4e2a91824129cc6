# Sourced by the stack benchmarks: checks that the stack is up, loads its
# environment for one ClickHouse shard, and picks the build profile.
# BENCH_PROFILE=debug (CI's smoke runs) skips the release build: a smoke run
# checks that the benchmark runs, not its figures.
export PATH="$HOME/.cargo/bin:$PATH"
scripts/stack.sh status >/dev/null || { echo "start the stack first: scripts/stack.sh up" >&2; exit 1; }
eval "$(scripts/stack.sh env)"
# One shard, named in the benchmarks' configs.
unset SPILLWAY_CLICKHOUSE_URLS SPILLWAY_CLICKHOUSE_CLUSTER
CH=${SPILLWAY_CLICKHOUSE_URL:-http://127.0.0.1:18123}
# The binaries get configuration files: the stack's variables stay in the
# scripts, not in the binaries' environment (where they are old names).
export -n SPILLWAY_KAFKA_BROKERS SPILLWAY_CLICKHOUSE_URL SPILLWAY_CLICKHOUSE_USER \
  SPILLWAY_CLICKHOUSE_PASSWORD SPILLWAY_STACK_ZOOKEEPER_PORT
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
