#!/usr/bin/env bash
# Set up, then run the whole test suite (unit + end-to-end on ../shared/data when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v ffmpeg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ffmpeg (for the --video tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg) >/dev/null 2>&1 \
    || echo "could not install ffmpeg: video tests will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
