"""The benchmark's models: random weights of a `BenchConfig`'s shapes, no download.

`tiny` and `small` are built the way a user builds a VLM (vision folder + LLM folder → `build_vlm`
→ a model folder the trainer loads). `7b-lora` is too big to write and read back within a GPU
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
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision

    out_dir = Path(out_dir)
    vision, llm = config.vision, config.llm
    if config.needs_cuda:  # a stand-in of the same image geometry and vocabulary; see `instantiate_large`
        vision_dir = make_tiny_vision(out_dir / "parts" / "vision", "siglip", vision.image_size, vision.patch_size, seed=seed)
        llm_dir = make_tiny_llm(out_dir / "parts" / "llm", "qwen2", seed=seed)
    else:
        vision_dir = make_tiny_vision(out_dir / "parts" / "vision", "siglip", vision.image_size, vision.patch_size,
                                      vision.hidden_size, vision.layers, seed=seed, num_attention_heads=vision.heads,
                                      intermediate_size=vision.intermediate_size)
        llm_dir = make_tiny_llm(out_dir / "parts" / "llm", "qwen2", llm.hidden_size, llm.layers, seed=seed,
                                num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads,
                                intermediate_size=llm.intermediate_size, vocab_size=llm.vocab_size)
    model, processor = build_vlm(BuildConfig(vision=str(vision_dir), llm=str(llm_dir), seed=seed))
    return save_vlm(model, processor, out_dir / "model")


def bench_llava_config(config: BenchConfig):
    """The transformers Llava config of `config`'s shapes (a SigLIP tower, a Qwen2 LLM), without writing a folder."""
    from transformers import LlavaConfig, Qwen2Config, SiglipVisionConfig

    vision, llm = config.vision, config.llm
    tower = SiglipVisionConfig(image_size=vision.image_size, patch_size=vision.patch_size, hidden_size=vision.hidden_size,
                               num_hidden_layers=vision.layers, num_attention_heads=vision.heads,
                               intermediate_size=vision.intermediate_size)
    decoder = Qwen2Config(hidden_size=llm.hidden_size, num_hidden_layers=llm.layers, num_attention_heads=llm.heads,
                          num_key_value_heads=llm.kv_heads, intermediate_size=llm.intermediate_size,
                          vocab_size=llm.vocab_size)
    return LlavaConfig(vision_config=tower, text_config=decoder)


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
