#!/usr/bin/env bash
# Create .venv (if needed) and install birdsep into it. PyTorch is pinned to the release this
# project is developed and tested with; pip takes it from a local wheel cache where one exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
quiet() { grep -v "is ignored" || true; }  # drop pip's notes about absent local indexes; keep its errors
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | quiet
.venv/bin/python -m pip install -q -e ".[train,classify,test,birdnet,serve,cluster]" 2>&1 | quiet
.venv/bin/python -c "import birdsep, torch; print('birdsep', birdsep.__version__, '| torch', torch.__version__)"
