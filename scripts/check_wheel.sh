#!/usr/bin/env bash
# The built wheel, installed outside the source tree, loads every shipped backbone and runs the quick demo.
# Tests run from the source tree and cannot see a file the wheel leaves out (package-data); this can.
# Dependencies come from .venv (a path line in the fresh venv), rlptune itself only from the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rlptune-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null
python3 -m venv "$WORK/venv"
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
DEPS=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$DEPS" > "$SITE/rlptune-deps-from-dev-venv.pth"   # a plain path line: the editable finder there is not loaded
"$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-index "$WORK"/dist/rlptune-*.whl
cd "$WORK"
"$WORK/venv/bin/python" - "$ROOT" <<'PY'
import subprocess, sys
from pathlib import Path
import rlptune
root = Path(sys.argv[1])
installed = Path(rlptune.__file__).resolve().parent
assert root not in installed.parents, f"rlptune was imported from the source tree: {installed}"
# every file git tracks in the package, other than Python sources, must be in the wheel
tracked = subprocess.run(["git", "-C", str(root), "ls-files", "src/rlptune"], capture_output=True, text=True, check=True)
data = [Path(p).relative_to("src/rlptune") for p in tracked.stdout.split() if not p.endswith(".py")]
missing = [str(p) for p in data if not (installed / p).is_file()]
assert not missing, f"the wheel lacks package files: {missing}"
from rlptune.backbones import load_backbone
for spec in ("micro", "micro-v2"):
    backbone = load_backbone(spec)
    print(f"wheel: loaded {spec} ({backbone.identity if hasattr(backbone, 'identity') else 'ok'})")
print(f"wheel: {len(data)} package files present, rlptune {rlptune.__version__} from {installed}")
PY
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} RLPTUNE_CACHE="$WORK/cache" "$WORK/venv/bin/rlptune" demo --quick -o "$WORK/demo" --jobs 1 >"$WORK/demo.log" 2>&1 \
  || { tail -20 "$WORK/demo.log"; echo "wheel: rlptune demo --quick failed from the installed wheel" >&2; exit 1; }
test -s "$WORK/demo/report/report.html" || test -n "$(ls "$WORK/demo")"
echo "wheel: rlptune demo --quick ran from the installed wheel ($(ls "$WORK/demo" | wc -l) outputs)"
