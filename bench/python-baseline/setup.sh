#!/usr/bin/env bash
# Creates (once) the virtualenv of the Python baseline in .bench-venv at the
# repository root and prints its python. Needs python3 with venv and PyPI.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$ROOT/.bench-venv
req=$ROOT/bench/python-baseline/requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  cp "$req" "$venv/requirements.txt"
fi
echo "$venv/bin/python"
