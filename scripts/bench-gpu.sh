#!/usr/bin/env bash
# The GPU benchmark in one command (a CUDA machine; set up .venv first with scripts/setup.sh):
#   scripts/bench-gpu.sh            # writes bench-7b-lora.json and bench-small-cuda.json, prints both tables
# 7b-lora: SigLIP-so400m + Qwen2.5-7B shapes, random bf16 weights built on the GPU (no download),
# batch 8, LoRA rank 64 — vlmforge's trainer against the fp32 naive baseline (reported as "out of
# memory" when it does not fit). Then the small config on the same GPU. Figures go to docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/vlmforge bench --config 7b-lora --device cuda --steps "${STEPS:-5}" --json bench-7b-lora.json
.venv/bin/vlmforge bench --config small --device cuda --json bench-small-cuda.json
