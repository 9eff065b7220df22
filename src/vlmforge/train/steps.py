"""One optimizer step's data and loss: loading a rank's micro-batches, and the token-normalised loss.

The loss of a step is the sum of per-token cross-entropies over the trainable tokens of the whole
global batch, divided by their count (all ranks, all micro-steps). So the result is the same
however the global batch is split across devices or accumulation steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmforge.data.tokenize import IGNORE_INDEX
from vlmforge.train.batching import BatchPlan, Collator, micro_slices


@dataclass
class StepBatches:
    """Map-style view: item `step` = this rank's collated micro-batches for that optimizer step."""

    dataset: object
    plan: BatchPlan
    collator: Collator
    rank: int
    world_size: int
    grad_accum: int

    def __getitem__(self, step: int) -> list[dict | None]:
        slices = micro_slices(self.plan.batch_for_step(step), self.rank, self.world_size, self.grad_accum)
        return [self.collator([self.dataset[int(index)] for index in indices]) for indices in slices]


def trained_token_count(batch: dict | None) -> int:
    """Tokens whose next-token prediction is trained (labels shifted by one)."""
    return 0 if batch is None else int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def summed_loss(model, batch: dict):
    """Sum (not mean) of the cross-entropy over trained tokens; only their positions go through lm_head."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]  # (B, T)
    trained = torch.zeros_like(labels, dtype=torch.bool)  # (B, T): positions whose next token is trained
    trained[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=trained).logits  # (N, V), N = trained.sum()
    targets = labels[:, 1:][trained[:, :-1]]  # (N,)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets,
                           ignore_index=IGNORE_INDEX, reduction="sum")


def peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
