#!/usr/bin/env bash
# LLaMA-Factory on the benchmark's model and data, in its own environment (it pins transformers <= 5.6,
# peft 0.18, trl <= 0.24, accelerate <= 1.11, datasets <= 4.0: it cannot share vlmforge's process).
#
#   scripts/bench-llamafactory.sh                 # small config, the config's steps; prints the table
#   STEPS=10 CONFIG=small scripts/bench-llamafactory.sh
#   SETUP_ONLY=1 scripts/bench-llamafactory.sh    # only build .venv-llamafactory
#
# 1. .venv-llamafactory (gitignored): torch (the CPU build vlmforge is tested with) and
#    llamafactory 0.9.5 with its pinned libraries (torchaudio and torchvision left out: no builds that load with this torch;
#    image SFT does not need them; llamafactory_bench.py stubs the torchaudio import).
# 2. `vlmforge bench --export-data` writes the model folder, the data and settings.json (batch, LoRA,
#    learning rates, schedule, precision, and the rows vlmforge's steps train on, in order).
# 3. scripts/llamafactory_bench.py runs LLaMA-Factory's own SFT (`run_exp`: its template, its collator,
#    its trainer) on exactly those rows, times each optimizer step with its data loading, and counts
#    real and padded tokens from the batches its trainer receives.
# 4. `vlmforge bench --baseline trl` on the same settings, then one table with the three systems.
# The two processes do not alternate step by step: on a shared CPU compare them with care.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CONFIG=${CONFIG:-small}
OUT=${OUT:-bench-llamafactory}
LF_VENV=.venv-llamafactory
PYTHON=${PYTHON:-python3}

if [ ! -f "$LF_VENV/.installed" ]; then
  "$PYTHON" -m venv "$LF_VENV"
  "$LF_VENV/bin/python" -m pip install -q --upgrade pip
  "$LF_VENV/bin/python" -m pip install -q torch==2.13.0  # no torchvision: its PyPI build does not load with the CPU torch
  "$LF_VENV/bin/python" -m pip install -q --no-deps llamafactory==0.9.5
  # LLaMA-Factory 0.9.5's requirements, torchaudio and the web UI (gradio) left out
  "$LF_VENV/bin/python" -m pip install -q -c <(echo "torch==2.13.0") \
    "transformers>=4.55,<=5.6.0" "accelerate>=1.3,<=1.11.0" "datasets>=2.16,<=4.0.0" "peft>=0.18,<=0.18.1" \
    "trl>=0.18,<=0.24.0" "torchdata>=0.10,<=0.11.0" "tyro<0.9.0" einops fire omegaconf pandas protobuf pydantic \
    pyyaml safetensors scipy sentencepiece tiktoken matplotlib packaging numpy pillow "av>=10,<=16.0.0" fastapi uvicorn \
    sse-starlette modelscope
  touch "$LF_VENV/.installed"
fi
[ -n "${SETUP_ONLY:-}" ] && exit 0

steps=()
[ -n "${STEPS:-}" ] && steps=(--steps "$STEPS")
.venv/bin/vlmforge bench --config "$CONFIG" "${steps[@]}" --export-data "$OUT"
"$LF_VENV/bin/python" scripts/llamafactory_bench.py "$OUT"
.venv/bin/vlmforge bench --config "$CONFIG" "${steps[@]}" --baseline trl --no-generation --json "$OUT/vlmforge.json"
.venv/bin/python scripts/llamafactory_bench.py --table "$OUT"
