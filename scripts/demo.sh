#!/usr/bin/env bash
# The main job on the embedded default: zero-shot vs CoOp vs RLP, base-to-new, on the micro world (no weights, no data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/rlptune demo "$@"
