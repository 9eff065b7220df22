#!/usr/bin/env bash
# The GPU benchmark in one command (a CUDA machine; set up .venv first with scripts/setup.sh, which installs
# the `bench` extra: TRL):
#   scripts/bench-gpu.sh            # writes bench-7b-lora-{trl,naive}.json and bench-small-cuda.json, prints the tables
# 7b-lora: SigLIP-so400m + Qwen2.5-7B shapes, random bf16 weights built on the GPU (no download),
# batch 8, LoRA rank 64 — vlmforge's trainer against TRL's SFTTrainer (same bf16 weights, bf16 autocast,
# LoRA, learning rates, batch), then against the fp32 naive loop (reported as "out of memory" when it
# does not fit). Then the small config on the same GPU against TRL, with the per-lever breakdown.
# On a GPU the sides run one after the other (each alone in memory). Figures go to docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/vlmforge bench --config 7b-lora --device cuda --baseline trl --steps "${STEPS:-5}" --json bench-7b-lora-trl.json
.venv/bin/vlmforge bench --config 7b-lora --device cuda --baseline naive --steps "${STEPS:-5}" --no-generation \
  --json bench-7b-lora-naive.json
.venv/bin/vlmforge bench --config small --device cuda --baseline trl --breakdown --json bench-small-cuda.json
