"""`vlmforge bench`: training and inference speed, vlmforge side by side with TRL's SFTTrainer (or a naive loop).

    vlmforge bench --config small --json bench.json     # a 2-core CPU: under 5 minutes
    vlmforge bench --config small --breakdown           # + vlmforge with each speed lever off in turn
    vlmforge bench --config small --baseline naive      # the plain transformers + peft loop instead of TRL
    vlmforge bench --config tiny --steps 2              # seconds (what the tests run)
    vlmforge bench --config small --export-data DIR     # the model, data and settings for another trainer
    vlmforge bench --config 7b-lora                     # a CUDA GPU: SigLIP-so400m + Qwen2.5-7B shapes
    vlmforge bench --config small-idefics3 --json bench-idefics3.json   # small as Idefics3: 2x2 tiles + global view
    vlmforge bench --plan instruct-lora --config small-idefics3       # memory + image tokens per bench image
    vlmforge bench --plan instruct-lora --model my-vlm --gpu-gb 24    # memory estimate, batch advice; no run
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from vlmforge.bench.configs import CONFIGS  # the registries themselves (light imports: no torch)
from vlmforge.bench.runner import BASELINES
from vlmforge.config import option
from vlmforge.train.recipe import TrainSection
from vlmforge.utils.device import DEVICE_HELP

CONFIG_NAMES = tuple(CONFIGS)
PRECISIONS = typing.get_args(typing.get_type_hints(TrainSection)["precision"])  # train.precision's choices


@dataclass
class BenchCommandConfig:
    config: Literal[CONFIG_NAMES] = option("small", "model and data shapes")
    steps: int | None = option(None, "timed optimizer steps per side; unset: the config's", ge=1)
    json: str = option("", "also write the full report as JSON", metavar="OUT")
    baseline: Literal[BASELINES] | None = option(None, "what vlmforge is compared with: trl (TRL's SFTTrainer, the "
                                                 "`bench` extra) or naive (a plain transformers + peft loop); "
                                                 "unset: trl when installed, else naive")
    breakdown: bool = option(False, "also time vlmforge with each speed lever switched off in turn (a few minutes more)")
    generation: bool = option(True, "time generation too (--no-generation skips that phase)")
    export_data: str = option("", "only write the config's model folder, data and shared settings to DIR (for "
                                  "scripts/bench-llamafactory.sh); no measurement", metavar="DIR")
    device: str = option("", DEVICE_HELP)
    precision: Literal[PRECISIONS] = option("auto", "vlmforge side's precision (auto: bf16 autocast on a GPU, "
                                                    "or a CPU with AMX)")
    threads: int | None = option(None, "torch CPU threads; unset: torch's (1 on a CPU shared with other torch work)",
                                 ge=1)
    plan: str = option("", "only estimate RECIPE's GPU memory and recommend a batch size (no benchmark run)",
                       metavar="RECIPE")
    model: str = option("", "--plan: the model folder; empty: the recipe's model.path, else the shapes of --config",
                        flags=("--model", "--model.path"))
    gpu_gb: float = option(80.0, "--plan: GPU memory in GB", gt=0)
    seq_len: int | None = option(None, "--plan: tokens per sequence; unset: data.max_length", ge=1)
    work_dir: str = option("", "keep the data, models and runs here; empty: a temporary folder")


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments

    add_config_arguments(parser, BenchCommandConfig)


def config_from_args(args) -> BenchCommandConfig:
    from vlmforge.config import from_args

    return from_args(BenchCommandConfig, args)


def run(args) -> int:
    import json
    from pathlib import Path

    config = config_from_args(args)
    if config.plan:
        return _plan(config)
    if config.export_data:
        return _export(config)
    from vlmforge.bench.report import format_report
    from vlmforge.bench.runner import default_baseline, run_bench

    baseline = config.baseline or default_baseline()
    if not config.baseline and baseline == "naive":
        print("note: TRL is not installed (pip install -e '.[bench]'): comparing with the naive loop")
    report = run_bench(config.config, steps=config.steps, device=config.device, work_dir=config.work_dir or None,
                       precision=config.precision, threads=config.threads, baseline=baseline,
                       breakdown=config.breakdown, inference=config.generation, progress=_progress_bar)
    print(format_report(report))
    if config.json:
        Path(config.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {config.json}")
    return 0


def _progress_bar(phase: str, total: int):
    """One bar per phase, on stderr; it disappears when the phase is done."""
    from tqdm import tqdm

    return tqdm(total=total, desc=phase, unit="step", leave=False, dynamic_ncols=True)


def _export(config: BenchCommandConfig) -> int:
    from vlmforge.bench.runner import export_bench

    folder = export_bench(config.config, config.export_data, steps=config.steps, precision=config.precision)
    print(f"model, data and settings written to {folder} (settings: {folder / 'settings.json'})")
    return 0


def _plan(config: BenchCommandConfig) -> int:
    from vlmforge.bench.plan import format_plan, plan_recipe

    result, title = plan_recipe(config.plan, config.gpu_gb, config.model, config.config, config.seq_len)
    print(format_plan(result, title))
    return 0
