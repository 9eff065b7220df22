#!/usr/bin/env bash
# The test command: set up .venv (first run), then the fast suite and the slow end-to-end tests (both
# always run; the exit status is non-zero when either failed).
#   scripts/test.sh            # everything
#   scripts/test.sh -k chat    # extra arguments go to pytest (both suites)
# The browser test (tests/test_web.py) needs Debian's chromium, a Chinese font and Playwright: run as
# root, this installs them first (scripts/install-browser.sh: apt-get and pip) and says so; otherwise
# that test is skipped, with a note saying how to install them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

browser_ready() {
  command -v chromium >/dev/null 2>&1 && fc-list :lang=zh family 2>/dev/null | grep -q . \
    && .venv/bin/python -c "import playwright" 2>/dev/null
}
if ! browser_ready; then
  if [ "$(id -u)" = 0 ]; then
    echo "== the browser test needs chromium, a Chinese font and Playwright: installing them (scripts/install-browser.sh)"
    scripts/install-browser.sh || echo "warning: the installation failed; the browser test will be skipped"
  else
    echo "== note: the browser test (tests/test_web.py) will be skipped: it needs chromium, a Chinese font and"
    echo "   Playwright, which scripts/install-browser.sh installs (apt-get through sudo, pip into .venv)"
  fi
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== fast tests"
fast=0
.venv/bin/python -m pytest -m "not slow" -q "$@" || fast=$?
echo "== slow end-to-end tests"
slow=0
.venv/bin/python -m pytest -m slow -q "$@" || slow=$?

# pytest exits 5 when -k leaves a suite with no test selected: that is not a failure.
verdict() { case "$1" in 0) echo "passed" ;; 5) echo "no test selected" ;; *) echo "FAILED (pytest exit $1)" ;; esac; }
echo "== fast tests: $(verdict "$fast"); slow end-to-end tests: $(verdict "$slow")"
for status in "$fast" "$slow"; do
  if [ "$status" != 0 ] && [ "$status" != 5 ]; then exit "$status"; fi
done
if [ "$fast" = 5 ] && [ "$slow" = 5 ]; then exit 5; fi
