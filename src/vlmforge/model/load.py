"""`load`: a vlmforge model folder (or any transformers Llava-family folder) → (model, processor).

It is plain `AutoModelForImageTextToText` + `AutoProcessor`, with checks that turn the usual
failures into one clear line.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from vlmforge.errors import ModelError


def load(path: str | Path, dtype: str | None = None, device: str | None = None):
    """Load a VLM folder; returns (model in eval mode, processor)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = str(path)
    if Path(path).exists() and not (Path(path) / "config.json").exists():
        hint = " (a training checkpoint? run `vlmforge export` on it first)" if (Path(path) / "trainer_state.json").exists() else ""
        raise ModelError(f"{path} has no config.json: not a model folder{hint}")
    if not Path(path).exists() and path.startswith((".", "/", "~")):
        raise ModelError(f"model folder not found: {path}")
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype, trust_remote_code=False)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        if "custom code" in str(error):
            from vlmforge.model.parts import remote_code_refusal

            raise ModelError(remote_code_refusal(path)) from None
        where = "no such folder, and not a hub id that can be loaded (offline?)" if not Path(path).exists() else str(error)
        raise ModelError(f"cannot load a vision-language model from {path}: {where.splitlines()[0]}") from None
    except pickle.UnpicklingError:  # torch's weights_only refusal: its message is a page of advice to disable it
        raise ModelError(f"{path} has a pickled .bin weights file holding Python objects, which vlmforge never loads "
                         "(weights_only=True): re-save the model as safetensors where you trust its source "
                         "(save_pretrained(out, safe_serialization=True)) and use that folder") from None
    if device:
        model = model.to(device)
    return model.eval(), processor
