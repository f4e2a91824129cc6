#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each with cargo-fuzz
# (libFuzzer), starting from the kept corpus in fuzz/corpus/<target> plus the
# seeds in fuzz/seeds/<target>. New interesting inputs are added to the
# corpus (commit them); a crash leaves its input in fuzz/artifacts/<target>/
# and fails the run: turn it into a regression test, then fix.
#
#   scripts/fuzz.sh [SECONDS]        # default 60; CI runs a smoke of 20
#
# cargo-fuzz needs nightly compiler flags; the machine's stable toolchain is
# allowed them with RUSTC_BOOTSTRAP=1 (no other toolchain can be fetched
# here). The address sanitizer is off (`-s none`): the code under test is safe
# Rust, and libFuzzer still finds panics, overflows (debug assertions are on),
# timeouts and memory blow-ups (-rss_limit_mb).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Built first, all targets at once, so that a build failure (a full disk, a
# compile error) is not reported as a crash.
if ! cargo fuzz build -s none --debug-assertions >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "the fuzz targets did not build (above); nothing was fuzzed" >&2
  exit 1
fi
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  echo "==> fuzz $target for ${SECONDS_EACH}s"
  rc=0
  cargo fuzz run -s none --debug-assertions "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=1048576 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)|panicked|Failing input|Test unit written" "$log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz $target failed (exit $rc); a crashing input, if any, is in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
