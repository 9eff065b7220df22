"""Token lengths of every training sample, for length-grouped batching: near-exact, computed once, fast.

    lengths = dataset_token_lengths(dataset, tokenizer, image_token="<image>", num_image_tokens=576)  # (len,)

The byte-size guess (`ConversationDataset.length_estimates`) misses by 20-30 % and mis-orders
text-only records against image records, which leaves ~15 % padding in length-grouped batches.
Here the message contents of each file are tokenised in large batches by the fast tokenizer, the
chat template's own tokens are added once per role sequence (measured on a stand-in conversation
with the same roles), and each image adds `num_image_tokens`. The result is within a token or two
of `encode_conversation`'s length, without rendering the template for every record.

`check_lengths_fit` is the trainer's pre-flight on those lengths: a run whose `max_length` leaves
more samples out than the bad-sample budget allows, or leaves a step with nothing to train on,
stops before step 1 with one line saying how many samples are too long and the longest one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.image_tokens import header_size
from vlmforge.data.images import resolve_image_path
from vlmforge.data.records import parse_line, text_problem, validate_record
from vlmforge.data.tokenize import encode_conversation
from vlmforge.errors import DataError

log = logging.getLogger(__name__)

_CHUNK = 4096  # records tokenised per call


def template_overhead(roles: tuple[str, ...], tokenizer, image_token: str) -> int:
    """Tokens the chat template adds around contents for this role sequence (system prompt included)."""
    probe = "x"
    messages = [{"role": role, "content": probe} for role in roles]
    encoded = encode_conversation(messages, tokenizer, image_token, 0, None)
    return len(encoded.input_ids) - len(roles) * len(tokenizer.encode(probe, add_special_tokens=False))


def _parse(line: bytes):
    """(roles, contents, image count, image paths) of a record line; None when it is not a usable record."""
    try:
        record = json.loads(line)
        messages = record["messages"]
        roles = tuple(message["role"] for message in messages)
        contents = [message["content"] for message in messages]
        paths = [path for path in record.get("images", []) if isinstance(path, str)]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # not JSON / UTF-8 / a record, hostile nesting
        return None
    if not all(isinstance(content, str) for content in contents) or text_problem(contents) is not None:
        return None  # a lone surrogate would make the tokenizer raise; the sample fails validation later
    return roles, contents, sum(content.count(IMAGE_PLACEHOLDER) for content in contents), paths


def _images_length(count: int, paths: list[str], num_image_tokens, roots) -> int:
    """Image tokens of one record: `count` x a constant, or each image's own count from its file header."""
    if isinstance(num_image_tokens, int):
        return count * num_image_tokens
    counts = [num_image_tokens.count_of_file(resolve_image_path(path, roots)) for path in paths[:count]]
    return sum(counts) + (count - len(counts)) * num_image_tokens.typical


def sample_image_tokens(num_image_tokens, record: dict, roots):
    """What `encode_conversation` takes for one record: the constant, or each image's ids from its header."""
    if isinstance(num_image_tokens, int):
        return num_image_tokens
    sizes = [header_size(resolve_image_path(path, roots)) for path in record.get("images", [])]
    longest = num_image_tokens.longest_edge
    return [num_image_tokens.ids(*(size or (longest, longest))) for size in sizes]


def record_token_lengths(lines: list[bytes], tokenizer, image_token: str, num_image_tokens, roots=()) -> np.ndarray:
    """(len(lines),) token counts of JSONL record lines; a line that is not a record gets bytes / 4.

    `num_image_tokens`: a constant per image (Llava), or a `TiledImageTokens` that reads each image's
    size from its file header (relative paths under `roots`) without decoding it (Idefics3).
    """
    parsed = [_parse(line) for line in lines]
    texts = [content.replace(IMAGE_PLACEHOLDER, "") for item in parsed if item for content in item[1]]
    content_lengths = iter(_token_counts(texts, tokenizer))
    overheads: dict[tuple[str, ...], int] = {}
    lengths = np.empty(len(lines), dtype=np.int64)
    for row, (line, item) in enumerate(zip(lines, parsed)):
        if item is None:
            lengths[row] = len(line) // 4
            continue
        roles, contents, images, paths = item
        if roles not in overheads:
            overheads[roles] = _overhead_or_zero(roles, tokenizer, image_token)
        text = sum(next(content_lengths) for _ in contents)
        lengths[row] = text + overheads[roles] + _images_length(images, paths, num_image_tokens, roots)
    return lengths


def _token_counts(texts: list[str], tokenizer) -> list[int]:
    """Token count of each text; the Rust tokenizer's batch call without offsets when there is one."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(encoding.ids) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _overhead_or_zero(roles, tokenizer, image_token: str) -> int:
    try:
        return template_overhead(roles, tokenizer, image_token)
    except Exception:  # an invalid role order: the sample fails validation later; its length hardly matters
        return 0


def _file_lengths(index, tokenizer, image_token: str, num_image_tokens, roots=()) -> np.ndarray:
    """Token counts of every indexed line of one JSONL file, read once, in order."""
    lengths = []
    with open(index.path, "rb") as handle:
        for start in range(0, len(index), _CHUNK):
            lines = []
            for offset, size in zip(index.offsets[start:start + _CHUNK], index.sizes[start:start + _CHUNK]):
                handle.seek(int(offset))
                lines.append(handle.read(int(size)))
            lengths.append(record_token_lengths(lines, tokenizer, image_token, num_image_tokens, roots))
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def dataset_token_lengths(dataset, tokenizer, image_token: str, num_image_tokens) -> np.ndarray:
    """(len(dataset),) near-exact token counts of a `ConversationDataset`'s samples, images expanded."""
    started = time.perf_counter()
    per_file = [_file_lengths(index, tokenizer, image_token, num_image_tokens, _roots(dataset, index))
                for index in dataset.indexes]
    flat = np.concatenate(per_file)
    starts = np.cumsum([0] + [len(index) for index in dataset.indexes])[:-1]
    lengths = flat[starts[dataset.file_ids] + dataset.rows]
    log.info("token lengths of %d samples in %.1f s", len(lengths), time.perf_counter() - started)
    return lengths


def _roots(dataset, index) -> list:
    """Where a file's relative image paths resolve: the dataset's image roots, or the file's folder."""
    return list(getattr(dataset, "image_roots", None) or [index.path.parent])


# ---------------------------------------------------------------------------------------------
# Pre-flight: nothing trains on nothing

_BOUNDARY_SLACK = 4  # the near-exact lengths can be off by a token or two: samples this close are encoded exactly
_MAX_EXACT = 2000  # at most this many samples are encoded exactly (a few seconds)


@dataclass
class LengthFit:
    """How many samples `max_length` leaves out (dropped, or truncated to nothing) and the longest one."""

    total: int
    left_out: int
    longest: int
    max_length: int
    estimated: bool = False  # True when the truncation outcome was measured on a sample of them


def too_long_message(left_out: int, total: int, max_length: int, longest: int, name: str = "data.max_length",
                     noun: str = "samples") -> str:
    """The one line that says how many samples are too long and why, shared by `train` and `data check`."""
    return f"{left_out} of {total} {noun} are longer than {name} = {max_length} tokens (longest: {longest})"


def check_lengths_fit(dataset, tokenizer, image_token: str, num_image_tokens: int, max_length: int,
                      too_long: str = "drop", lengths: np.ndarray | None = None, batches: Sequence = (),
                      name: str = "data.max_length") -> LengthFit:
    """Stop a run before step 1 when `max_length` leaves it (or one of its steps) with nothing to train on.

    Raises `DataError` with one line when more samples are too long (dropped, or with
    `too_long="truncate"` cut to nothing) than the dataset's bad-sample budget tolerates, or when
    every sample of one of `batches` (global batches of dataset indices) is. `lengths` are the
    near-exact token lengths of `dataset_token_lengths` (computed here when not given); samples
    within a few tokens of the limit, and over-long ones under "truncate", are encoded exactly.
    """
    lengths = np.asarray(lengths if lengths is not None else dataset_token_lengths(dataset, tokenizer, image_token, num_image_tokens))
    fit, left_out = _left_out(dataset, lengths, tokenizer, image_token, num_image_tokens, max_length, too_long)
    limit = dataset.budget.limit(len(dataset))
    reason = ("about " if fit.estimated else "") + too_long_message(fit.left_out, fit.total, max_length, fit.longest, name)
    reason += " and cannot be truncated to fit" if too_long == "truncate" and max_length >= 1 else ""
    advice = (f"{name} must be a positive number of tokens" if max_length < 1 else
              f"raise {name} or shorten those samples (`vlmforge data check --max-length {max_length}` lists them)")
    if fit.left_out > limit:
        raise DataError(f"{reason}; the bad-sample budget allows {limit}, so the run would train on too little: {advice}")
    for step, batch in enumerate(batches, start=1):
        if len(batch) and left_out[np.asarray(batch)].all():
            raise DataError(f"step {step} would train on nothing (all {len(batch)} of its samples are too long); "
                            f"{reason}: {advice}")
    return fit


def _left_out(dataset, lengths: np.ndarray, tokenizer, image_token: str, num_image_tokens: int, max_length: int,
              too_long: str) -> tuple[LengthFit, np.ndarray]:
    """(summary, (len,) bool mask of the samples `max_length` leaves out)."""
    total = len(lengths)
    longest = _exact_length(dataset, int(lengths.argmax()), tokenizer, image_token, num_image_tokens, int(lengths.max())) if total else 0
    if max_length < 1:
        return LengthFit(total, total, longest, max_length), np.ones(total, dtype=bool)
    left_out = lengths > max_length
    uncertain = np.abs(lengths - max_length) <= _BOUNDARY_SLACK
    if too_long == "truncate":
        uncertain |= left_out
    indices = np.flatnonzero(uncertain)
    rng = np.random.default_rng(0)
    measured = np.sort(rng.choice(indices, _MAX_EXACT, replace=False)) if len(indices) > _MAX_EXACT else indices
    for index in measured:
        outcome = _exact_left_out(dataset, int(index), tokenizer, image_token, num_image_tokens, max_length, too_long)
        left_out[index] = left_out[index] if outcome is None else outcome
    estimated = len(measured) < len(indices)
    count = int(left_out.sum())
    if estimated:  # scale what the sample showed to every uncertain sample
        unmeasured = np.setdiff1d(indices, measured)
        share = float(left_out[measured].mean()) if len(measured) else 0.0
        count = int(left_out.sum() - left_out[unmeasured].sum() + round(share * len(unmeasured)))
    return LengthFit(total, count, longest, max_length, estimated), left_out


def _exact_left_out(dataset, index: int, tokenizer, image_token: str, num_image_tokens: int, max_length: int,
                    too_long: str) -> bool | None:
    """Whether the trainer's own encoding leaves sample `index` out; None for a sample that is not a valid record."""
    messages = _messages(dataset, index)
    try:
        encoded = encode_conversation(messages, tokenizer, image_token, _sample_tokens(dataset, index, num_image_tokens),
                                      max_length, too_long) if messages else None
    except DataError:
        return None
    return None if messages is None else encoded is None or encoded.num_trained_tokens == 0


def _exact_length(dataset, index: int, tokenizer, image_token: str, num_image_tokens: int, fallback: int) -> int:
    """The exact token length of sample `index` (what `data check` reports), or `fallback`."""
    messages = _messages(dataset, index)
    try:
        if not messages:
            return fallback
        image_tokens = _sample_tokens(dataset, index, num_image_tokens)
        return len(encode_conversation(messages, tokenizer, image_token, image_tokens, None).input_ids)
    except DataError:
        return fallback


def _sample_tokens(dataset, index: int, num_image_tokens):
    """`num_image_tokens` for sample `index`: the constant, or its images' ids from their headers."""
    if isinstance(num_image_tokens, int):
        return num_image_tokens
    file_id, row = int(dataset.file_ids[index]), int(dataset.rows[index])
    line_index = dataset.indexes[file_id]
    record, _ = parse_line(line_index.read(row), first=int(line_index.line_numbers[row]) == 1)
    return sample_image_tokens(num_image_tokens, record if isinstance(record, dict) else {}, _roots(dataset, line_index))


def _messages(dataset, index: int) -> list | None:
    """The messages of sample `index` read from disk (no image decoded); None when it is not a valid record."""
    file_id, row = int(dataset.file_ids[index]), int(dataset.rows[index])
    line_index = dataset.indexes[file_id]
    record, problem = parse_line(line_index.read(row), first=int(line_index.line_numbers[row]) == 1)
    if problem is not None or validate_record(record):
        return None  # bad samples count against the budget when they are read
    return record["messages"]
