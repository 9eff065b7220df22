"""From dataset indices to padded tensors: the global-batch plan, and the collator.

Each optimizer step consumes one *global batch* (batch_size × grad_accum × world_size samples),
chosen by the length-grouped sampler. It is cut into micro-batches, one slice per (rank,
micro-step), so a run's data does not depend on how the global batch is split. The plan is a pure
function of (seed, epoch, position): resuming at step k replays exactly what follows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from vlmforge.data.image_tokens import image_tokens_for, is_tiling
from vlmforge.data.tokenize import IGNORE_INDEX, encode_conversation

log = logging.getLogger(__name__)


@dataclass
class BatchPlan:
    """Global batches of dataset indices, epoch after epoch, deterministic by seed.

    An epoch is planned once, on its first step, and kept (one epoch at a time: ~5 MB of indices
    at 665K records); every other step of it is a row lookup. Planning at 665K records costs
    0.1-0.4 s, so re-planning on every step (as the first version did) was a second per ~5 steps.
    """

    lengths: np.ndarray  # (N,) length estimates
    global_batch: int
    seed: int
    group_by_length: bool = True
    _planned: tuple = field(default=(None, None), init=False, repr=False, compare=False)  # (epoch, (S, G) array)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Plan epoch `epoch` from scratch: its full global batches in order (a pure function of seed, epoch)."""
        from vlmforge.data.dataset import LengthGroupedSampler

        if self.group_by_length:
            sampler = LengthGroupedSampler(self.lengths, self.global_batch, seed=self.seed)
            sampler.set_epoch(epoch)
            batches = sampler.batches()
        else:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
            batches = [order[i:i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        return [batch for batch in batches if len(batch) == self.global_batch]  # drop the short tail

    def steps_per_epoch(self) -> int:
        return len(self.lengths) // self.global_batch

    def batch_for_step(self, step: int) -> np.ndarray:
        """The global batch of optimizer step `step` (0-based)."""
        per_epoch = self.steps_per_epoch()
        if per_epoch == 0:
            raise ValueError(f"the dataset has {len(self.lengths)} samples, fewer than one global batch of {self.global_batch}")
        epoch, position = divmod(step, per_epoch)
        return self.epoch_plan(epoch)[position]

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, global_batch) indices of `epoch`, planned on first use."""
        planned_epoch, batches = self._planned
        if planned_epoch != epoch:
            batches = np.stack(self.epoch_batches(epoch))
            self._planned = (epoch, batches)
        return batches


def micro_slices(global_batch: np.ndarray, rank: int, world_size: int, grad_accum: int) -> list[np.ndarray]:
    """This rank's micro-batches of a global batch: contiguous slices, rank-major within each micro-step."""
    per_micro = len(global_batch) // (world_size * grad_accum)
    slices = []
    for micro in range(grad_accum):
        start = (micro * world_size + rank) * per_micro
        slices.append(global_batch[start:start + per_micro])
    return slices


class Collator:
    """Samples → padded `input_ids`, `attention_mask`, `labels`, `pixel_values` (right padding)."""

    def __init__(self, processor, num_image_tokens: int, max_length: int, too_long: str = "drop"):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token = processor.image_token
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.too_long = too_long
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.dropped_too_long = 0
        self.tiled_tokens = image_tokens_for(processor) if is_tiling(processor) else None  # Idefics3: per image size

    def encode(self, sample, image_ids=None):
        """`image_ids`: each image's own token ids (tiling processors); else `num_image_tokens` per image."""
        encoded = encode_conversation(sample.record["messages"], self.tokenizer, self.image_token,
                                      self.num_image_tokens if image_ids is None else image_ids,
                                      self.max_length, self.too_long)
        if encoded is None:
            self.dropped_too_long += 1
            log.debug("dropping %s:%d: longer than %d tokens", sample.path, sample.line, self.max_length)
        return encoded

    def __call__(self, samples: list) -> dict | None:
        samples = [sample for sample in samples if sample is not None]
        if self.tiled_tokens is not None:
            return self._tiled(samples)
        pairs = [(sample, self.encode(sample)) for sample in samples]
        pairs = [(sample, encoded) for sample, encoded in pairs if encoded is not None and encoded.num_trained_tokens]
        if not pairs:
            return None
        batch = self._text_batch(pairs)
        images = [image for sample, _ in pairs for image in sample.images]
        if images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return batch

    def _text_batch(self, pairs) -> dict:
        return pad_samples([encoded for _, encoded in pairs], self.pad_id)

    def _tiled(self, samples: list) -> dict | None:
        """Idefics3-style processors: each image's tokens depend on its tile grid, read from the image processor.

        The batch's images go through the image processor together, one row per sample with images,
        tiles zero-padded to the longest row with a `pixel_attention_mask`, exactly as the processor
        pads them; rows of samples left out are dropped (the model skips all-zero padding tiles).
        """
        tokens = self.tiled_tokens
        with_images = [sample for sample in samples if sample.images]
        features = (self.processor.image_processor([sample.images for sample in with_images], return_row_col_info=True,
                                                   return_tensors="pt") if with_images else {})
        grids = {id(sample): list(zip(rows, cols)) for sample, rows, cols
                 in zip(with_images, features.get("rows", []), features.get("cols", []))}
        pairs, kept = [], []
        for sample in samples:
            grid = grids.get(id(sample), [])
            encoded = self.encode(sample, [tokens.ids_for_grid(rows, cols) for rows, cols in grid])
            if encoded is not None and encoded.num_trained_tokens:
                pairs.append((sample, encoded))
                kept += [index for index, other in enumerate(with_images) if other is sample]
        if not pairs:
            return None
        batch = self._text_batch(pairs)
        if kept:
            batch["pixel_values"] = features["pixel_values"][kept]  # (S, N_tiles, C, H, W)
            batch["pixel_attention_mask"] = features["pixel_attention_mask"][kept]  # (S, N_tiles, H, W)
        return batch


def pad_samples(samples: list, pad_id: int) -> dict:
    """Encoded samples (`data.tokenize.EncodedSample`) → right-padded `input_ids`, `attention_mask`, `labels`, each (B, T)."""
    import torch

    longest = max(len(sample.input_ids) for sample in samples)
    input_ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)  # (B, T)
    for row, sample in enumerate(samples):
        length = len(sample.input_ids)
        input_ids[row, :length] = torch.tensor(sample.input_ids)
        labels[row, :length] = torch.tensor(sample.labels)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
