#!/usr/bin/env bash
# Create .venv and install vlmforge with its test extras (idempotent; used by test.sh and demo.sh).
# torch is pinned first: a CPU build of 2.13.0 is what the project is tested with (a looser pin
# can pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.vlmforge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setting up .venv: pip installs torch==2.13.0 and vlmforge with its test extras (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  touch "$stamp"
fi
