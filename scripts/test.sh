#!/usr/bin/env bash
# Set up, then run the whole test suite (unit + end-to-end on ../shared/data when present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian packages the tests use when present: ffmpeg (--video) and chromium (the browser tests
# of birdsep serve, driven by Playwright; Playwright's own browser download is never used).
missing=()
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (for the video and browser tests)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null 2>&1 \
    || echo "could not install ${missing[*]}: the tests that need them will be skipped"
fi
exec .venv/bin/python -m pytest "$@"
