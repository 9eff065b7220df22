#!/usr/bin/env bash
# The test command: set up .venv (first run), then the fast suite, then the slow end-to-end tests.
#   scripts/test.sh            # everything
#   scripts/test.sh -k chat    # extra arguments go to pytest (both steps)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -x scripts/install-browser.sh ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  scripts/install-browser.sh || echo "warning: could not install chromium; the browser test will be skipped"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== fast tests"
.venv/bin/python -m pytest -m "not slow" -q "$@"
echo "== slow end-to-end tests"
.venv/bin/python -m pytest -m slow -q "$@" || status=$?
# pytest exits 5 when -k leaves no slow test selected: that is not a failure.
if [ "${status:-0}" != 0 ] && [ "${status:-0}" != 5 ]; then exit "$status"; fi
