"""Pre-train a tiny SigLIP vision tower on shape scenes with a per-patch (dense) objective.

Each 16 px patch of a 48 px scene covers exactly one grid cell. Three linear heads read every
patch's output and predict the colour (or "empty") and the shape (or "empty") of its cell, and
which cell it is; the heads are thrown away after training, leaving a tower whose every image
token carries its own cell's content and place (the LM's cell words carry both). A fresh linear probe on frozen features, scored on images the tower never saw,
measures how well it does. The folder holds the model, a `SiglipImageProcessor` and
`pretraining_metrics.json`.

Heads read `hidden_states[-1]` (before SigLIP's post-layernorm): the features Llava feeds its
projector with `vision_feature_layer=-1`, which `vlmforge build` uses for towers without a CLS token.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from vlmforge.data.synth_scenes import COLOURS, GRID_SIZE, SHAPES
from vlmforge.demo.training_loop import run_steps, update, write_metrics
from vlmforge.errors import DataError

logger = logging.getLogger(__name__)

COLOUR_CLASSES = ("empty",) + tuple(colour.name for colour in COLOURS)
SHAPE_CLASSES = ("empty",) + tuple(shape.name for shape in SHAPES)


def load_scene_tensors(records: list[dict], image_root: str | Path):
    """Unique images of `records` as uint8 (N, 3, H, W) plus per-cell colour and shape labels, each (N, 9)."""
    import numpy as np
    import torch
    from PIL import Image

    unusable = [record.get("id", "?") for record in records if not _is_scene_record(record)]
    if unusable or not records:
        raise DataError(f"vision pre-training needs synthetic scene records (an image and meta.objects); "
                        f"got {len(records)} records, unusable: {unusable[:3]}")
    by_path = {record["images"][0]: record["meta"]["objects"] for record in records}
    pixels, colour_labels, shape_labels = [], [], []
    for path, objects in by_path.items():
        with Image.open(Path(image_root) / path) as image:
            pixels.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))  # (3, H, W)
        colours, shapes = [0] * GRID_SIZE**2, [0] * GRID_SIZE**2
        for obj in objects:
            cell = obj["row"] * GRID_SIZE + obj["col"]
            colours[cell], shapes[cell] = COLOUR_CLASSES.index(obj["colour"]), SHAPE_CLASSES.index(obj["shape"])
        colour_labels.append(colours)
        shape_labels.append(shapes)
    return torch.from_numpy(np.stack(pixels)), torch.tensor(colour_labels), torch.tensor(shape_labels)


def _is_scene_record(record: dict) -> bool:
    return bool(record.get("images")) and "objects" in record.get("meta", {})


def normalise(pixels):
    """uint8 (B, 3, H, W) → float in [-1, 1], exactly what the saved SiglipImageProcessor does."""
    return pixels.float() / 127.5 - 1.0


def make_vision_model(image_size: int, hidden_size: int, num_layers: int, seed: int):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        image_size=image_size,
        patch_size=image_size // GRID_SIZE,  # one patch per grid cell
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 32),
        vision_use_head=False,
    )
    torch.manual_seed(seed)
    return SiglipVisionModel(config)


def patch_features(model, pixels):
    """uint8 (B, 3, H, W) → per-patch features (B, 9, D) as Llava reads them (`hidden_states[-1]`)."""
    return model(pixel_values=normalise(pixels), output_hidden_states=True).hidden_states[-1]


def pretrain_vision_tower(
    records: list[dict],
    image_root: str | Path,
    out_dir: str | Path,
    *,
    max_steps: int | None = 400,
    max_seconds: float | None = 30.0,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    probe_images: int = 500,
) -> Path:
    """Train the tower on the scenes of `records` (images under `image_root`), save it; returns `out_dir`.

    The last `probe_images` unique images are kept out of training and score the linear probe.
    """
    import torch

    pixels, colour_labels, shape_labels = load_scene_tensors(records, image_root)
    num_probe = min(probe_images, len(pixels) // 5)
    split = len(pixels) - num_probe
    model = make_vision_model(pixels.shape[-1], hidden_size, num_layers, seed)
    heads = _cell_heads(hidden_size)
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    rng = random.Random(seed)

    def step(_progress: float) -> float:
        batch = torch.tensor(rng.sample(range(split), min(batch_size, split)))
        return update(optimizer, _dense_loss(heads, patch_features(model, pixels[batch]), colour_labels[batch],
                                             shape_labels[batch]))

    loop = run_steps(step, max_steps, max_seconds, desc="vision tower", model=model)
    probe = linear_probe(model, pixels, colour_labels, shape_labels, split) if num_probe else {}
    metrics = {**loop.summary(), "train_images": split, "probe_images": num_probe, "probe": probe}
    logger.info("vision tower: %d steps in %.1fs, loss %.3f, probe %s", loop.steps, loop.seconds,
                metrics["final_loss"], probe)
    return save_vision_folder(model, out_dir, metrics)


def _cell_heads(hidden_size: int):
    import torch

    colour_head = torch.nn.Linear(hidden_size, len(COLOUR_CLASSES))
    shape_head = torch.nn.Linear(hidden_size, len(SHAPE_CLASSES))
    cell_head = torch.nn.Linear(hidden_size, GRID_SIZE * GRID_SIZE)
    return torch.nn.ModuleDict({"colour": colour_head, "shape": shape_head, "cell": cell_head})


def _dense_loss(heads, features, colour_labels, shape_labels):
    """Cross-entropy of every patch's colour, shape and cell; features (B, 9, D), labels (B, 9)."""
    import torch
    import torch.nn.functional as F

    colour_logits = heads["colour"](features)  # (B, 9, C)
    shape_logits = heads["shape"](features)  # (B, 9, S)
    cell_logits = heads["cell"](features)  # (B, 9, 9)
    cells = torch.arange(features.shape[1]).expand(features.shape[0], -1)  # (B, 9)
    colour_loss = F.cross_entropy(colour_logits.flatten(0, 1), colour_labels.flatten())
    cell_loss = F.cross_entropy(cell_logits.flatten(0, 1), cells.flatten())
    return colour_loss + F.cross_entropy(shape_logits.flatten(0, 1), shape_labels.flatten()) + cell_loss


def linear_probe(model, pixels, colour_labels, shape_labels, split: int, steps: int = 300) -> dict:
    """Fit fresh linear heads on frozen features of images [0, split); accuracy on images [split, N)."""
    import torch

    with torch.no_grad():
        features = torch.cat([patch_features(model, chunk) for chunk in pixels.split(512)])  # (N, 9, D)
    heads = _cell_heads(features.shape[-1])
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)
    fit = slice(0, min(split, 2000))
    for _ in range(steps):
        loss = _dense_loss(heads, features[fit], colour_labels[fit], shape_labels[fit])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        colour_hit = heads["colour"](features[split:]).argmax(-1) == colour_labels[split:]  # (P, 9)
        shape_hit = heads["shape"](features[split:]).argmax(-1) == shape_labels[split:]
    occupied = colour_labels[split:] > 0
    return {
        "cell_accuracy": round((colour_hit & shape_hit).float().mean().item(), 4),
        "colour_accuracy_occupied": round(colour_hit[occupied].float().mean().item(), 4),
        "shape_accuracy_occupied": round(shape_hit[occupied].float().mean().item(), 4),
    }


def save_vision_folder(model, out_dir: str | Path, metrics: dict) -> Path:
    """Save the tower, its image processor and the pre-training metrics as one vision model folder."""
    from transformers import SiglipImageProcessor

    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    size = model.config.image_size
    SiglipImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out_dir)
    write_metrics(out_dir, metrics)
    return out_dir
