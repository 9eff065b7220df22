"""Where vlmforge's speed comes from: its training step with one lever switched off at a time.

    sides = lever_sides(recipe)     # {"padding": VlmforgeSide, ...}; `vlmforge bench --breakdown`

Each variant is vlmforge's own `Trainer` set up from the bench recipe with one change:
- padding: `data.group_by_length: false` (random global batches, each padded to its longest);
- logits: the LM head on every position (full logits, then the trained positions picked out), as a
  `labels=` loss computes them;
- vision_autograd: the frozen tower's parameters keep `requires_grad` (not in the optimizer), so
  autograd records the tower and back-propagates into it, as many repos leave it;
- lora_dropout: LoRA dropout 0.05 instead of 0 (only where the bench runs with 0: a CPU);
- precision: the other precision than `train.precision: auto` chose (fp32 ↔ bf16 autocast); not on a
  CPU that only emulates bf16 (AVX2: ~100× slower than fp32, a step would take minutes).
The report divides vlmforge's real tokens/s by each variant's: what that lever is worth.
"""

from __future__ import annotations

import copy

from vlmforge.bench.vlmforge_training import VlmforgeSide
from vlmforge.train.trainability import part_of
from vlmforge.train.recipe import Recipe

LEVERS = ("padding", "logits", "vision_autograd", "lora_dropout", "precision")
LEVER_LABELS = {
    "padding": "random batches (no length grouping)",
    "logits": "logits on every position",
    "vision_autograd": "autograd through the frozen tower",
    "lora_dropout": "LoRA dropout 0.05",
    "precision": "the other precision",
}


class LeverSide(VlmforgeSide):
    """vlmforge's side with one lever off; its step is the trainer's own, plus what the lever needs."""

    def __init__(self, recipe: Recipe, lever: str, base_model=None):
        super().__init__(recipe, base_model=base_model)
        self.lever = lever
        self.run.name = f"without {lever}"
        if lever == "logits":
            full_logits(self.trainer.base_model)
            self.run.logits_on_all = True
        if lever == "vision_autograd":
            self.vision = [p for name, p in self.trainer.base_model.named_parameters() if part_of(name) == "vision"]
            for parameter in self.vision:
                parameter.requires_grad_(True)
            self.run.vision_trained = True

    def step(self, micro_batches: list) -> float:
        loss = super().step(micro_batches)
        for parameter in getattr(self, "vision", ()):
            parameter.grad = None  # not in the optimizer: its zero_grad leaves them
        return loss


def full_logits(model) -> None:
    """Make `model` compute logits for every position, then keep the ones `logits_to_keep` (a mask) asks for."""
    import torch

    original = model.forward

    def forward(*args, logits_to_keep=0, **kwargs):
        outputs = original(*args, logits_to_keep=0, **kwargs)
        if torch.is_tensor(logits_to_keep) and logits_to_keep.dtype == torch.bool:
            outputs.logits = outputs.logits[logits_to_keep]  # (N, V) of (B, T, V)
        return outputs

    model.forward = forward


def lever_recipe(recipe: Recipe, lever: str, bf16: bool, bf16_native: bool = True) -> Recipe | None:
    """The recipe of the variant without `lever`; None when that lever is already off in `recipe` (or, for
    precision, when the other precision is bf16 on hardware that only emulates it)."""
    variant = copy.deepcopy(recipe)
    variant.train.output_dir = f"{recipe.train.output_dir}-{lever}"
    if lever == "padding":
        variant.data.group_by_length = False
    elif lever == "lora_dropout":
        if recipe.lora.dropout > 0:
            return None
        variant.lora.dropout = 0.05
    elif lever == "precision":
        if not bf16 and not bf16_native:
            return None
        variant.train.precision = "fp32" if bf16 else "bf16"
    return variant


def lever_sides(recipe: Recipe, bf16: bool, bf16_native: bool = True, base_model_factory=None) -> dict[str, LeverSide]:
    sides = {}
    for lever in LEVERS:
        variant = lever_recipe(recipe, lever, bf16, bf16_native)
        if variant is not None:
            sides[lever] = LeverSide(variant, lever, base_model=base_model_factory() if base_model_factory else None)
    return sides
