#!/usr/bin/env bash
# Install what the tests need and run the whole suite. The tests start their own Postgres (with
# pgvector), Redis, S3 server, API and worker processes on loopback; nothing else has to run.
#   bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh dev
export HF_HUB_OFFLINE=1
python -m pytest "$@"
