"""The benchmark's models: random weights of a `BenchConfig`'s shapes, no download.

`tiny` and `small` are built the way a user builds a VLM (vision folder + LLM folder → `build_vlm`
→ a model folder the trainer loads); the idefics3 configs the same way, with the `--arch idefics3`
options of their config (`BenchConfig.build_options`), so the bench times the model `vlmforge build`
makes. `7b-lora` is too big to write and read back within a GPU
session: its folder holds a tiny stand-in (for the tokenizer and the processor), and the full-size
model is instantiated from the scaled-up config directly in bf16 on the GPU (or on the `meta`
device, to count FLOPs and memory without allocating anything).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlmforge.bench.configs import BenchConfig

log = logging.getLogger(__name__)


def build_model_folder(config: BenchConfig, out_dir: str | Path, seed: int = 0) -> Path:
    """Random vision + LLM parts of `config`'s shapes, joined by `build_vlm`; returns the saved VLM folder."""
    from vlmforge.model.build import save_vlm

    out_dir = Path(out_dir)
    model, processor = _build(config, out_dir / "parts", seed, stand_in=config.needs_cuda)
    return save_vlm(model, processor, out_dir / "model")


def bench_processor(config: BenchConfig):
    """The processor of `config`'s model folder without making its weights: `build_vlm` on a stand-in of the same
    image geometry and tokenizer (a tiny tower and LLM; the bench's LLMs all share `make_tiny_llm`'s tokenizer)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vlmforge-bench-") as folder:
        return _build(config, Path(folder), seed=0, stand_in=True)[1]


def _build(config: BenchConfig, parts_dir: Path, seed: int, stand_in: bool):
    """(model, processor) from parts written to `parts_dir`: `config`'s shapes, or (`stand_in`) a tiny tower and
    LLM of the same image geometry and vocabulary (see `instantiate_large`); built as `config.build_options()` say."""
    from vlmforge.model.build import BuildConfig, build_vlm
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision

    vision, llm = config.vision, config.llm
    if stand_in:
        vision_dir = make_tiny_vision(parts_dir / "vision", "siglip", vision.image_size, vision.patch_size, seed=seed)
        llm_dir = make_tiny_llm(parts_dir / "llm", "qwen2", seed=seed)
    else:
        vision_dir = make_tiny_vision(parts_dir / "vision", "siglip", vision.image_size, vision.patch_size,
                                      vision.hidden_size, vision.layers, seed=seed, num_attention_heads=vision.heads,
                                      intermediate_size=vision.intermediate_size)
        llm_dir = make_tiny_llm(parts_dir / "llm", "qwen2", llm.hidden_size, llm.layers, seed=seed,
                                num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads,
                                intermediate_size=llm.intermediate_size, vocab_size=llm.vocab_size)
    return build_vlm(BuildConfig(vision=str(vision_dir), llm=str(llm_dir), seed=seed, **config.build_options()))


def image_token_counts(processor, image_size: int) -> dict:
    """What one of the bench's `image_size`-pixel square images becomes in the text, asked of `processor` (the
    data layer's `image_tokens_for`, which training uses): image tokens, layout tokens (Idefics3's tile markers
    and newlines) and the tile grid (rows, cols; 0 x 0 for Llava or an image that fits one tile)."""
    from vlmforge.data.image_tokens import image_tokens_for

    tokens = image_tokens_for(processor)
    if isinstance(tokens, int):
        return {"image_size": image_size, "grid": [0, 0], "image_tokens": tokens, "layout_tokens": 0, "total": tokens}
    ids = tokens.ids(image_size, image_size)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    image = ids.count(image_id)
    return {"image_size": image_size, "grid": list(tokens.grid(image_size, image_size)), "image_tokens": image,
            "layout_tokens": len(ids) - image, "total": len(ids)}


def describe_image_tokens(counts: dict) -> str:
    """One line for `image_token_counts`: '245 image + 14 layout = 259 tokens per 448-px image (2x2 tiles + a global view)'."""
    rows, cols = counts["grid"]
    layout = f" ({rows}x{cols} tiles + a global view)" if rows else ""
    return (f"{counts['image_tokens']} image + {counts['layout_tokens']} layout = {counts['total']} tokens per "
            f"{counts['image_size']}-px image{layout}, from the processor")


def bench_vlm_config(config: BenchConfig):
    """The transformers config of `config`'s shapes (a SigLIP tower, a Qwen2 LLM) as Llava or Idefics3, without
    writing a folder: what `--plan` counts parameters and FLOPs from."""
    from transformers import Idefics3Config, Idefics3VisionConfig, LlavaConfig, Qwen2Config, SiglipVisionConfig

    vision, llm = config.vision, config.llm
    tower = dict(patch_size=vision.patch_size, hidden_size=vision.hidden_size, num_hidden_layers=vision.layers,
                 num_attention_heads=vision.heads, intermediate_size=vision.intermediate_size)
    decoder = Qwen2Config(hidden_size=llm.hidden_size, num_hidden_layers=llm.layers, num_attention_heads=llm.heads,
                          num_key_value_heads=llm.kv_heads, intermediate_size=llm.intermediate_size,
                          vocab_size=llm.vocab_size)
    if config.arch == "idefics3":  # the tower reads tiles (build_idefics3 resizes its position grid to them)
        return Idefics3Config(vision_config=Idefics3VisionConfig(image_size=config.tile, **tower), text_config=decoder,
                              scale_factor=config.shuffle)
    return LlavaConfig(vision_config=SiglipVisionConfig(image_size=vision.image_size, **tower), text_config=decoder)


def scaled_llava_config(config: BenchConfig, folder_config):
    """The Llava config of `folder_config` (the stand-in's) with `config`'s full shapes."""
    import copy

    llava = copy.deepcopy(folder_config)
    vision, llm = config.vision, config.llm
    llava.vision_config.update(dict(hidden_size=vision.hidden_size, num_hidden_layers=vision.layers,
                                    num_attention_heads=vision.heads, intermediate_size=vision.intermediate_size))
    llava.text_config.update(dict(hidden_size=llm.hidden_size, num_hidden_layers=llm.layers,
                                  num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads,
                                  head_dim=llm.hidden_size // llm.heads, intermediate_size=llm.intermediate_size,
                                  vocab_size=llm.vocab_size, max_position_embeddings=32768, tie_word_embeddings=False,
                                  layer_types=["full_attention"] * llm.layers, max_window_layers=llm.layers))
    llava.tie_word_embeddings = False
    return llava


def instantiate_large(config: BenchConfig, folder: str | Path, device: str):
    """(model, processor): `config`'s full-size model with random bf16 weights on `device` ("cuda" or "meta")."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlmforge.model.load import load

    stand_in, _ = load(folder)
    llava = scaled_llava_config(config, stand_in.config)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(llava)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config = stand_in.generation_config
    log.info("instantiated %s on %s: %.2fB parameters", config.name, device, sum(p.numel() for p in model.parameters()) / 1e9)
    return model.eval(), AutoProcessor.from_pretrained(folder)
