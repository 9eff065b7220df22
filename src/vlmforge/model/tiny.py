"""Tiny vision models and LLMs built from configs and saved as ordinary Hugging Face folders.

They stand in for real checkpoints wherever no download is possible: tests, the quick start, the
benchmark. Each folder loads back through `from_pretrained`, exactly like a downloaded model.
"""

from __future__ import annotations

from pathlib import Path

# A few lines of English and Chinese, enough to train a byte-level BPE tokenizer for tests.
TINY_CORPUS = [
    "What is in this picture? A cat is sitting on a red sofa next to a window.",
    "Describe the image in detail. Two people are walking a dog along the beach at sunset.",
    "How many shapes are there? There are three shapes: a red circle, a blue square and a green triangle.",
    "The quick brown fox jumps over the lazy dog. Where is the square? At the top left.",
    "这张图片里有什么？一只猫坐在窗边的红色沙发上。",
    "图中有几个形状？有两个形状：一个红色的圆形和一个蓝色的正方形。",
    "请详细描述这张图片。两个人在日落时沿着海滩遛狗。",
]


def make_tokenizer(style: str = "chatml", vocab_size: int = 400):
    from vlmforge.data.tokenizer_training import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_CORPUS * 4, vocab_size=vocab_size, style=style)


def make_tiny_vision(out_dir: str | Path, kind: str = "siglip", image_size: int = 32, patch_size: int = 8,
                     hidden_size: int = 32, layers: int = 2, dual: bool = False, seed: int = 0,
                     processor_size: int | None = None, **overrides) -> Path:
    """Save a randomly initialised vision model (or dual-tower model) with its image processor.

    `kind`: siglip, clip (both with `dual`), siglip2 (NaFlex), dinov2, dinov2-registers or vit.
    `processor_size` makes the processor's output differ from the config's `image_size`, as in real
    DINOv2 checkpoints (config 518, processor 224). `overrides` set other vision config fields
    (`num_attention_heads`, `intermediate_size`, `num_register_tokens`, ...).
    """
    import torch

    torch.manual_seed(seed)
    shape = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_hidden_layers=layers,
                 num_attention_heads=4, intermediate_size=hidden_size * 2)
    shape.update(overrides)
    model, processor = _tiny_tower(kind, shape, dual, processor_size or image_size)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _tiny_tower(kind: str, shape: dict, dual: bool, side: int):
    """(model, image processor) of one tower kind, randomly initialised from `shape`."""
    import transformers as tf

    square = {"height": side, "width": side}
    text = dict(vocab_size=99, hidden_size=shape["hidden_size"], num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=shape["hidden_size"] * 2)
    if kind == "siglip":
        model = (tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=shape)) if dual
                 else tf.SiglipVisionModel(tf.SiglipVisionConfig(**shape)))
        return model, tf.SiglipImageProcessor(size=square)
    if kind == "clip":
        model = (tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=shape)) if dual
                 else tf.CLIPVisionModel(tf.CLIPVisionConfig(**shape)))
        return model, tf.CLIPImageProcessor(size={"shortest_edge": side}, crop_size=square)
    if kind == "siglip2":  # NaFlex: variable-size patch sequences; vlmforge refuses it (see parts.py)
        shape = {key: value for key, value in shape.items() if key != "image_size"}
        return (tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**shape, num_patches=(side // shape["patch_size"]) ** 2)),
                tf.Siglip2ImageProcessor(patch_size=shape["patch_size"], max_num_patches=(side // shape["patch_size"]) ** 2))
    if kind in ("dinov2", "dinov2-registers"):
        config = (tf.Dinov2WithRegistersConfig(**{"num_register_tokens": 4, **shape}) if kind == "dinov2-registers"
                  else tf.Dinov2Config(**shape))
        model = tf.AutoModel.from_config(config)
        return model, tf.BitImageProcessor(size={"shortest_edge": side}, crop_size=square)
    if kind == "vit":
        return tf.ViTModel(tf.ViTConfig(**shape)), tf.ViTImageProcessor(size=square)
    raise ValueError(f"unknown tiny vision kind {kind}")


def make_tiny_llm(out_dir: str | Path, kind: str = "qwen2", hidden_size: int = 32, layers: int = 2,
                  tokenizer=None, seed: int = 0, tie_word_embeddings: bool | None = None, **overrides) -> Path:
    """Save a randomly initialised Qwen2 / Qwen3 / Llama causal LM with a locally trained tokenizer.

    `overrides` set other config fields (`num_attention_heads`, `intermediate_size`, a `vocab_size`
    larger than the tokenizer's, ...).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    torch.manual_seed(seed)
    tokenizer = tokenizer or make_tokenizer("llama3" if kind == "llama" else "chatml")
    configs = {"qwen2": Qwen2Config, "qwen3": Qwen3Config, "llama": LlamaConfig}
    tie = kind != "llama" if tie_word_embeddings is None else tie_word_embeddings
    shape = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                 num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    shape.update(overrides)
    config = configs[kind](**shape, tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
