#!/usr/bin/env bash
# Peers for the benchmarks. asteroid 0.7.0 pins torchaudio and an old torchmetrics, which would
# replace this project's PyTorch; its MixIT wrapper and TDConvNet need neither, so it is installed
# without its dependencies (plus the two small ones those modules import).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
quiet() { grep -v "is ignored" || true; }
.venv/bin/python -m pip install -q -e ".[bench]" 2>&1 | quiet
.venv/bin/python -m pip install -q --no-deps "asteroid==0.7.0" "asteroid-filterbanks>=0.4" 2>&1 | quiet
