#!/usr/bin/env bash
# Create (or reuse) .venv with the pinned torch and rlptune installed in editable mode, with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
fi
if ! .venv/bin/python -c "import rlptune, pytest, hypothesis, ruff, peft, fastapi, uvicorn, jinja2, sklearn, transformers, huggingface_hub, ray, submitit, websockets, tensorboard" 2>/dev/null || [ pyproject.toml -nt .venv/.rlptune-installed ]; then
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,lora,serve,report,tensorboard,probe,hf,ray,slurm]"
  touch .venv/.rlptune-installed
fi
