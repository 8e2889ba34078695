#!/usr/bin/env bash
# The whole test suite (slow end-to-end tests included), as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
