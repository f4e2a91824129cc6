#!/usr/bin/env bash
# Codec: encode and decode throughput of the wire format (MessagePack maps
# with field names) against JSON and rmp-serde's compact (array) encoding of
# the same real agent record, and their sizes before and after lz4/zstd.
# The harness is shared/benches/codec.rs (criterion).
#
#   bench/codec.sh            # full run (~1 min), writes bench/results/DATE-codec.md
#   bench/codec.sh --smoke    # each benchmark once (CI: it runs, no figures)
#
# Needs no stack.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ "${1:-}" = --smoke ]; then
  exec cargo bench --quiet -p spillway-shared --bench codec -- --test
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo bench --quiet -p spillway-shared --bench codec -- --output-format bencher | tee "$work/out"

python3 - "$work/out" <<'PY' | tee "$work/summary.md"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
sizes = [l for l in lines if l.startswith("|") or l.startswith("record:")]
samples = int(re.search(r"record: (\d+) samples", "\n".join(sizes)).group(1))
ns = {}
for l in lines:
    m = re.match(r"test (\S+) +\.\.\. bench: +([\d,]+) ns/iter", l)
    if m:
        ns[m.group(1)] = int(m.group(2).replace(",", ""))
print("\n".join(sizes))
print()
print("| benchmark | ns per record | samples/s | vs the wire format |")
print("|---|---|---|---|")
for op in ("encode", "decode"):
    base = ns[f"{op}/msgpack_map"]
    for form in ("msgpack_map", "msgpack_compact", "json"):
        t = ns[f"{op}/{form}"]
        print(f"| {op} {form} | {t:,} | {samples / t * 1e9:,.0f} | {base / t:.2f}x |")
PY

out=${BENCH_RESULTS:-bench/results}/$(date +%F)-codec.md
{
  echo "# Codec, $(date +%F)"
  echo
  echo "Machine: $(nproc) CPUs, $(uname -sr); revision $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'); \`cargo bench\` (release)."
  echo "Command: \`bench/codec.sh\`. \"vs the wire format\" is its time divided by the other's: above 1 the other is faster."
  echo
  cat "$work/summary.md"
} >"$out"
echo "==> wrote $out"
