"""`vlmforge bench --plan`: what a recipe needs in GPU memory, and the batch size that fits.

    vlmforge bench --plan instruct-lora --model.path my-vlm --gpu-gb 24
    vlmforge bench --plan instruct-lora --config 7b-lora --gpu-gb 80      # shapes of a bench config

An estimate from shapes, for bf16 training on a GPU as vlmforge does it (frozen parts in bf16,
trainable weights, their gradients and AdamW state in fp32, SDPA / flash attention so no T²
attention matrix is kept), per micro-batch of `batch` sequences of `seq_len` tokens:

- weights: every parameter once (2 bytes frozen, 4 trainable) + 12 bytes per trainable parameter
  (gradient, AdamW's two moments);
- activations kept for the backward, per token and decoder layer: the two RMSNorm inputs in fp32
  (8·h), the inputs of the attention and MLP projections, q, k, v and the attention output
  (2·(2h + 2q + 3kv)), the MLP's gate, up, activation and product (2·4·i), and each LoRA layer's
  rank-r intermediate; with gradient checkpointing only each layer's input (2·h) plus one layer's
  full set during its recomputation;
- the loss: bf16 logits, their fp32 copy and gradient on the trained positions (`trained_fraction`);
- a fixed 1.5 GB for the CUDA context and allocator slack.
The frozen vision tower runs without autograd, so it keeps nothing. Measured peaks are typically
within ±20 % of such estimates; leave headroom.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmforge.bench.flops import ModelShape
from vlmforge.bench.models import describe_image_tokens

GIB = 2**30
CONTEXT_BYTES = 1.5 * GIB


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float  # bytes
    optimizer: float  # fp32 gradients + AdamW moments of the trainable weights
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.activations + self.logits + CONTEXT_BYTES


def parameter_counts(shape: ModelShape, tied_embeddings: bool, vision: str, projector: str, llm: str) -> tuple[int, int]:
    """(total, trainable) parameters; LoRA adds its adapters to both."""
    embeddings = shape.vocab * shape.hidden * (1 if tied_embeddings else 2)
    vision_params = shape.vision_layer_params + shape.patch_embed_params
    llm_params = shape.llm_linear_params + embeddings
    lora = shape.lora_params if llm == "lora" else 0
    total = vision_params + shape.projector_params + llm_params + lora
    trainable = ((vision_params if vision == "full" else 0) + (shape.projector_params if projector == "full" else 0)
                 + (llm_params if llm == "full" else lora))
    return total, trainable


def activation_bytes_per_token(shape: ModelShape, llm: str, checkpointing: bool) -> float:
    """Bytes kept per token across all decoder layers until the backward."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    lora = 2 * shape.lora_rank * len(shape.lora_targets) if llm == "lora" else 0
    per_layer = 8 * h + 2 * (2 * h + 2 * q + 3 * kv) + 2 * 4 * i + lora
    if checkpointing:
        return shape.layers * 2 * h + per_layer
    return shape.layers * per_layer


def estimate(shape: ModelShape, parts: tuple[str, str, str], batch: int, seq_len: int, checkpointing: bool,
             tied_embeddings: bool = False, trained_fraction: float = 0.5) -> MemoryEstimate:
    """Memory of one training step with micro-batch `batch` × `seq_len` tokens; `parts` = (vision, projector, llm)."""
    total, trainable = parameter_counts(shape, tied_embeddings, *parts)
    tokens = batch * seq_len
    activations = tokens * activation_bytes_per_token(shape, parts[2], checkpointing)
    logits = tokens * trained_fraction * shape.vocab * (2 + 4 + 4)
    return MemoryEstimate(weights=2 * (total - trainable) + 4 * trainable, optimizer=12 * trainable,
                          activations=activations, logits=logits)


def plan(shape: ModelShape, parts: tuple[str, str, str], seq_len: int, gpu_gb: float, tied_embeddings: bool = False,
         batches=(1, 2, 4, 8, 16, 32)) -> dict:
    """Estimates per micro-batch size, with and without checkpointing, and the recommendation for `gpu_gb`."""
    usable = 0.92 * gpu_gb * GIB
    rows = []
    for batch in batches:
        plain = estimate(shape, parts, batch, seq_len, False, tied_embeddings)
        checkpointed = estimate(shape, parts, batch, seq_len, True, tied_embeddings)
        rows.append({"batch": batch, "gb": plain.total / GIB, "gb_checkpointing": checkpointed.total / GIB,
                     "fits": plain.total <= usable, "fits_checkpointing": checkpointed.total <= usable})
    fitting = [row["batch"] for row in rows if row["fits"]]
    fitting_checkpointed = [row["batch"] for row in rows if row["fits_checkpointing"]]
    if fitting:
        advice = f"micro-batch {fitting[-1]} without gradient checkpointing"
    elif fitting_checkpointed:
        advice = f"micro-batch {fitting_checkpointed[-1]} with gradient checkpointing (train.gradient_checkpointing: true)"
    else:
        advice = f"does not fit in {gpu_gb:g} GB even at micro-batch 1 with checkpointing: a larger GPU, or shorter sequences"
    base = estimate(shape, parts, 1, seq_len, True, tied_embeddings)
    return {"gpu_gb": gpu_gb, "seq_len": seq_len, "weights_gb": base.weights / GIB, "optimizer_gb": base.optimizer / GIB,
            "rows": rows, "advice": advice}


def format_plan(result: dict, title: str) -> str:
    lines = [title, f"weights {result['weights_gb']:.1f} GB, gradients + AdamW {result['optimizer_gb']:.2f} GB; "
             f"sequences of {result['seq_len']} tokens; a {result['gpu_gb']:g} GB GPU",
             f"{'micro-batch':>11}  {'GB':>8}  {'GB (checkpointing)':>18}"]
    for row in result["rows"]:
        mark = lambda fits: " " if fits else "✗"  # noqa: E731
        lines.append(f"{row['batch']:>11}  {row['gb']:>7.1f}{mark(row['fits'])}  "
                     f"{row['gb_checkpointing']:>17.1f}{mark(row['fits_checkpointing'])}")
    if result.get("image_tokens"):
        lines.append(f"images: {result['image_tokens']}")
    if result.get("bench_images"):
        lines.append(f"the bench's images: {describe_image_tokens(result['bench_images'])}")
    lines.append(f"recommended: {result['advice']}  (estimate; ✗ = over 92 % of the GPU)")
    return "\n".join(lines)


def bench_config_shape(config, lora_rank: int, lora_targets=()) -> ModelShape:
    """The `ModelShape` of a bench config (`configs.CONFIGS`), from the Llava config of its shapes (no weights)."""
    from vlmforge.bench.models import bench_vlm_config

    return ModelShape.from_llava_config(bench_vlm_config(config), lora_rank, lora_targets)


def plan_recipe(recipe_name: str, gpu_gb: float, model_path: str = "", bench_config: str = "small",
                seq_len: int | None = None) -> tuple[dict, str]:
    """(plan, title) for a shipped recipe or YAML: shapes from `model_path` (or the recipe's model.path)
    config.json, or else from the bench config `bench_config`."""
    from vlmforge.bench.configs import get_config
    from vlmforge.errors import ConfigError
    from vlmforge.train.recipe import load_recipe

    if gpu_gb <= 0:
        raise ConfigError(f"--gpu-gb must be > 0, got {gpu_gb}")
    recipe = load_recipe(recipe_name)
    targets = recipe.lora.target_modules  # empty: every linear of the language model, as training does
    path = model_path or recipe.model.path
    if path:
        config = _read_llava_config(path)
        shape = ModelShape.from_llava_config(config, recipe.lora.rank, targets)
        tied, source = bool(getattr(config.text_config, "tie_word_embeddings", False)), path
    else:
        bench = get_config(bench_config)
        shape = bench_config_shape(bench, recipe.lora.rank, targets)
        tied, source = bench_config.startswith("tiny"), f"bench config {bench_config}"
    parts = (recipe.trainable.vision, recipe.trainable.projector, recipe.trainable.llm)
    result = plan(shape, parts, seq_len or recipe.data.max_length, gpu_gb, tied)
    if path:
        result["image_tokens"] = _image_tokens(path, config)
    else:
        result.update(_bench_image_tokens(bench, shape))
    title = f"memory plan: recipe {recipe_name} on {source} (vision {parts[0]}, projector {parts[1]}, llm {parts[2]}" \
            + (f", LoRA rank {recipe.lora.rank})" if parts[2] == "lora" else ")")
    return result, title


def _image_tokens(path: str, config) -> str:
    """How many tokens an image becomes, from the folder's configs (Llava or Idefics3)."""
    import json
    from pathlib import Path

    from vlmforge.model.idefics3 import image_token_summary

    preprocessor = Path(path) / "preprocessor_config.json"
    try:
        settings = json.loads(preprocessor.read_text(encoding="utf-8")) if preprocessor.is_file() else None
    except (OSError, ValueError):
        settings = None
    return image_token_summary(config, settings if isinstance(settings, dict) else None)


def _bench_image_tokens(bench, shape: ModelShape) -> dict:
    """The `image_tokens` line of a bench config; for Idefics3, whose count depends on the image's size, also
    `bench_images`: what the bench's own images become, asked of the processor its model folder gets."""
    from vlmforge.bench.models import bench_processor, bench_vlm_config, image_token_counts
    from vlmforge.model.idefics3 import image_token_summary

    if bench.arch == "llava":
        return {"image_tokens": f"{shape.patches} image tokens per image (llava: every image alike)"}
    size = bench.data_image_size
    return {"image_tokens": image_token_summary(bench_vlm_config(bench), {"size": {"longest_edge": size}}),
            "bench_images": image_token_counts(bench_processor(bench), size)}


def _read_llava_config(path: str):
    """The config.json of a VLM folder (no weights loaded); `ModelError` when it is not a Llava-style model."""
    from transformers import AutoConfig

    from vlmforge.errors import ModelError

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read a model config at {path}: {error}") from None
    if not hasattr(config, "vision_config") or not hasattr(config, "text_config"):
        raise ModelError(f"{path} is a '{config.model_type}' model, not a vision-language (Llava) model")
    return config
