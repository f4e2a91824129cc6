#!/usr/bin/env bash
# Dashboard panels at 1 hour, 1 day, 7 days and 90 days: p50 latency and rows
# read per panel, on ClickHouse 26.9 (chdb, modern profile) and 18.16 (the
# stack, legacy profile), for three dashboards side by side on the same data:
#   - pre-v2: the dashboard before storage v2, on the layout before it (raw
#     rows and the 1-minute tier only, so at the 1-hour range alone);
#   - union: storage v2's first dashboard, a UNION ALL of the three tiers;
#   - one tier: today's, one table per panel, chosen by range variables.
# Data: HOSTS simulated hosts (`loadgen --values host`) for one hour at
# 10 s, loaded raw (the tiers filled by their views), then the 1-minute tier
# extended to 3 days and the 1-hour tier to DAYS days by copies of that
# hour's aggregate rows shifted back in time.
#
#   bench/dashboard.sh [HOSTS] [DAYS]      (default 20 90; CI smoke: 2 8)
#
# Needs the stack (scripts/stack.sh up) and chdb-core (pip). Results:
# bench/results/DATE-dashboard.md. Last line:
#   dashboard: one tier / pre-v2 at 1 h, worst panel X.XX (modern), Y.YY (legacy)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HOSTS=${1:-20}
DAYS=${2:-90}
RUNS=${BENCH_RUNS:-7}

# shellcheck source=bench/lib.sh
source bench/lib.sh
python3 -c 'import chdb, lz4' 2>/dev/null || python3 -m pip install --quiet 'chdb-core==26.9.0' 'lz4>=4'
cargo build $flag --quiet -p spillway-ingester --bins
cargo build $flag --quiet -p spillway-e2e --example storage_rows
INGESTER=$ROOT/target/$profile/spillway-ingester
ROWS=$ROOT/target/$profile/examples/storage_rows
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$ROWS" fleet "$HOSTS" 360 "$work/fleet.rec"
out=${BENCH_RESULTS:-bench/results}/$(date +%F)-dashboard.md
mkdir -p "$(dirname "$out")"
python3 bench/dashboard.py --ingester "$INGESTER" --rows "$ROWS" --legacy-url "$CH" \
  --fleet "$work/fleet.rec" --days "$DAYS" --runs "$RUNS" --out "$work/tables.md" | tee "$work/log"
{
  echo "# Dashboard panels by range: pre-v2, union and one tier ($(date +%F))"
  echo
  echo "\`bench/dashboard.sh $HOSTS $DAYS\`, $RUNS runs per panel (p50, interleaved), on $(nproc) cores."
  echo "Data: $HOSTS simulated hosts for 1 hour at 10 s (raw, and the tiers through their views); the"
  echo "1-minute tier extended to 3 days and the 1-hour tier to $DAYS days by shifted copies of that hour."
  echo "Rows read: ClickHouse's own count (X-ClickHouse-Summary on 26.9, system.query_log on 18.16)."
  echo "Variables: the one-tier dashboard's hidden variables, resolved once per range change."
  cat "$work/tables.md"
  echo
  tail -1 "$work/log"
} >"$out"
echo "results: $out"
tail -1 "$work/log"
