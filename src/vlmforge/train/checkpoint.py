"""Checkpoints: `OUTPUT_DIR/checkpoint-STEP/`, written under a temporary name and renamed when complete.

A checkpoint holds what is needed to continue exactly and nothing more:

    trainable.safetensors   the trainable weights (projector, LoRA adapters, or what is trainable)
    optimizer.pt            optimizer state (tensors only: loaded with weights_only=True)
    scheduler.json          learning-rate scheduler state
    rng.pt                  torch / numpy / python RNG states
    trainer_state.json      step, tokens seen, bad samples, last metrics
    recipe.yaml             the resolved recipe (model.path says which base model the weights belong to)
    manifest.json           size and sha256 of each file above, written last

`checkpoint-latest` is a symlink swapped atomically after the folder is complete, so it never
points at a torn checkpoint; old checkpoints are renamed away before they are deleted. A checkpoint
counts only when every file is present and matches the manifest (`checkpoint_problem`): resume and
export verify before they read, and fall back to (or name) the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
from pathlib import Path

from vlmforge.errors import VlmforgeError
from vlmforge.utils.atomic import (atomic_directory, describe_device, is_disk_full, remove_directory,
                                  remove_stale_temporaries)

log = logging.getLogger("vlmforge.train")

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
LATEST = "checkpoint-latest"
MANIFEST = "manifest.json"
DATA_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.json", "rng.pt", "trainer_state.json", "recipe.yaml")
CHECKPOINT_FILES = DATA_FILES + (MANIFEST,)
EXPORT_FILES = ("trainable.safetensors", "recipe.yaml")


class CheckpointError(VlmforgeError):
    """A checkpoint that is damaged, unreadable, or does not fit the current recipe."""


class DiskFullError(CheckpointError):
    """The disk filled up while a checkpoint was written; the partial folder is gone."""


# -- RNG state ------------------------------------------------------------------------------
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


# -- saving ---------------------------------------------------------------------------------
def save_checkpoint(output_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict,
                    recipe_yaml: str, keep: int, rng_states: list | None = None) -> Path:
    """Write checkpoint-STEP atomically, point checkpoint-latest at it, prune to the newest `keep`.

    `rng_states`: every process's `rng_state()`, in rank order, when several train (each draws its
    own dropout masks); rng.pt then holds rank 0's at the top, as one process writes it, and all under "ranks".

    A full disk raises `DiskFullError` (one line naming the device and the newest intact
    checkpoint) after the partial folder is removed, so `--resume` continues from that one.
    """
    from vlmforge.train.trainability import trainable_state

    final = output_dir / f"checkpoint-{step}"
    try:
        with atomic_directory(final) as tmp:
            weights = {name: tensor.contiguous().cpu() for name, tensor in trainable_state(model).items()}
            _write_files(tmp, step, weights, optimizer.state_dict(), scheduler.state_dict(), trainer_state, recipe_yaml,
                         {**rng_states[0], "ranks": rng_states} if rng_states else rng_state())
        _point_latest(output_dir, final.name)
    except Exception as error:
        if not is_disk_full(error):
            raise
        raise DiskFullError(_disk_full_message(output_dir, final.name)) from None
    prune_checkpoints(output_dir, keep, step)
    return final


def _write_files(folder: Path, step: int, weights: dict, optimizer_state: dict, scheduler_state: dict,
                 trainer_state: dict, recipe_yaml: str, rng: dict) -> None:
    """Every checkpoint file, then the manifest (last: its presence means the rest was written)."""
    import torch
    from safetensors.torch import save_file

    save_file(weights, folder / "trainable.safetensors")
    with open(folder / "optimizer.pt", "wb") as handle:  # a file object: a full disk surfaces as OSError
        torch.save(optimizer_state, handle)
    (folder / "scheduler.json").write_text(json.dumps(scheduler_state))
    with open(folder / "rng.pt", "wb") as handle:
        torch.save(rng, handle)
    (folder / "recipe.yaml").write_text(recipe_yaml, encoding="utf-8")
    (folder / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=1))
    write_manifest(folder)


def write_manifest(folder: Path) -> None:
    """Size and sha256 of every data file: what `checkpoint_problem` compares against later."""
    files = {name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)} for name in DATA_FILES}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _disk_full_message(output_dir: Path, name: str) -> str:
    try:
        intact = latest_checkpoint(output_dir, quiet=True)
    except CheckpointError:
        intact = None
    kept = f"{intact.name} is intact: free some space, then continue with --resume" if intact else \
        "no earlier checkpoint is intact: free some space and start again"
    return f"no space left on {describe_device(output_dir)} while writing {name}; {kept}"


def _point_latest(output_dir: Path, name: str) -> None:
    link = output_dir / LATEST
    tmp = output_dir / f".{LATEST}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(name)
    os.replace(tmp, link)


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Every `checkpoint-STEP` folder, complete or not, oldest first."""
    if not Path(output_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(output_dir).iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir() and not p.is_symlink()]
    return [path for _, path in sorted(found)]


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints with every file present, oldest first (cheap: sizes and checksums are not read)."""
    return [path for path in checkpoint_folders(output_dir) if all((path / name).is_file() for name in DATA_FILES)]


def prune_checkpoints(output_dir: Path, keep: int, step: int | None = None) -> None:
    """Keep the newest `keep` checkpoints up to `step` (the one just written always stays).

    Checkpoints newer than `step` belong to a run that was resumed from an earlier one; they are
    left for the run to overwrite. Each old one is renamed away before it is deleted, so a kill
    mid-prune never leaves a half-deleted folder under a checkpoint's name.
    """
    folders = [path for path in checkpoint_folders(output_dir) if step is None or _step_of(path) <= step]
    for old in folders[:-keep]:
        remove_directory(old)


def clean_output_dir(output_dir: Path) -> list[str]:
    """At the start of a run: remove the temporaries killed runs left (`.checkpoint-N.tmp-PID`,
    half-pruned `.checkpoint-N.trash-PID`, ...) whose process is gone; one log line if any."""
    removed = remove_stale_temporaries(output_dir)
    if removed:
        log.info("removed %d leftover temporary folder(s) of killed runs from %s: %s", len(removed), output_dir,
                 ", ".join(removed))
    return removed


def _step_of(path: Path) -> int:
    return int(CHECKPOINT_PATTERN.match(path.name).group(1))


# -- verifying ------------------------------------------------------------------------------
def checkpoint_problem(path: Path, files: tuple[str, ...] = DATA_FILES) -> str | None:
    """Why `path` is not an intact checkpoint (for `files`), in a few words; None when it is.

    With a manifest: every file present, with the size and sha256 written at save time.
    Checkpoints from before manifests existed get a structural check instead.
    """
    path = Path(path)
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    if not (path / MANIFEST).is_file():
        return _structural_problem(path, files)
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name in files:
        expected = manifest.get(name) if isinstance(manifest, dict) else None
        if not isinstance(expected, dict) or "size" not in expected or "sha256" not in expected:
            return f"{name} is not listed in {MANIFEST}"
        size = (path / name).stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, {expected['size']} were written"
        if _sha256(path / name) != expected["sha256"]:
            return f"{name} does not match the checksum written with it"
    return None


def _structural_problem(path: Path, files: tuple[str, ...]) -> str | None:
    """For manifest-less checkpoints: JSON parses, safetensors sizes add up, torch zips are whole."""
    import zipfile

    for name in files:
        file = path / name
        if file.stat().st_size == 0:
            return f"{name} is empty"
        if name.endswith(".json"):
            try:
                json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError):
                return f"{name} is not valid JSON (torn?)"
        elif name.endswith(".safetensors") and not _safetensors_whole(file):
            return f"{name} is truncated"
        elif name.endswith(".pt") and not zipfile.is_zipfile(file):
            return f"{name} is truncated"
    return None


def _safetensors_whole(file: Path) -> bool:
    """The header parses and the file is as long as the header says (a truncated copy is shorter)."""
    try:
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError, OverflowError, MemoryError):
        return False
    return file.stat().st_size == 8 + header_size + end


def latest_checkpoint(output_dir: Path, quiet: bool = False) -> Path | None:
    """The newest intact checkpoint; None when the folder holds no checkpoint at all.

    Damaged newer ones are skipped with one warning line naming what is wrong. When checkpoints
    exist but none is intact, raises `CheckpointError`: resuming from step 0 over them would
    silently throw the run away, so the user decides (move them away, or use a new output_dir).
    """
    folders = checkpoint_folders(output_dir)
    damaged = []
    for folder in reversed(folders):
        problem = checkpoint_problem(folder)
        if problem is None:
            if damaged and not quiet:
                log.warning("%s: resuming from %s instead", _describe_damage(damaged), folder.name)
            return folder
        damaged.append((folder, problem))
    if damaged:
        raise CheckpointError(f"--resume: no intact checkpoint in {output_dir}: {_describe_damage(damaged)}. Move the "
                              "checkpoint-* folders away to start from step 0, or use another train.output_dir")
    return None


def _describe_damage(damaged: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{folder.name} is damaged ({problem})" for folder, problem in damaged)


def newest_intact_sibling(path: Path) -> Path | None:
    """The newest intact checkpoint beside `path` (for a hint when `path` itself is damaged)."""
    for folder in reversed(checkpoint_folders(Path(path).parent)):
        if folder.resolve() != Path(path).resolve() and checkpoint_problem(folder, EXPORT_FILES) is None:
            return folder
    return None


def verify_for_export(path: Path) -> None:
    """Raise one line when `path` lacks, or has damaged, what export reads (weights and recipe)."""
    path = Path(path).resolve()  # checkpoint-latest → the checkpoint it names
    problem = checkpoint_problem(path, EXPORT_FILES)
    if problem is None:
        return
    sibling = newest_intact_sibling(path)
    hint = f"; {sibling} is intact" if sibling else ""
    raise CheckpointError(f"checkpoint {path} is damaged: {problem}{hint}")


# -- loading --------------------------------------------------------------------------------
def load_checkpoint(path: Path, model, optimizer, scheduler, recipe=None, rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler and RNG (process `rank`'s, when saved) from `path`; returns the trainer state.

    Everything is checked before anything is changed: the saved recipe against `recipe` (when
    given), then tensor names and shapes against the model's trainable parameters; a mismatch is
    one line naming the difference, never torch's size error.
    """
    if recipe is not None:
        check_recipe_compatible(path, recipe)
    weights = checked_trainable_weights(path, model)
    optimizer_state = _torch_load(path / "optimizer.pt")
    rng = _torch_load(path / "rng.pt")
    copy_weights(weights)
    try:
        optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path / 'optimizer.pt'} does not fit this run's optimizer "
                              f"({str(error).splitlines()[0]}): the trainable parts changed since it was saved") from None
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    ranks = rng.get("ranks", ())
    restore_rng_state(ranks[rank] if 0 < rank < len(ranks) else rng)
    return json.loads((path / "trainer_state.json").read_text())


def check_tensors(path: Path, weights: dict, parameters: dict) -> None:
    """The checkpoint's tensors are exactly the trainable parameters, with the same shapes."""
    unknown = [name for name in weights if name not in parameters]
    if unknown:
        raise CheckpointError(f"{path.name} holds '{unknown[0]}', which this model has not: it was trained with "
                              "another model, LoRA target list or trainability")
    trained = [name for name, parameter in parameters.items() if parameter.requires_grad and name not in weights]
    if trained:
        raise CheckpointError(f"this run trains '{trained[0]}', which {path.name} does not hold: "
                              "the trainable parts or LoRA targets changed since it was saved")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(parameters[name].shape):
            raise CheckpointError(f"'{name}' is {tuple(tensor.shape)} in {path.name} but {tuple(parameters[name].shape)} "
                                  "in this model (a different lora.rank or model?)")


def _torch_load(file: Path):
    """`torch.load(weights_only=True)` with its refusals and read errors as one line."""
    import torch

    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise CheckpointError(f"{file} holds pickled Python objects, which vlmforge never loads (weights_only=True): "
                              "it was not written by vlmforge, or was altered. Resume from another checkpoint "
                              "or start a new run") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{file} cannot be read ({str(error).splitlines()[0]})") from None


# The recipe fields that decide which tensors exist and what they mean.
COMPATIBILITY_FIELDS = ("trainable.vision", "trainable.projector", "trainable.llm")
LORA_FIELDS = ("lora.rank", "lora.alpha", "lora.target_modules")


def check_recipe_compatible(path: Path, recipe) -> None:
    """Refuse a checkpoint whose saved recipe trains other parts, another LoRA, or another model."""
    import yaml

    from vlmforge.config import to_dict

    try:
        saved = yaml.safe_load((Path(path) / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{Path(path) / 'recipe.yaml'} cannot be read ({str(error).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{Path(path) / 'recipe.yaml'} is not a recipe")
    current = to_dict(recipe)
    fields = COMPATIBILITY_FIELDS + (LORA_FIELDS if _field(current, "trainable.llm") == "lora" else ())
    for key in fields:
        then, now = _field(saved, key), _field(current, key)
        if then != now:
            raise CheckpointError(f"{Path(path).name} was saved with {key} = {then!r}, this run has {now!r}: resume with "
                                  "the same setting, or start a new run (another train.output_dir)")
    _check_same_model(Path(path), _field(saved, "model.path"), _field(current, "model.path"))


def _field(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _check_same_model(path: Path, then, now) -> None:
    """Same folder, or a copy of it (same config.json). A folder that is gone cannot be compared:
    the tensor shapes are the check then."""
    if not then or not now or then == now:
        return
    old, new = Path(then), Path(now)
    if not (old / "config.json").is_file() or not (new / "config.json").is_file() or old.resolve() == new.resolve():
        return
    if (old / "config.json").read_bytes() != (new / "config.json").read_bytes():
        raise CheckpointError(f"{path.name} was trained from model.path {then}, this run loads {now} (a different "
                              "model): resume with the same model.path, or start a new run")


def checked_trainable_weights(path: Path, model) -> list[tuple]:
    """(parameter, saved tensor) pairs of a checkpoint's trainable weights, names and shapes checked
    against `model`; nothing is changed yet. The one checkpoint reader of resume and export."""
    weights = read_trainable_weights(path)
    parameters = dict(model.named_parameters())
    check_tensors(path, weights, parameters)
    return [(parameters[name], tensor) for name, tensor in weights.items()]


def copy_weights(pairs: list[tuple]) -> None:
    """Copy each saved tensor into its parameter (from `checked_trainable_weights`)."""
    import torch

    with torch.no_grad():
        for parameter, tensor in pairs:
            parameter.copy_(tensor)


def read_trainable_weights(path: Path) -> dict:
    """The trainable weights of a checkpoint; damage is one line, not a SafetensorError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / "trainable.safetensors"
    try:
        return load_file(file)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{file} cannot be read ({str(error).splitlines()[0]})") from None
