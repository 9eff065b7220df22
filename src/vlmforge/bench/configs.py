"""The benchmark's model and data shapes: `tiny` (tests), `small` (a 2-core CPU), `7b-lora` (a GPU).

The shapes are data, in configs.yaml beside this file. Every config is random weights built from
shapes, so nothing is downloaded. `small` is the one the performance target is about: a
~1M-parameter SigLIP-shaped tower and a ~22M-parameter Qwen2-shaped LLM (6 layers of width 384, a
Llama-sized 32K vocabulary), LLaVA-like variable-length conversations, batch 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmforge.errors import ConfigError

DATASET_BATCHES = 50  # = LengthGroupedSampler's default group_batches


@dataclass(frozen=True)
class VisionShape:
    image_size: int
    patch_size: int
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int


@dataclass(frozen=True)
class LanguageShape:
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark setting: model shapes, LoRA, batch, data size and lengths, GEMM and generation sizes."""

    name: str
    vision: VisionShape
    llm: LanguageShape
    batch_size: int  # samples per micro-step
    grad_accum: int
    steps: int  # timed optimizer steps (one epoch of the synthetic data)
    lora_rank: int
    lora_alpha: float
    text_scale: float  # multiplies the synthetic answer lengths
    max_length: int
    gemm_size: int
    max_new_tokens: int
    generation_batches: tuple[int, ...] = (1, 8)
    needs_cuda: bool = False
    note: str = field(default="", compare=False)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def dataset_size(self) -> int:
        """Records written: at least one full length group of the trainer's sampler (50 global batches), as a
        real dataset gives it; each side trains on the samples of vlmforge's first `steps` global batches."""
        return self.global_batch * max(self.steps, DATASET_BATCHES)

    @property
    def image_tokens(self) -> int:
        return (self.vision.image_size // self.vision.patch_size) ** 2


TABLE = Path(__file__).with_name("configs.yaml")


def load_configs(path: str | Path = TABLE) -> dict[str, BenchConfig]:
    """The shapes of configs.yaml by name, each entry read by `config.from_dict` (strict: unknown keys, wrong types)."""
    import yaml

    from vlmforge.config import from_dict

    table = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return {name: from_dict(BenchConfig, {"name": name, **entry}, name) for name, entry in table.items()}


CONFIGS: dict[str, BenchConfig] = load_configs()


def get_config(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise ConfigError(f"unknown bench config '{name}' (choose from {', '.join(CONFIGS)})")
    return CONFIGS[name]
