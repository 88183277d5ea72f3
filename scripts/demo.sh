#!/usr/bin/env bash
# Set up, then separate the bundled Jura forest recording with the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/birdsep separate src/birdsep/examples/jura_forest_dawn.flac -o separated --plot
ls -l separated/jura_forest_dawn
