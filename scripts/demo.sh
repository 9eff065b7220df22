#!/usr/bin/env bash
# The demo command: set up .venv (first run), then `vlmforge demo` in the current folder (extra
# arguments are passed on: scripts/demo.sh --fast). It stays in your folder, so the commands it
# prints at the end (.venv/bin/vlmforge chat demo-out/model --image ...) work as printed there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
"$repo/scripts/setup.sh"
export HF_HUB_OFFLINE=1
exec "$repo/.venv/bin/vlmforge" demo "$@"
