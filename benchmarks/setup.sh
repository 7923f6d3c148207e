#!/usr/bin/env bash
# Everything the benchmark suite needs beyond sharedbox itself: Debian's
# redis-server (the suite starts and stops its own instance) and the pinned
# Python competitors.  Run inside the venv that has sharedbox installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server missing: sudo apt-get install redis-server (or Redis is skipped)" >&2
  fi
fi
python -m pip install -q -r benchmarks/requirements.txt
