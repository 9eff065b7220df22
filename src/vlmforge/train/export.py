"""Export: a trained model or a checkpoint → a merged, standard transformers folder.

    vlmforge export runs/my/checkpoint-latest --out my-vlm

LoRA adapters are merged into the LLM's weights (peft `merge_and_unload`), so the result is a
plain Llava folder that `AutoModelForImageTextToText` loads without vlmforge or peft.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmforge.errors import ModelError


def _saved_dtype(model_path: str):
    import torch

    config = json.loads((Path(model_path) / "config.json").read_text()) if (Path(model_path) / "config.json").exists() else {}
    name = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else None


def export_model(model, processor, out: str | Path, dtype=None) -> Path:
    """Merge adapters (if any), cast to `dtype` (if given) and save model + processor atomically."""
    from vlmforge.model.build import save_vlm

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if hasattr(model, "_orig_mod"):  # torch.compile wrapper
        model = model._orig_mod
    model = model.eval()
    if dtype is not None:
        model = model.to(dtype)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return save_vlm(model, processor, out)


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Rebuild the trained model from a checkpoint folder (base model + trainable weights) and export it."""
    import torch

    from vlmforge.config import from_dict
    from vlmforge.train.checkpoint import checked_trainable_weights, copy_weights, verify_for_export
    from vlmforge.train.loop import load_model_for_training
    from vlmforge.train.recipe import Recipe

    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_dir():
        raise ModelError(f"checkpoint folder not found: {checkpoint}")
    if not (checkpoint / "trainable.safetensors").exists() and not (checkpoint / "manifest.json").exists():
        raise ModelError(f"{checkpoint} is not a vlmforge checkpoint (no trainable.safetensors)")
    verify_for_export(checkpoint)  # sizes and checksums, before anything is built from it
    import yaml

    recipe = from_dict(Recipe, yaml.safe_load((checkpoint / "recipe.yaml").read_text(encoding="utf-8")))
    model, processor = load_model_for_training(recipe, torch.device("cpu"))
    copy_weights(checked_trainable_weights(checkpoint, model))  # names and shapes: one line, not torch's size error
    return export_model(model, processor, out, dtype=_saved_dtype(recipe.model.path))
