"""The training dataset over canonical JSONL files, its bad-sample budget and a length-grouped sampler.

    dataset = ConversationDataset(["llava_665k.jsonl", "aic.jsonl"], weights=[1.0, 0.3], image_roots=["/data"])
    sampler = LengthGroupedSampler(dataset.length_estimates(num_image_tokens=576), batch_size=16, seed=0)
    sample = dataset[0]            # Sample(record, images, path, line) or None for a bad sample

Records are not held in memory: each file gets a byte-offset index (numpy arrays) and a sample is
read from disk and its images decoded when asked for. Tokenisation happens in the trainer's
collator (`vlmforge.data.tokenize`). A sample whose line or image is bad is skipped (None) and
counted; past the `BadSampleBudget` a `DataError` stops the run with the reason, early.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.images import DEFAULT_MAX_PIXELS, load_image, resolve_image_path
from vlmforge.data.records import parse_line, validate_record
from vlmforge.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_PLACEHOLDER_BYTES = IMAGE_PLACEHOLDER.encode()


@dataclass
class Sample:
    """A record as stored, its images decoded (PIL RGB, in placeholder order), and where it came from."""

    record: dict
    images: list
    path: str
    line: int


@dataclass
class LineIndex:
    """Where each non-blank line of a JSONL file starts, its size in bytes and its placeholder count."""

    path: Path
    offsets: np.ndarray  # (N,) int64 byte offsets
    sizes: np.ndarray  # (N,) int64 line lengths in bytes
    image_counts: np.ndarray  # (N,) int32 `<image>` occurrences in the line
    line_numbers: np.ndarray  # (N,) int64 1-based line numbers

    @classmethod
    def build(cls, path: str | Path) -> LineIndex:
        offsets, sizes, image_counts, line_numbers = [], [], [], []
        position = 0
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    offsets.append(position)
                    sizes.append(len(line))
                    image_counts.append(line.count(_PLACEHOLDER_BYTES))
                    line_numbers.append(number)
                position += len(line)
        as_array = lambda values, dtype: np.asarray(values, dtype=dtype)  # noqa: E731
        return cls(Path(path), as_array(offsets, np.int64), as_array(sizes, np.int64),
                   as_array(image_counts, np.int32), as_array(line_numbers, np.int64))

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, row: int) -> bytes:
        with open(self.path, "rb") as handle:  # opened per read: safe across DataLoader worker forks
            handle.seek(int(self.offsets[row]))
            return handle.read(int(self.sizes[row]))


@dataclass
class BadSampleBudget:
    """How many distinct bad samples a run tolerates: `max_count` when set, else `max_fraction` of the dataset.

    Each DataLoader worker process counts the samples it loads.
    """

    max_fraction: float = 0.01
    max_count: int | None = None
    bad: set = field(default_factory=set)
    examples: list = field(default_factory=list)

    def limit(self, total: int) -> int:
        return self.max_count if self.max_count is not None else int(self.max_fraction * total)

    def record_bad(self, key: tuple, reason: str, total: int) -> None:
        """Count a bad sample once (however many epochs see it); raise `DataError` past the limit."""
        if key in self.bad:
            return
        self.bad.add(key)
        self.examples = (self.examples + [reason])[:5]
        logger.warning("skipping bad sample %s", reason)
        if len(self.bad) > self.limit(total):
            raise DataError(
                f"too many bad samples: {len(self.bad)} of {total} (limit {self.limit(total)}); "
                f"first: {'; '.join(self.examples)}. Run `vlmforge data check` on the data and fix or remove them"
            )


class ConversationDataset:
    """Map-style dataset over JSONL files mixed by `weights` (times each file is seen per epoch).

    A weight of 2 repeats a file, 0.5 takes a fixed half of it (chosen by `seed`). Relative image
    paths resolve against `image_roots`, or the folder of their JSONL file when none are given.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        weights: Sequence[float] | None = None,
        image_roots: Sequence[str | Path] = (),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        budget: BadSampleBudget | None = None,
        seed: int = 0,
    ):
        weights = list(weights) if weights is not None else [1.0] * len(paths)
        _check_weights(paths, weights)
        self.indexes = [LineIndex.build(path) for path in paths]
        self.image_roots = [Path(root) for root in image_roots]
        self.max_pixels = max_pixels
        self.budget = budget if budget is not None else BadSampleBudget()
        self.file_ids, self.rows = _mix(self.indexes, weights, seed)
        logger.info("dataset: %d samples from %d file(s)", len(self), len(self.indexes))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample | None:
        file_id, row = int(self.file_ids[index]), int(self.rows[index])
        line_index = self.indexes[file_id]
        line = int(line_index.line_numbers[row])
        try:
            record = _parse_record(line_index.read(row), first=line == 1)
            roots = self.image_roots or [line_index.path.parent]
            images = [load_image(resolve_image_path(path, roots), self.max_pixels) for path in record.get("images", [])]
        except DataError as error:
            self.budget.record_bad((file_id, row), f"{line_index.path}:{line}: {error}", len(self))
            return None
        return Sample(record, images, str(line_index.path), line)

    def length_estimates(self, num_image_tokens: int, bytes_per_token: float = 4.0) -> np.ndarray:
        """(len,) cheap token-count guesses: line bytes / `bytes_per_token` + images × image tokens."""
        sizes = np.concatenate([index.sizes for index in self.indexes])
        images = np.concatenate([index.image_counts for index in self.indexes]).astype(np.int64)
        starts = np.cumsum([0] + [len(index) for index in self.indexes])[:-1]
        flat = starts[self.file_ids] + self.rows  # (len,) row in the concatenated arrays
        return (sizes[flat] / bytes_per_token).astype(np.int64) + images[flat] * num_image_tokens


def _parse_record(line: bytes, first: bool = False) -> dict:
    """A valid record from a line's bytes, or `DataError` with the reason `data check` would give."""
    record, problem = parse_line(line, first)
    if problem is not None:
        raise DataError(problem.reason)
    problems = validate_record(record)
    if problems:
        raise DataError(problems[0].reason)
    return record


def _check_weights(paths: Sequence, weights: list[float]) -> None:
    if not paths:
        raise ConfigError("the dataset needs at least one JSONL file")
    if len(weights) != len(paths):
        raise ConfigError(f"{len(weights)} mixing weight(s) for {len(paths)} file(s)")
    if any(weight < 0 for weight in weights):
        raise ConfigError(f"mixing weights must be >= 0, got {weights}")


def _mix(indexes: list[LineIndex], weights: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(file id, row) of every sample: each file repeated floor(w) times plus a seeded fraction w % 1."""
    rng = np.random.default_rng(seed)
    file_ids, rows = [], []
    for file_id, (index, weight) in enumerate(zip(indexes, weights)):
        whole, fraction = int(weight), weight - int(weight)
        extra = np.sort(rng.choice(len(index), size=round(fraction * len(index)), replace=False))
        chosen = np.concatenate([np.tile(np.arange(len(index)), whole), extra]).astype(np.int64)
        file_ids.append(np.full(len(chosen), file_id, dtype=np.int32))
        rows.append(chosen)
    return np.concatenate(file_ids), np.concatenate(rows)


class LengthGroupedSampler:
    """Indices in batches of similar length, deterministic by `seed` and epoch (`set_epoch`).

    Shuffles, cuts the order into groups of `batch_size * group_batches`, sorts each group by
    length into batches, shuffles the batches and puts the longest one first (an out-of-memory
    error then shows at step 1). Feed it to a DataLoader with the same `batch_size`.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 50):
        if batch_size < 1 or group_batches < 1:
            raise ConfigError("batch_size and group_batches must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches: full ones shuffled with the longest first, a short one (if any) last."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        group_size = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group_size):
            group = order[start : start + group_size]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        short = [batch for batch in batches if len(batch) < self.batch_size]
        full = [batches[i] for i in rng.permutation(len(batches) - len(short))]
        if full:
            longest = max(range(len(full)), key=lambda i: self.lengths[full[i]].max())
            full.insert(0, full.pop(longest))
        return full + short

    def __iter__(self):
        for batch in self.batches():
            yield from (int(index) for index in batch)
