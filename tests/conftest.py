"""Shared test set-up: offline hub, tiny models built from configs and saved to tmp folders."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """Tiny vision models and LLMs saved as Hugging Face folders: {"siglip": path, "clip": ..., "qwen2": ...}."""
    from vlmforge.model.tiny import make_tiny_llm, make_tiny_vision

    root = tmp_path_factory.mktemp("parts")
    return {
        "siglip": make_tiny_vision(root / "siglip", "siglip"),
        "siglip-dual": make_tiny_vision(root / "siglip-dual", "siglip", dual=True),
        "clip": make_tiny_vision(root / "clip", "clip"),
        "clip-dual": make_tiny_vision(root / "clip-dual", "clip", dual=True),
        "dinov2": make_tiny_vision(root / "dinov2", "dinov2"),
        "qwen2": make_tiny_llm(root / "qwen2", "qwen2"),
        "qwen3": make_tiny_llm(root / "qwen3", "qwen3"),
        "llama": make_tiny_llm(root / "llama", "llama"),
    }


@pytest.fixture(scope="session")
def tiny_vlm_dir(tiny_parts, tmp_path_factory):
    """A built (untrained) SigLIP + Qwen2 VLM folder, as `vlmforge build` writes it."""
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    out = tmp_path_factory.mktemp("vlm") / "tiny-vlm"
    model, processor = build_vlm(BuildConfig(vision=str(tiny_parts["siglip"]), llm=str(tiny_parts["qwen2"])))
    return save_vlm(model, processor, out)


@pytest.fixture(scope="session")
def lively_vlm_dir(tiny_vlm_dir, tmp_path_factory):
    """`tiny_vlm_dir` with its weight matrices re-drawn from N(0, 0.3), saved as a VLM folder.

    The freshly built model answers the same blank line to everything; this one's (nonsense)
    answers depend on the image and the prompt, so comparisons between answers can fail.
    """
    import torch

    from vlmforge.model.build import save_vlm
    from vlmforge.model.load import load

    model, processor = load(tiny_vlm_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return save_vlm(model, processor, tmp_path_factory.mktemp("lively") / "vlm")
