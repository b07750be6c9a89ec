# Sourced by scripts/demo.sh and scripts/test.sh: a .venv with the project and the extras named in $1.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
python_bin=${PYTHON:-python3}
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "imagen-queue needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned torch pulls the newest build (several GB with CUDA) where a
# CPU build of 2.13.0 is at hand; any torch >= 2.2 works.
python -m pip install -q --disable-pip-version-check "torch==2.13.0" || python -m pip install -q torch
python -m pip install -q --disable-pip-version-check -e ".[${1:-embedded}]"
