"""Checkpoints: `OUTPUT_DIR/checkpoint-STEP/`, written under a temporary name and renamed when complete.

A checkpoint holds what is needed to continue exactly and nothing more:

    trainable.safetensors   the trainable weights (projector, LoRA adapters, or what is trainable)
    optimizer.pt            optimizer state (tensors only: loaded with weights_only=True)
    scheduler.json          learning-rate scheduler state
    rng.pt                  torch / numpy / python RNG states
    trainer_state.json      step, tokens seen, bad samples, last metrics
    recipe.yaml             the resolved recipe (model.path says which base model the weights belong to)

`checkpoint-latest` is a symlink swapped atomically after the folder is complete, so it never
points at a torn checkpoint; old checkpoints are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

from vlmforge.utils.atomic import atomic_directory

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
LATEST = "checkpoint-latest"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.json", "rng.pt", "trainer_state.json", "recipe.yaml")


def rng_state() -> dict:
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached],
             "python": _python_state_to_lists(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_to_lists(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict,
                    recipe_yaml: str, keep: int) -> Path:
    """Write checkpoint-STEP atomically, point checkpoint-latest at it, prune to the newest `keep`."""
    import torch
    from safetensors.torch import save_file

    from vlmforge.train.trainability import trainable_state

    final = output_dir / f"checkpoint-{step}"
    with atomic_directory(final) as tmp:
        weights = {name: tensor.contiguous().cpu() for name, tensor in trainable_state(model).items()}
        save_file(weights, tmp / "trainable.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
        (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=1))
    _point_latest(output_dir, final.name)
    prune_checkpoints(output_dir, keep)
    return final


def _point_latest(output_dir: Path, name: str) -> None:
    link = output_dir / LATEST
    tmp = output_dir / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(name)
    os.replace(tmp, link)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a torn one never has its final name)."""
    if not output_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found) if (path / "trainer_state.json").exists()]


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns the trainer state."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(path / "trainable.safetensors")
    parameters = dict(model.named_parameters())
    missing = [name for name in weights if name not in parameters]
    if missing:
        from vlmforge.errors import ConfigError

        raise ConfigError(f"{path} does not match this model/recipe (e.g. no parameter '{missing[0]}')")
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    restore_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "trainer_state.json").read_text())


def read_trainable_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(path) / "trainable.safetensors")
