"""The benchmark's model and data shapes: `tiny` (tests), `small` (a 2-core CPU), `7b-lora` (a GPU).

Every config is random weights built from shapes, so nothing is downloaded. `small` is the one the
performance target is about: a ~1M-parameter SigLIP-shaped tower and a ~22M-parameter Qwen2-shaped
LLM (6 layers of width 384, a Llama-sized 32K vocabulary), LLaVA-like variable-length conversations, batch 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


CONFIGS: dict[str, BenchConfig] = {
    "tiny": BenchConfig(
        name="tiny",
        vision=VisionShape(image_size=32, patch_size=8, hidden_size=32, layers=2, heads=4, intermediate_size=64),
        llm=LanguageShape(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, vocab_size=512),
        batch_size=4, grad_accum=1, steps=2, lora_rank=4, lora_alpha=8.0, text_scale=0.15, max_length=1024,
        gemm_size=256, max_new_tokens=4, note="seconds; for tests",
    ),
    "small": BenchConfig(
        name="small",
        vision=VisionShape(image_size=224, patch_size=16, hidden_size=128, layers=4, heads=4, intermediate_size=512),
        llm=LanguageShape(hidden_size=384, layers=6, heads=6, kv_heads=2, intermediate_size=1024, vocab_size=32000),
        # 3 timed steps: with TRL's ~55 CPU-s steps the default run fits in ~5 minutes on 2 cores (docs/performance.md)
        batch_size=8, grad_accum=1, steps=3, lora_rank=16, lora_alpha=32.0, text_scale=1.0, max_length=2048,
        gemm_size=2048, max_new_tokens=32, note="vision ~0.9M, LLM ~22M parameters (32K vocabulary); a 2-core CPU",
    ),
    "7b-lora": BenchConfig(
        name="7b-lora",
        # SigLIP-so400m-patch14-384 and Qwen2.5-7B shapes.
        vision=VisionShape(image_size=384, patch_size=14, hidden_size=1152, layers=27, heads=16, intermediate_size=4304),
        llm=LanguageShape(hidden_size=3584, layers=28, heads=28, kv_heads=4, intermediate_size=18944, vocab_size=152064),
        batch_size=8, grad_accum=1, steps=10, lora_rank=64, lora_alpha=128.0, text_scale=1.0, max_length=4096,
        gemm_size=8192, max_new_tokens=64, needs_cuda=True, note="SigLIP-so400m + Qwen2.5-7B shapes; a CUDA GPU",
    ),
}


def get_config(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise ConfigError(f"unknown bench config '{name}' (choose from {', '.join(CONFIGS)})")
    return CONFIGS[name]
