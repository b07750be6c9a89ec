#!/usr/bin/env bash
# Quick start: install, start the embedded system (`imagen-queue up`), run one generate job end to end
# through the HTTP API and a Celery worker, and print the paths of its images, one per cascade stage.
# Without a GPU (and without IMAGEN_MODEL_PRESET) it runs the `toy` preset: 32 and 128 px images of
# one coloured shape, e.g. "a red circle on the left" or "a green triangle at the bottom".
#   bash scripts/demo.sh ["a prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh embedded

export IMAGEN_DATA_DIR=${IMAGEN_DATA_DIR:-$PWD/data}
mkdir -p "$IMAGEN_DATA_DIR"
port=${PORT:-$(python -c 'from cli.services import free_port; print(free_port())')}
imagen-queue up --port "$port" >"$IMAGEN_DATA_DIR/up.log" 2>&1 &
up_pid=$!
trap 'kill "$up_pid" 2>/dev/null; wait "$up_pid" 2>/dev/null || true' EXIT

echo "starting imagen-queue (embedded Postgres, Redis, API, worker, beat) on port $port ..." >&2
for _ in $(seq 1 180); do
  grep -q "imagen-queue is up" "$IMAGEN_DATA_DIR/up.log" 2>/dev/null && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$IMAGEN_DATA_DIR/up.log" >&2; exit 1; }
  sleep 1
done
grep -q "imagen-queue is up" "$IMAGEN_DATA_DIR/up.log" || { cat "$IMAGEN_DATA_DIR/up.log" >&2; exit 1; }
grep -E "imagen-queue is up|model preset|admin API key" "$IMAGEN_DATA_DIR/up.log" >&2

imagen-queue generate "${1:-a blue square at the top}" --seed 42 --api-url "http://127.0.0.1:$port" --out out
echo "the demo stops the system as it exits; to keep one running and try the API (README, \"Using the API\"):" >&2
echo "  source .venv/bin/activate && IMAGEN_DATA_DIR=$IMAGEN_DATA_DIR imagen-queue up" >&2
