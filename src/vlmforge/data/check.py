"""`vlmforge data check`: find every problem of canonical JSONL files before training starts.

    report = check_files(["train.jsonl"], CheckOptions(model_dir="runs/vlm", max_length=2048))
    print(format_check_report(report)); json.dump(report.to_dict(), open("report.json", "w"))

Reports per source: records, images, text-only records, assistant turns; and every problem with
file:line and reason: bad JSON, missing / undecodable / truncated / oversized image, placeholder
count mismatch, empty or unknown role, turns that do not alternate, an assistant turn with nothing
to train on. With a model folder it renders each record with the model's chat template, expands
each image into the processor's image-token count, and reports the length distribution and the
records over `max_length`. Each distinct image file is decoded once, in a thread pool.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmforge.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image, resolve_image_path
from vlmforge.data.records import Problem, iter_records, require_files, validate_record
from vlmforge.errors import ConfigError, DataError, ModelError

logger = logging.getLogger(__name__)


@dataclass
class CheckOptions:
    image_roots: Sequence[str | Path] = ()  # default: the folder of each JSONL file
    model_dir: str | Path | None = None
    max_length: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    check_images: bool = True
    workers: int = 4


@dataclass
class SourceStats:
    records: int = 0
    images: int = 0
    text_only: int = 0
    turns: int = 0  # assistant turns
    problems: int = 0


@dataclass
class CheckReport:
    files: list[str]
    sources: dict[str, SourceStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    model: str | None = None
    image_tokens_per_image: int | None = None
    max_length: int | None = None
    lengths: dict | None = None  # token-length distribution after image expansion
    over_max_length: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        data = asdict(self)
        data["problems"] = [problem.to_dict() for problem in self.problems]
        data["problem_counts"] = _count_kinds(self.problems)
        data["ok"] = self.ok
        return data


@dataclass
class _ModelView:
    """What rendering needs from a model folder: tokenizer, image token and tokens per image."""

    tokenizer: object
    image_token: str
    num_image_tokens: object  # an int (Llava), or a TiledImageTokens (Idefics3: per image size)


def check_files(paths: Sequence[str | Path], options: CheckOptions | None = None) -> CheckReport:
    """Check every record of every file; never stops at the first problem."""
    options = options or CheckOptions()
    if options.max_length is not None and options.model_dir is None:
        raise ConfigError("--max-length needs --model (token lengths depend on the model's template)")
    require_files(paths)
    report = CheckReport(files=[str(path) for path in paths], model=_str_or_none(options.model_dir), max_length=options.max_length)
    model = _load_model_view(options.model_dir) if options.model_dir is not None else None
    report.image_tokens_per_image = model.num_image_tokens if model and isinstance(model.num_image_tokens, int) else None
    image_users: dict[str, list[tuple[str, str, int]]] = defaultdict(list)  # image -> (source, file, line)
    lengths: list[int] = []
    for path in paths:
        _check_file(Path(path), options, model, report, image_users, lengths)
    if options.check_images:
        _check_images(image_users, options, report)
    report.problems.sort(key=lambda problem: (problem.path, problem.line or 0))
    report.lengths = _distribution(lengths) if model else None
    return report


def _check_file(path: Path, options: CheckOptions, model: _ModelView | None, report: CheckReport,
                image_users: dict, lengths: list[int]) -> None:
    from tqdm.auto import tqdm

    roots = list(options.image_roots) or [path.parent]
    line_problems: list[Problem] = []
    for line, record in tqdm(iter_records(path, line_problems), desc=f"check {path.name}", unit=" rec", leave=False):
        source = record.get("source") if isinstance(record.get("source"), str) else path.stem
        stats = report.sources.setdefault(source, SourceStats())
        problems = validate_record(record)
        _count_record(record, stats)
        for image in _image_paths(record):
            image_users[str(resolve_image_path(image, roots))].append((source, str(path), line))
        if not problems:  # a valid record: its length is measured even when its text is suspicious
            problems = _control_text(record, model)
            problems += _check_length(record, model, options.max_length, lengths, report, roots) if model is not None else []
        problems = [problem.at(path, line) for problem in problems]
        stats.problems += len(problems)
        report.problems += problems
    if line_problems:  # unreadable lines have no source of their own: the file's default one counts them
        report.sources.setdefault(path.stem, SourceStats()).problems += len(line_problems)
    report.problems += line_problems


# Control tokens of common chat templates (ChatML, Llama 3, Phi, ... `<|name|>`; Gemma's turn markers);
# with --model, the model's own special tokens are looked for instead.
_CONTROL_TEXT = re.compile(r"<\|[A-Za-z0-9_.:\-]{1,40}\|>|<(?:start|end)_of_turn>")


def _control_text(record: dict, model: _ModelView | None) -> list[Problem]:
    """A `control-token` problem per message whose text holds a chat template's control-token text.

    Training and serving encode such text as plain text (it can never forge a turn), but in data it
    is almost always a scraping accident or an injection attempt, so it is reported.
    """
    from vlmforge.data.tokenize import control_text_in

    problems = []
    for index, message in enumerate(record["messages"]):
        text = message["content"]
        found = control_text_in([message], model.tokenizer) if model is not None else (_CONTROL_TEXT.search(text) or [None])[0]
        if found:
            problems.append(Problem("control-token", f"message {index} holds the control-token text {found!r}; "
                                    "it is trained as plain text, never as a turn marker, but check where it came from"))
    return problems


def _image_paths(record: dict) -> list[str]:
    images = record.get("images")
    return [image for image in images if isinstance(image, str) and image] if isinstance(images, list) else []


def _count_record(record: dict, stats: SourceStats) -> None:
    images = record.get("images") if isinstance(record.get("images"), list) else []
    messages = record.get("messages") if isinstance(record.get("messages"), list) else []
    stats.records += 1
    stats.images += len(images)
    stats.text_only += not images
    stats.turns += sum(isinstance(message, dict) and message.get("role") == "assistant" for message in messages)


def _check_length(record: dict, model: _ModelView, max_length: int | None, lengths: list[int], report: CheckReport,
                  roots=()) -> list[Problem]:
    from vlmforge.data.token_lengths import sample_image_tokens
    from vlmforge.data.tokenize import encode_conversation

    try:  # Idefics3: each image's tokens from its size, read from the file header (sample_image_tokens)
        image_tokens = sample_image_tokens(model.num_image_tokens, record, roots)
        sample = encode_conversation(record["messages"], model.tokenizer, model.image_token, image_tokens, None)
    except DataError as error:
        return [Problem("template", str(error))]
    lengths.append(len(sample.input_ids))
    if sample.num_trained_tokens == 0:
        return [Problem("untrainable-assistant", "no token of any assistant turn would be trained")]
    if max_length is not None and len(sample.input_ids) > max_length:
        report.over_max_length += 1
        return [Problem("too-long", f"{len(sample.input_ids)} tokens after image expansion > --max-length {max_length}")]
    return []


def _check_images(image_users: dict, options: CheckOptions, report: CheckReport) -> None:
    """Decode each distinct image once; report a bad one at every record that uses it."""
    from tqdm.auto import tqdm

    def failure(path: str) -> ImageError | None:
        try:
            load_image(path, options.max_pixels)
        except ImageError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        results = list(tqdm(pool.map(failure, image_users), total=len(image_users), desc="images", unit=" img", leave=False))
    for path, error in zip(image_users, results):
        if error is None:
            continue
        for source, file, line in image_users[path]:
            report.sources[source].problems += 1
            report.problems.append(Problem(f"{error.kind}-image", f"{error.kind} image {path} ({error.detail})", file, line))


def _load_model_view(model_dir: str | Path) -> _ModelView:
    from transformers import AutoProcessor

    from vlmforge.data.image_tokens import image_tokens_for

    if not Path(model_dir).is_dir():
        raise ModelError(f"model folder not found: {model_dir}")
    try:
        processor = AutoProcessor.from_pretrained(str(model_dir))
    except Exception as error:  # transformers raises many types for a folder that is not a processor
        raise ModelError(f"cannot load a processor from {model_dir}: {error}") from error
    if not hasattr(processor, "image_token") or not hasattr(processor, "tokenizer"):
        raise ModelError(f"{model_dir} holds no multimodal processor (need an image token and a tokenizer)")
    tokenizer = processor.tokenizer
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = getattr(processor, "chat_template", None)
    if tokenizer.chat_template is None:
        raise ModelError(f"{model_dir} has no chat template")
    return _ModelView(tokenizer, processor.image_token, image_tokens_for(processor))  # an int, or per image size


def _distribution(lengths: list[int]) -> dict | None:
    import numpy as np

    if not lengths:
        return None
    values = np.asarray(lengths)
    percentiles = {f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 99)}
    return {"count": len(values), "min": int(values.min()), "mean": round(float(values.mean()), 1),
            **percentiles, "max": int(values.max())}


def _count_kinds(problems: list[Problem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return counts


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)


def format_check_report(report: CheckReport, max_problems: int = 30) -> str:
    """A short human summary: a table per source, the length distribution, the first problems."""
    lines = [f"{'source':<24} {'records':>8} {'images':>8} {'text-only':>9} {'turns':>8} {'problems':>8}"]
    for name, stats in sorted(report.sources.items()):
        lines.append(f"{name:<24} {stats.records:>8} {stats.images:>8} {stats.text_only:>9} {stats.turns:>8} {stats.problems:>8}")
    if report.lengths:
        spread = ", ".join(f"{key} {value}" for key, value in report.lengths.items())
        per_image = report.image_tokens_per_image if report.image_tokens_per_image is not None else "by size"
        lines.append(f"tokens per record ({per_image} per image): {spread}")
    if report.max_length is not None:
        from vlmforge.data.token_lengths import too_long_message

        measured, longest = (report.lengths["count"], report.lengths["max"]) if report.lengths else (0, 0)
        lines.append(too_long_message(report.over_max_length, measured, report.max_length, longest, "--max-length", "records"))
    if report.ok:
        lines.append("no problems found")
        return "\n".join(lines)
    counts = ", ".join(f"{kind}: {count}" for kind, count in sorted(_count_kinds(report.problems).items()))
    lines.append(f"{len(report.problems)} problem(s) ({counts}):")
    lines += [f"  {problem}" for problem in report.problems[:max_problems]]
    if len(report.problems) > max_problems:
        lines.append(f"  ... and {len(report.problems) - max_problems} more (use --json REPORT for all)")
    return "\n".join(lines)
