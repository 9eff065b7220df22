#!/usr/bin/env bash
# Install what the web-page test (tests/test_web.py) needs: Debian's chromium, a Chinese font (the chat
# page is bilingual: without a CJK font Chinese answers render as boxes) and Playwright for Python.
# Playwright only drives the system browser (/usr/bin/chromium); `playwright install` (a download) is never run.
# Usage: bash scripts/install-browser.sh [path/to/python]   (default: .venv/bin/python, else python3)
set -euo pipefail

PYTHON="${1:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

packages=()
command -v chromium >/dev/null 2>&1 || packages+=(chromium fonts-dejavu-core)
# WenQuanYi Micro Hei: 1.6 MB, covers simplified and traditional Chinese (fonts-noto-cjk is 56 MB).
fc-list :lang=zh family 2>/dev/null | grep -q . || packages+=(fonts-wqy-microhei)
if [ "${#packages[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "installing with apt-get for the browser test: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

"$PYTHON" -c "import playwright" 2>/dev/null || {
  echo "installing Playwright for Python with pip (drives the system chromium)"
  "$PYTHON" -m pip install -q playwright
}
chromium --version
fc-list :lang=zh family | head -n 1
"$PYTHON" -c "import playwright; print('playwright for python ok')"
