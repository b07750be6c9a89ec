#!/usr/bin/env bash
# Install what the tests need and run the whole suite. The tests start their own Postgres (with
# pgvector), Redis, S3 server, API and worker processes on loopback; nothing else has to run.
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh dev
# The dashboard's browser tests drive the system's Chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null && [ -z "${IMAGEN_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "the browser tests need Chromium: install it (e.g. apt-get install chromium) or set IMAGEN_CHROMIUM" >&2
  fi
fi
export HF_HUB_OFFLINE=1
python -m pytest "$@"
