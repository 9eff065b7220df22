"""The benchmark's model and data shapes: `tiny` (tests), `small` (a 2-core CPU), `7b-lora` (a GPU),
and the Idefics3 cases `tiny-idefics3` / `small-idefics3` (`vlmforge build --arch idefics3`).

The shapes are data, in configs.yaml beside this file. Every config is random weights built from
shapes, so nothing is downloaded. `small` is the one the performance target is about: a
~1M-parameter SigLIP-shaped tower and a ~22M-parameter Qwen2-shaped LLM (6 layers of width 384, a
Llama-sized 32K vocabulary), LLaVA-like variable-length conversations, batch 8. `small-idefics3`
is the same tower, LLM and conversations composed as Idefics3: each image is read as tiles of
`tile_size` pixels + a global view, each tile's s x s patches merged into one token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlmforge.errors import ConfigError
from vlmforge.model.idefics3 import MAX_GRID, PIXEL_SHUFFLE_SCALES  # the build's own limits (no torch import)

ARCHS = ("llava", "idefics3")  # `vlmforge build --arch`

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
    # the family `vlmforge build --arch` makes; the three below are its idefics3 flags (unset for llava)
    arch: Literal[ARCHS] = "llava"
    pixel_shuffle: int | None = None  # idefics3: s x s patches become one token; unset: 2, as `vlmforge build`
    tile_size: int | None = None  # idefics3: tile side in pixels; unset: the tower's image size
    longest_edge: int | None = None  # idefics3: images resized to this longest side, then tiled; unset: 2 x tile

    def __post_init__(self):
        if self.arch == "llava":
            for key in ("pixel_shuffle", "tile_size", "longest_edge"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{self.name}.{key} is an idefics3 setting; set {self.name}.arch: idefics3 "
                                      "or leave it out")
            return
        self._check_tiles()

    def _check_tiles(self) -> None:
        """The combinations `vlmforge build --arch idefics3` refuses, refused when the table is read."""
        scale, tile, patch = self.shuffle, self.tile, self.vision.patch_size
        if self.needs_cuda:  # models.instantiate_large scales a Llava stand-in up on the GPU
            raise ConfigError(f"{self.name}: a needs_cuda config is built on the GPU as Llava; use arch: llava")
        if scale not in PIXEL_SHUFFLE_SCALES:
            raise ConfigError(f"{self.name}.pixel_shuffle must be one of {', '.join(map(str, PIXEL_SHUFFLE_SCALES))}, "
                              f"got {scale}")
        if tile <= 0 or tile % (patch * scale):
            raise ConfigError(f"{self.name}.tile_size {tile} must be a multiple of patch size x pixel shuffle "
                              f"= {patch} x {scale}")
        if not tile <= self.data_image_size <= MAX_GRID * tile:
            raise ConfigError(f"{self.name}.longest_edge {self.data_image_size} must be between one tile ({tile}) "
                              f"and {MAX_GRID} tiles ({MAX_GRID * tile})")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def dataset_size(self) -> int:
        """Records written: at least one full length group of the trainer's sampler (50 global batches), as a
        real dataset gives it; each side trains on the samples of vlmforge's first `steps` global batches."""
        return self.global_batch * max(self.steps, DATASET_BATCHES)

    @property
    def shuffle(self) -> int:
        """Idefics3's pixel-shuffle scale (1 for llava: every patch is a token)."""
        return 1 if self.arch == "llava" else self.pixel_shuffle or 2

    @property
    def tile(self) -> int:
        """The side of the square the tower reads: one tile (idefics3), the whole image (llava)."""
        return self.tile_size or self.vision.image_size

    @property
    def data_image_size(self) -> int:
        """The side of the bench's square images: the tower's size (llava), the longest edge (idefics3),
        so an Idefics3 image is split into (longest_edge / tile)² tiles + a global view."""
        if self.arch == "llava":
            return self.vision.image_size
        return self.longest_edge or 2 * self.tile

    def build_options(self) -> dict:
        """The `BuildConfig` fields (`vlmforge build` flags) of this config's family."""
        if self.arch == "llava":
            return {"arch": "llava"}
        return {"arch": "idefics3", "pixel_shuffle": self.shuffle, "tile_size": self.tile,
                "longest_edge": self.data_image_size}


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
