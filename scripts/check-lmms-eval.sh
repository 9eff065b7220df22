#!/usr/bin/env bash
# Check that lmms-eval (the standard VLM evaluation harness) evaluates folders written by vlmforge, offline.
#
#   scripts/check-lmms-eval.sh            # build the lmms-eval env once, then run both checks (~3 min on 2 cores)
#   scripts/check-lmms-eval.sh --install  # only build the env (.venv-lmms)
#
# lmms-eval brings its own dependency set, so it lives in its own environment (.venv-lmms, gitignored).
# A tiny SigLIP + Qwen2 model comes from vlmforge's .venv through scripts/engines/make_reference.py (the
# engine check's builder). The task is scripts/engines/lmms_task (four questions about drawn shapes, a
# local JSON file, nothing from the Hub). lmms-eval runs it twice: its `llava_hf` model type on the
# folder, and its `openai_compatible` model type against `vlmforge serve` on the same folder;
# scripts/engines/lmms_compare.py then checks that both wrote results for every question and gave the
# same answers. The tiny model's score is meaningless (random weights); what is checked is the path.
# lmms-eval exits 0 even when a run fails, so success is judged from the files it writes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/engines/wait-for-health.sh
PYTHON=${PYTHON:-python3}
LMMS_SPEC=${LMMS_SPEC:-lmms-eval[video-legacy]==0.7.3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
ENV=.venv-lmms
WORK=${LMMS_CHECK_DIR:-runs/lmms-check}
PORT=${LMMS_CHECK_PORT:-8766}
TASKS=scripts/engines/lmms_task

install_lmms() {
  [ -x "$ENV/bin/python" ] || "$PYTHON" -m venv "$ENV"
  [ -f "$ENV/.installed" ] && return
  echo "installing $LMMS_SPEC into $ENV (once)"
  local index=()  # CPU torch first, so lmms-eval does not pull the multi-GB CUDA build
  curl -sf --max-time 10 -o /dev/null "$TORCH_INDEX/" && index=(--extra-index-url "$TORCH_INDEX")
  "$ENV/bin/python" -m pip install -q "${index[@]}" "$TORCH_SPEC"
  # video-legacy brings decord, which the llava_hf model type imports at start-up even for images;
  # filelock 4 dropped filelock._api, which lmms-eval 0.7.3's evaluator imports
  "$ENV/bin/python" -m pip install -q "${index[@]}" "$TORCH_SPEC" "$LMMS_SPEC" "filelock<4"
  "$ENV/bin/python" scripts/engines/repair_torch_extras.py  # PyPI's torchvision next to the CPU torch
  touch "$ENV/.installed"
}

run_lmms() {  # $1 = name of the run, then the --model and --model_args values
  echo "lmms-eval --model $2 --model_args $3"
  rm -rf "${WORK:?}/results-$1"
  nice -n 19 "$ENV/bin/python" -m lmms_eval --model "$2" --model_args "$3" --tasks vlmforge_shapes \
    --include_path "$TASKS" --batch_size 1 --output_path "$WORK/results-$1" --log_samples >"$WORK/$1.log" 2>&1 \
    || { echo "FAIL lmms-eval $1; last lines of $WORK/$1.log:"; tail -5 "$WORK/$1.log"; }
}

serve_and_run() {  # the openai_compatible run against `vlmforge serve`
  nice -n 19 .venv/bin/vlmforge serve "$WORK/siglip/model" --host 127.0.0.1 --port "$PORT" \
    --served-model-name vlmforge-tiny --dtype float32 >"$WORK/serve.log" 2>&1 &
  local server=$!
  if wait_for_health "$server" "$PORT" 120 1 "vlmforge serve" "$WORK/serve.log"; then
    run_lmms openai openai_compatible \
      "model_version=vlmforge-tiny,base_url=http://127.0.0.1:$PORT/v1,api_key=EMPTY,num_concurrent=1"
  fi
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

install_lmms
[ "${1:-}" = "--install" ] && exit 0
[ -x .venv/bin/python ] || scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_HOME="$PWD/$WORK/hf-home"
echo "versions: vlmforge env transformers $(.venv/bin/python -c 'import transformers; print(transformers.__version__)')," \
     "lmms env $("$ENV/bin/python" -c 'import importlib.metadata as m; print("lmms-eval", m.version("lmms-eval"), "transformers", m.version("transformers"), "torch", m.version("torch"))')"
rm -rf "${WORK:?}/siglip"
mkdir -p "$WORK"
.venv/bin/python scripts/engines/make_reference.py "$WORK/siglip" siglip
run_lmms llava_hf llava_hf "pretrained=$WORK/siglip/model,device=cpu,device_map=cpu,dtype=float32"
serve_and_run
status=0
"$ENV/bin/python" scripts/engines/lmms_compare.py "$WORK/results-llava_hf" "$WORK/results-openai" || status=1
if [ "$status" = 0 ]; then echo "lmms-eval checks passed"; else echo "lmms-eval checks FAILED"; fi
exit "$status"
