#!/usr/bin/env bash
# The demo command: set up .venv (first run), then `vlmforge demo` (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/vlmforge demo "$@"
