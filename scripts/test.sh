#!/usr/bin/env bash
# The whole test suite: format, lints, docs, unit and component tests, and the
# end-to-end tests against a real broker and real ClickHouse servers.
#
# By default it brings up the native stack (scripts/stack.sh) and takes it down
# again if it started it. To test against other servers, export
# SPILLWAY_INGESTER_KAFKA_BROKERS and SPILLWAY_INGESTER_CLICKHOUSE_URLS (shards
# separated by commas) first: the stack is then not started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

if ! python3 -c 'import msgpack' 2>/dev/null; then
  step "pip install msgpack (for the interop test)"
  python3 -m pip install --quiet msgpack
fi
# Modern ClickHouse in process: chdb-core (ClickHouse 26.9), behind
# ClickHouse's HTTP interface on loopback (tests/chdb/server.py).
if ! python3 -c 'import chdb, lz4' 2>/dev/null; then
  step "pip install chdb-core lz4 (modern ClickHouse for the test suite)"
  python3 -m pip install --quiet 'chdb-core==26.9.0' 'lz4>=4'
fi

# The Kubernetes manifests' schemas: the API's (kubernetes-validate) and
# KEDA's CRD as generated models (cloudcoil-models-keda).
if ! python3 -c 'import kubernetes_validate, cloudcoil.models.keda' 2>/dev/null; then
  step "pip install kubernetes-validate cloudcoil-models-keda (validates deploy/kubernetes offline)"
  python3 -m pip install --quiet 'kubernetes-validate==1.37.0' 'cloudcoil-models-keda==2.16.1.0'
fi

started_stack=0
if [ -n "${SPILLWAY_INGESTER_KAFKA_BROKERS:-}" ] && [ -n "${SPILLWAY_INGESTER_CLICKHOUSE_URLS:-}" ]; then
  step "using the servers in the environment: $SPILLWAY_INGESTER_KAFKA_BROKERS, $SPILLWAY_INGESTER_CLICKHOUSE_URLS"
else
  if ! scripts/stack.sh status >/dev/null 2>&1; then
    started_stack=1
  fi
  step "scripts/stack.sh up"
  scripts/stack.sh up >/dev/null
  eval "$(scripts/stack.sh env)"
fi
cleanup() {
  if [ "$started_stack" = 1 ]; then
    step "scripts/stack.sh down"
    scripts/stack.sh down || true
  fi
}
trap cleanup EXIT

if ! command -v docker-compose >/dev/null 2>&1; then
  step "apt-get install docker-compose (validates docker-compose.yml offline; no engine needed)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
if ! command -v stunnel >/dev/null 2>&1; then
  step "apt-get install stunnel4 (terminates TLS in front of the test broker: tests/tests/secure.rs)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >/dev/null
fi
if ! command -v rpm >/dev/null 2>&1; then
  step "apt-get install rpm (inspects the .rpm packages: tests/tests/packages.rs)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null
fi
step "packaging tools: cargo-deb, cargo-generate-rpm (pinned; built once, about 6 minutes)"
scripts/package.sh install

step "tansu with libsql (the SASL tests' broker; built once, about 10 minutes)"
scripts/stack.sh install-sasl-broker
export SPILLWAY_TANSU_SASL_BIN=${SPILLWAY_TANSU_SASL_BIN:-$HOME/.cargo/tansu-libsql/bin/tansu}

step "docker-compose config -q (the compose file is valid)"
docker-compose -f docker-compose.yml config -q

step "Grafana dashboards against @grafana/schema 12.2.1 (tests/grafana-schema: tsc over the dashboard JSON)"
(cd tests/grafana-schema && npm ci --no-audit --no-fund --silent)
node tests/grafana-schema/check.mjs

step "Kubernetes manifests against the API's and KEDA's schemas (tests/kubernetes/validate.py; each check shown failing on a broken copy)"
python3 tests/kubernetes/validate.py --self-test

step "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path fuzz/Cargo.toml --check

step "fuzz/Cargo.lock is current (the fuzz workspace builds with the locked versions)"
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

step "cargo deny (licences, banned crates, sources; advisories when their database is reachable)"
command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
cargo deny --locked check licenses bans sources
adv_log=$(mktemp)
if cargo deny --locked check advisories >"$adv_log" 2>&1; then
  echo "advisories ok"
elif grep -q "failed to fetch advisory database" "$adv_log"; then
  # These machines reach only the package registries, not the RustSec
  # database's git host: say so rather than pass in silence.
  echo "ADVISORIES NOT CHECKED: the RustSec database cannot be fetched from this machine"
else
  cat "$adv_log"
  exit 1
fi
rm -f "$adv_log"

step "import cycles and layers between modules (scripts/module-cycles.py)"
python3 scripts/module-cycles.py \
  --layers "ingester/src=tls,precision;config;sink;telemetry;pipeline,otlp;tools" \
  shared/src agent/src ingester/src tests/src

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "cargo build --bins (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked

step "cargo test (unit, component and end-to-end)"
# The chaos run's faults come from a seed. The suite pins one (260,000 of
# 260,000 rows land, no member restart needed), so that a red run means a
# change broke something; set SPILLWAY_CHAOS_SEED to replay another. Some
# seeds leave tansu's group coordinator stuck: the run then ends with a
# verdict that tells rows lost from rows not yet ingested, and blames the
# broker or the ingester (bench/chaos.sh runs many seeds; its results are
# in bench/results/).
export SPILLWAY_CHAOS_SEED=${SPILLWAY_CHAOS_SEED:-68444223765874364}
cargo test --workspace --locked -- --include-ignored

step "second Kafka implementation (librdkafka's mock cluster, which returns commit metadata): the kill -9 and rebalance-while-ClickHouse-down scenarios"
cargo build -p spillway-e2e --examples --locked
mock_log=$(mktemp)
target/debug/examples/mock_broker >"$mock_log" 2>&1 &
mock_pid=$!
for _ in $(seq 1 50); do
  grep -q '^bootstrap' "$mock_log" && break
  kill -0 "$mock_pid" 2>/dev/null || { cat "$mock_log"; exit 1; }
  sleep 0.2
done
read -r _ mock_bootstrap _ mock_control <"$mock_log"
echo "mock cluster at $mock_bootstrap (control $mock_control)"
if ! SPILLWAY_INGESTER_KAFKA_BROKERS=$mock_bootstrap SPILLWAY_KAFKA_CONTROL=$mock_control \
    cargo test -p spillway-e2e --locked --test crashes -- --include-ignored killed a_rebalance; then
  kill "$mock_pid" 2>/dev/null || true
  exit 1
fi
kill "$mock_pid" 2>/dev/null || true
wait "$mock_pid" 2>/dev/null || true
rm -f "$mock_log"

step "modern ClickHouse (chdb-core, ClickHouse 26.9): the modern profile, every documented query, panel and alert rule, the upgrade, exactly-once after kill -9"
# Starts tests/chdb/server.py with "$@" in a fresh $chdb_dir; sets chdb_pid
# and chdb_url.
start_chdb() {
  chdb_dir=$(mktemp -d)
  python3 tests/chdb/server.py --data "$chdb_dir" "$@" >"$chdb_dir/server.log" 2>&1 &
  chdb_pid=$!
  for _ in $(seq 1 100); do
    grep -q '^listening on' "$chdb_dir/server.log" 2>/dev/null && break
    kill -0 "$chdb_pid" 2>/dev/null || { cat "$chdb_dir/server.log"; exit 1; }
    sleep 0.2
  done
  chdb_url="http://$(sed -n 's/^listening on \([0-9.:]*\).*/\1/p' "$chdb_dir/server.log")"
}
stop_chdb() { kill "$chdb_pid" 2>/dev/null || true; wait "$chdb_pid" 2>/dev/null || true; rm -rf "$chdb_dir"; }
start_chdb --cluster spillway --tls-dir "${SPILLWAY_STACK_TLS_DIR:-$ROOT/.stack/tls}"
chdb_https="https://$(sed -n 's/^https on \([0-9.:]*\).*/\1/p' "$chdb_dir/server.log")"
echo "$(head -1 "$chdb_dir/server.log")"
if ! SPILLWAY_INGESTER_CLICKHOUSE_URLS=$chdb_url SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER=spillway \
    cargo test -p spillway-e2e --locked --test analytics --test alerts --test storage -- --include-ignored; then
  tail -20 "$chdb_dir/server.log"
  stop_chdb
  exit 1
fi
# HTTPS with a required client certificate on the modern profile.
if ! SPILLWAY_INGESTER_CLICKHOUSE_URLS=$chdb_url SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER=spillway \
    SPILLWAY_STACK_CLICKHOUSE_HTTPS_URLS=$chdb_https \
    cargo test -p spillway-e2e --locked --test secure -- --include-ignored clickhouse_over_https; then
  tail -20 "$chdb_dir/server.log"
  stop_chdb
  exit 1
fi
# Exactly-once on the modern profile (insert deduplication tokens, views
# deduplicated too): the kill -9 scenarios assert 0 duplicates there as well;
# a column type changed under the ingester pauses it there too.
if ! SPILLWAY_INGESTER_CLICKHOUSE_URLS=$chdb_url SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER=spillway \
    cargo test -p spillway-e2e --locked --test crashes --test schema_drift -- --include-ignored killed a_column_type; then
  tail -20 "$chdb_dir/server.log"
  stop_chdb
  exit 1
fi
stop_chdb
# The modern profile's replicated tables: chdb with the stack's ZooKeeper
# and the replica macros. chdb creates them but never activates a replica
# (they stay read-only), so there the DDL is checked, not inserts.
start_chdb --keeper "127.0.0.1:${SPILLWAY_STACK_ZOOKEEPER_PORT:-12181}" --macros "chdb-$$-$RANDOM/r1"
if ! SPILLWAY_INGESTER_CLICKHOUSE_URLS=$chdb_url SPILLWAY_INGESTER_CLICKHOUSE_CLUSTER= \
    cargo test -p spillway-e2e --locked --test replicas -- --include-ignored every_table_an_insert_reaches; then
  tail -20 "$chdb_dir/server.log"
  stop_chdb
  exit 1
fi
stop_chdb

step "fuzz smoke run (every target for 20 s from the kept corpus; a crash fails)"
scripts/fuzz.sh 20

step "benchmark set-up in each one's default (release) mode"
for b in bench/ingest-drain.sh bench/freshness.sh bench/agent-footprint.sh bench/storage.sh bench/dashboard.sh bench/tls-cost.sh bench/ingester-profile.sh bench/chaos.sh; do
  BENCH_CHECK=1 BENCH_PROFILE= "$b"
done

step "benchmark smoke runs (they must run; their figures are not checked)"
# Results of smoke runs go to a scratch directory, never over bench/results.
BENCH_RESULTS=$(mktemp -d)
export BENCH_RESULTS BENCH_PROFILE=debug BENCH_RUNS=1
bench/ingest-drain.sh 20000 100
bench/freshness.sh 50 6 2s
bench/agent-footprint.sh 5
bench/codec.sh --smoke
bench/storage.sh 2 30
bench/dashboard.sh 2 8
bench/tls-cost.sh 50 4 5
rm -rf "$BENCH_RESULTS"
