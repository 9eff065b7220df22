"""The training recipe: nested typed dataclasses, loaded from YAML with dotted CLI overrides.

    vlmforge train instruct-lora --model.path my-vlm --data.paths a.jsonl b.jsonl --train.lr.projector 1e-4

Every field is a CLI flag; unknown keys are errors; the resolved recipe is saved in every run
and checkpoint (`recipe.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlmforge.config import ConfigError, check_config, load_yaml, option

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelSection:
    path: str = option("", "model folder made by `vlmforge build` (or a previous stage's export)")
    attn_implementation: str = option("sdpa", "attention kernel: sdpa, eager, flash_attention_2")


@dataclass
class DataSection:
    paths: list[str] = option(help="JSONL files in the vlmforge record format", factory=list)
    weights: list[float] = option(help="mixing weight per file (times seen per epoch); default 1 each", factory=list, ge=0)
    image_roots: list[str] = option(help="folders relative image paths are joined to", factory=list)
    max_length: int = option(2048, "longest sequence in tokens, image tokens included", ge=1)
    too_long: Literal["drop", "truncate"] = option("drop", "drop a too-long record, or truncate text after its last image")
    max_bad_fraction: float = option(0.01, "stop the run when more than this fraction of samples is bad", ge=0, le=1)
    group_by_length: bool = option(True, "batch records of similar length together (less padding)")
    num_workers: int = option(0, "DataLoader worker processes (image decoding)", ge=0)


@dataclass
class TrainableSection:
    vision: Literal["frozen", "full"] = option("frozen", "vision tower: frozen or full")
    projector: Literal["full", "frozen"] = option("full", "projector: full or frozen")
    llm: Literal["frozen", "lora", "full"] = option("lora", "language model: frozen, lora or full")


@dataclass
class LoraSection:
    rank: int = option(64, "LoRA rank", ge=1)
    alpha: float = option(128.0, "LoRA alpha (scale = alpha / rank)", gt=0)
    dropout: float = option(0.0, "LoRA dropout (costs ~16% on CPU; 0.05 is common on GPU)", ge=0, lt=1)
    target_modules: list[str] = option(help="LLM module names to adapt; default: every linear layer of the LLM", factory=list)


@dataclass
class LearningRates:
    projector: float = option(1e-4, "learning rate of the projector (starts untrained: larger)", ge=0)
    llm: float = option(3e-5, "learning rate of the LLM (LoRA or full)", ge=0)
    vision: float = option(1e-5, "learning rate of the vision tower when it is trained", ge=0)


@dataclass
class TrainSection:
    output_dir: str = option("runs/vlm", "run folder: checkpoints, metrics.jsonl, curves.png, final model")
    max_steps: int = option(1000, "optimizer steps", ge=1)
    batch_size: int = option(8, "samples per device per micro-step", ge=1)
    grad_accum: int = option(1, "micro-steps per optimizer step", ge=1)
    lr: LearningRates = option(help="learning rates per part", factory=LearningRates)
    warmup_ratio: float = option(0.03, "fraction of steps of linear warm-up", ge=0, lt=1)
    min_lr_ratio: float = option(0.0, "cosine decays to this fraction of the peak", ge=0, le=1)
    weight_decay: float = option(0.0, "AdamW weight decay (matrices only, never biases or norms)", ge=0)
    max_grad_norm: float = option(1.0, "gradient clipping; 0 disables", ge=0)
    precision: Literal["auto", "bf16", "fp32"] = option("auto", "bf16 autocast where the hardware has it")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory (~40% slower)")
    compile: bool = option(False, "torch.compile the model (slow first step; helps bf16)")
    save_steps: int = option(500, "checkpoint every N steps (and at the end)", ge=1)
    save_total_limit: int = option(2, "keep the newest K checkpoints", ge=1)
    log_steps: int = option(10, "log every N steps", ge=1)
    seed: int = option(0, "seed for initialisation, data order and dropout", ge=0, le=2**63 - 1)
    nonfinite: Literal["skip", "stop"] = option("stop", "on a NaN/inf loss: skip the step or stop the run")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")
    export: bool = option(True, "at the end, write a merged transformers model to OUTPUT_DIR/final")
    device: str = option("", "cpu, cuda, ...; default: the accelerator when present")
    strategy: Literal["auto", "fsdp"] = option("auto", "auto: what the launcher set up (one process, DDP under "
                                               "torchrun); fsdp: FSDP2 sharding under torchrun (docs/training.md)")


@dataclass
class EvalSection:
    data: str = option("", "held-out JSONL evaluated during training (empty: no evaluation)")
    every: int = option(0, "evaluate every N steps (0: only at the end)", ge=0)
    max_samples: int = option(200, "records evaluated each time", ge=1)
    max_new_tokens: int = option(64, "answer length during evaluation", ge=1)
    batch_size: int = option(16, "generation batch size", ge=1)


@dataclass
class Recipe:
    model: ModelSection = option(help="", factory=ModelSection)
    data: DataSection = option(help="", factory=DataSection)
    trainable: TrainableSection = option(help="", factory=TrainableSection)
    lora: LoraSection = option(help="", factory=LoraSection)
    train: TrainSection = option(help="", factory=TrainSection)
    eval: EvalSection = option(help="", factory=EvalSection)


def shipped_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe's name or a YAML path → the file."""
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if path.exists():
        return path
    raise ConfigError(f"no recipe '{name_or_path}': not a file, nor one of {', '.join(shipped)}")


def load_recipe(name_or_path: str) -> Recipe:
    return load_yaml(Recipe, recipe_path(name_or_path))


def validate_recipe(recipe: Recipe, need_data: bool = True) -> None:
    """Checks between fields (one field's range is its `option(ge=..., ...)`, checked when the recipe is
    read); raises `ConfigError` naming the key."""
    check_config(recipe)
    check_device(recipe.train.device, "train.device")
    if need_data and not recipe.data.paths:
        raise ConfigError("data.paths is empty: give one or more JSONL files (--data.paths a.jsonl b.jsonl)")
    if need_data and not recipe.model.path:
        raise ConfigError("model.path is empty: give a folder made by `vlmforge build` (--model.path my-vlm)")
    if recipe.data.weights and len(recipe.data.weights) != len(recipe.data.paths):
        raise ConfigError(f"data.weights has {len(recipe.data.weights)} value(s) for {len(recipe.data.paths)} file(s)")
    if recipe.data.weights and not any(recipe.data.weights):
        raise ConfigError("data.weights are all 0: no sample would ever be drawn")
    parts = recipe.trainable
    if parts.vision == "frozen" and parts.projector == "frozen" and parts.llm == "frozen":
        raise ConfigError("nothing to train: trainable.vision, .projector and .llm are all frozen")


def check_device(device: str, key: str) -> None:
    """An explicit device must exist here: `cuda` without a GPU would otherwise train on the CPU unasked."""
    if not device:
        return
    import torch

    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{key}: {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if chosen.type == "cpu":
        return
    backend = getattr(torch, chosen.type, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available:
        raise ConfigError(f"{key} is {device!r} but torch sees no {chosen.type} device here; "
                          f"use --{key} cpu (or leave it empty to use an accelerator when present)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if chosen.index is not None and chosen.index >= count:
        raise ConfigError(f"{key} is {device!r} but there are only {count} {chosen.type} device(s)")
