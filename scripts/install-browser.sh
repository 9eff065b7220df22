#!/usr/bin/env bash
# Install what the web-page test (tests/test_web.py) needs: Debian's chromium and Playwright for Python.
# Playwright only drives the system browser (/usr/bin/chromium); `playwright install` (a download) is never run.
# Usage: bash scripts/install-browser.sh [path/to/python]   (default: .venv/bin/python, else python3)
set -euo pipefail

PYTHON="${1:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi

"$PYTHON" -m pip install -q playwright
chromium --version
"$PYTHON" -c "import playwright; print('playwright for python ok')"
