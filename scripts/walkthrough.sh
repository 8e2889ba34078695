#!/usr/bin/env bash
# The README's practitioner path on a folder of one's own, timed step by step (docs/WALKTHROUGH.md).
# Usage: bash scripts/walkthrough.sh [WORKDIR]   (default: a fresh temporary folder; nothing else is touched)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/rlptune-walk.XXXXXX")}
mkdir -p "$WORK" && cd "$WORK"
export RLPTUNE_CACHE=${RLPTUNE_CACHE:-$WORK/cache}
RLPTUNE=${RLPTUNE:-"$ROOT/.venv/bin/rlptune"}
PY=${PY:-"$ROOT/.venv/bin/python"}
step() {  # step NAME COMMAND...: run it, print its wall time
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$name.log" 2>&1 || { echo "walkthrough: step $name failed:"; tail -5 "$name.log"; exit 1; }
  printf '%-26s %7.1f s\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)"
}
# 5 classes x 20 images of one's own (the micro-v2 world renders them), plus one unreadable file to skip
step make-folder "$PY" - <<'PY'
from pathlib import Path
from PIL import Image
from rlptune.micro.v2 import suite
names = [name for name, _ in suite.micro2_spec("micro2-colors").classes][:5]
count = {}
for image, label in zip(*suite.render_split("micro2-colors", "train")):
    if label < 5 and count.get(label, 0) < 20:
        count[label] = count.get(label, 0) + 1
        (Path("pets") / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(Path("pets") / names[label] / f"{count[label]:03d}.png")
Path("new_images").mkdir(exist_ok=True)
for i, path in enumerate(sorted(Path("pets").rglob("*.png"))[::10]):
    (Path("new_images") / f"{i:02d}.png").write_bytes(path.read_bytes())
(Path("new_images") / "broken.png").write_bytes(b"not an image")
PY
step zeroshot "$RLPTUNE" zeroshot --dataset folder --data-root pets --json zeroshot.json
step train-default "$RLPTUNE" train --dataset folder --data-root pets -o runs/pets-rlp
step eval-recorded-data "$RLPTUNE" eval runs/pets-rlp/adapter --json eval.json
step predict-skip "$RLPTUNE" predict runs/pets-rlp/adapter new_images/ --top-k 2 --image-policy skip -o predictions.csv
step export-classifier "$RLPTUNE" export runs/pets-rlp/adapter --format classifier -o pets_classifier.safetensors
step save-pretrained "$PY" -c "import rlptune; rlptune.load_adapter('runs/pets-rlp/adapter').save_pretrained('shared-adapter')"
step train-auto "$RLPTUNE" train --dataset folder --data-root pets --auto -o runs/pets-auto
cmp runs/pets-rlp/adapter/training_config.yaml shared-adapter/training_config.yaml && echo "save_pretrained: training_config.yaml equals the run's"
grep -h "zero-shot\|top-1\|top1\|auto:" train-default.log train-auto.log eval-recorded-data.log | head -20
echo "walkthrough: outputs in $WORK"
