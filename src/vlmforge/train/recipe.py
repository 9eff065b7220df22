"""The training recipe: nested typed dataclasses, loaded from YAML with dotted CLI overrides.

    vlmforge train instruct-lora --model.path my-vlm --data.paths a.jsonl b.jsonl --train.lr.projector 1e-4

Every field is a CLI flag; unknown keys are errors; the resolved recipe is saved in every run
and checkpoint (`recipe.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlmforge.config import ConfigError, load_yaml, option

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class ModelSection:
    path: str = option("", "model folder made by `vlmforge build` (or a previous stage's export)")
    attn_implementation: str = option("sdpa", "attention kernel: sdpa, eager, flash_attention_2")


@dataclass
class DataSection:
    paths: list[str] = option(help="JSONL files in the vlmforge record format", factory=list)
    weights: list[float] = option(help="mixing weight per file (times seen per epoch); default 1 each", factory=list)
    image_roots: list[str] = option(help="folders relative image paths are joined to", factory=list)
    max_length: int = option(2048, "longest sequence in tokens, image tokens included")
    too_long: Literal["drop", "truncate"] = option("drop", "drop a too-long record, or truncate text after its last image")
    max_bad_fraction: float = option(0.01, "stop the run when more than this fraction of samples is bad")
    group_by_length: bool = option(True, "batch records of similar length together (less padding)")
    num_workers: int = option(0, "DataLoader worker processes (image decoding)")


@dataclass
class TrainableSection:
    vision: Literal["frozen", "full"] = option("frozen", "vision tower: frozen or full")
    projector: Literal["full", "frozen"] = option("full", "projector: full or frozen")
    llm: Literal["frozen", "lora", "full"] = option("lora", "language model: frozen, lora or full")


@dataclass
class LoraSection:
    rank: int = option(64, "LoRA rank")
    alpha: float = option(128.0, "LoRA alpha (scale = alpha / rank)")
    dropout: float = option(0.0, "LoRA dropout (costs ~16% on CPU; 0.05 is common on GPU)")
    target_modules: list[str] = option(help="LLM module names to adapt; default: every linear layer of the LLM", factory=list)


@dataclass
class LearningRates:
    projector: float = option(1e-4, "learning rate of the projector (starts untrained: larger)")
    llm: float = option(3e-5, "learning rate of the LLM (LoRA or full)")
    vision: float = option(1e-5, "learning rate of the vision tower when it is trained")


@dataclass
class TrainSection:
    output_dir: str = option("runs/vlm", "run folder: checkpoints, metrics.jsonl, curves.png, final model")
    max_steps: int = option(1000, "optimizer steps")
    batch_size: int = option(8, "samples per device per micro-step")
    grad_accum: int = option(1, "micro-steps per optimizer step")
    lr: LearningRates = option(help="learning rates per part", factory=LearningRates)
    warmup_ratio: float = option(0.03, "fraction of steps of linear warm-up")
    min_lr_ratio: float = option(0.0, "cosine decays to this fraction of the peak")
    weight_decay: float = option(0.0, "AdamW weight decay (matrices only, never biases or norms)")
    max_grad_norm: float = option(1.0, "gradient clipping; 0 disables")
    precision: Literal["auto", "bf16", "fp32"] = option("auto", "bf16 autocast where the hardware has it")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory (~40% slower)")
    compile: bool = option(False, "torch.compile the model (slow first step; helps bf16)")
    save_steps: int = option(500, "checkpoint every N steps (and at the end)")
    save_total_limit: int = option(2, "keep the newest K checkpoints")
    log_steps: int = option(10, "log every N steps")
    seed: int = option(0, "seed for initialisation, data order and dropout")
    nonfinite: Literal["skip", "stop"] = option("stop", "on a NaN/inf loss: skip the step or stop the run")
    tensorboard: bool = option(False, "also log to TensorBoard (needs the tensorboard package)")
    export: bool = option(True, "at the end, write a merged transformers model to OUTPUT_DIR/final")
    device: str = option("", "cpu, cuda, ...; default: the accelerator when present")


@dataclass
class EvalSection:
    data: str = option("", "held-out JSONL evaluated during training (empty: no evaluation)")
    every: int = option(0, "evaluate every N steps (0: only at the end)")
    max_samples: int = option(200, "records evaluated each time")
    max_new_tokens: int = option(64, "answer length during evaluation")
    batch_size: int = option(16, "generation batch size")


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
    """Checks that types alone cannot express; raises `ConfigError` with the key's name."""
    train = recipe.train
    for key in ("max_steps", "batch_size", "grad_accum", "save_steps", "log_steps", "save_total_limit"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(train, key)}")
    if not 0 <= train.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {train.warmup_ratio}")
    if recipe.trainable.llm == "lora" and recipe.lora.rank < 1:
        raise ConfigError(f"lora.rank must be >= 1, got {recipe.lora.rank}")
    if need_data and not recipe.data.paths:
        raise ConfigError("data.paths is empty: give one or more JSONL files (--data.paths a.jsonl b.jsonl)")
    if need_data and not recipe.model.path:
        raise ConfigError("model.path is empty: give a folder made by `vlmforge build` (--model.path my-vlm)")
    if recipe.data.weights and len(recipe.data.weights) != len(recipe.data.paths):
        raise ConfigError(f"data.weights has {len(recipe.data.weights)} value(s) for {len(recipe.data.paths)} file(s)")
    parts = recipe.trainable
    if parts.vision == "frozen" and parts.projector == "frozen" and parts.llm == "frozen":
        raise ConfigError("nothing to train: trainable.vision, .projector and .llm are all frozen")
