"""Converters from public VLM dataset formats to canonical JSONL (`vlmforge data convert`).

    report = convert_files("llava", ["detail_23k.json", "complex_reasoning_77k.json"], "llava.jsonl",
                           ConvertOptions(image_roots=["coco/train2017"], check_images=True))

Formats: `llava` / `llava-pretrain` (id, image, conversations from human|gpt; every turn kept),
`coco` (captions_train2017.json; every caption), `aic` (AI Challenger captions; every non-empty
caption), `sharegpt` (messages + images, LLaMA-Factory style). Nothing is keyed by image file name,
so sources sharing images keep every record. Every output record passes `validate_record`;
a source record that cannot be converted is left out and reported with file:line, together with
all others, in the returned `ConvertReport`. Quirks of each format: docs/data.md.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.convert_text import clean_caption, load_prompts, pick_prompt, shipped_prompts
from vlmforge.data.json_items import iter_json_items, load_json_document
from vlmforge.data.images import resolve_image_path
from vlmforge.data.records import (Problem, normalize_placeholders, require_files, text_problem, validate_record,
                                    write_records)
from vlmforge.errors import ConfigError, DataError

ROLE_NAMES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}
DEFAULT_PROMPTS = {"coco": "caption_en.txt", "aic": "caption_zh.txt"}


@dataclass
class ConvertOptions:
    """How to convert: image roots (first holding the file wins), checks, prompts, seed, source name."""

    image_roots: Sequence[str | Path] = ()
    check_images: bool = False
    prompts_file: str | Path | None = None
    seed: int = 0
    source: str | None = None
    normalize_placeholders: bool = True


@dataclass
class ConvertReport:
    """What a conversion wrote, what it left out and why."""

    output: str
    records: int = 0
    per_source: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output": self.output, "records": self.records, "per_source": dict(self.per_source),
                "skipped": dict(self.skipped), "problems": [problem.to_dict() for problem in self.problems]}


@dataclass
class _Context:
    """Per-input state handed to a format reader."""

    path: Path
    source: str
    options: ConvertOptions
    report: ConvertReport
    prompts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Format readers: each yields (line, record index, canonical record) and never drops silently.


def _items(context: _Context) -> Iterator[tuple[int, int, object]]:
    """The readable items of an input; unreadable ones (bad JSON, bad text, hostile nesting) are reported."""
    for line, index, item in iter_json_items(context.path, context.report.problems):
        problem = text_problem(item)
        if problem is None:
            yield line, index, item
        else:
            context.report.problems.append(problem.at(context.path, line, index))


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _read_llava(context: _Context) -> Iterator[tuple[int | None, int | None, dict]]:
    for line, index, item in _items(context):
        if not isinstance(item, dict):
            yield line, index, item
            continue
        images = item.get("image") or []
        record = {
            "id": str(item["id"]) if item.get("id") is not None else f"{context.source}-{index}",
            "source": context.source,
            "images": [images] if isinstance(images, str) else images,
            "messages": [_message(turn, "from", "value", context) for turn in _list(item.get("conversations"))],
        }
        yield line, index, record


def _read_sharegpt(context: _Context) -> Iterator[tuple[int | None, int | None, dict]]:
    for line, index, item in _items(context):
        if not isinstance(item, dict):
            yield line, index, item
            continue
        turns = _list(item.get("messages", item.get("conversations")))
        messages = [_message(turn, "role", "content", context) if isinstance(turn, dict) and "role" in turn
                    else _message(turn, "from", "value", context) for turn in turns]
        if item.get("system"):
            messages.insert(0, {"role": "system", "content": item["system"]})
        images = item.get("images") or item.get("image") or []
        record = {
            "id": str(item["id"]) if item.get("id") is not None else f"{context.source}-{index}",
            "source": context.source,
            "images": [images] if isinstance(images, str) else images,
            "messages": messages,
        }
        yield line, index, record


def _message(turn: object, role_key: str, content_key: str, context: _Context) -> dict:
    """One turn in canonical form; an unknown role is kept as is, so validation names it."""
    if not isinstance(turn, dict):
        return {"role": None, "content": None}
    role = turn.get(role_key)
    role = ROLE_NAMES.get(role, role) if isinstance(role, str) else role
    content = turn.get(content_key)
    if role == "user" and isinstance(content, str) and context.options.normalize_placeholders:
        content = normalize_placeholders(content)
    return {"role": role, "content": content}


def _read_coco(context: _Context) -> Iterator[tuple[int | None, int | None, dict]]:
    data = _load_json_object(context.path, ("images", "annotations"))
    file_names = _coco_file_names(data["images"], context)
    for index, annotation in enumerate(data["annotations"]):
        problem = text_problem(annotation) or _not_an_object(annotation, f"annotation {index}")
        if problem is not None:
            context.report.problems.append(problem.at(context.path, record=index))
            continue
        caption = clean_caption(annotation.get("caption") if isinstance(annotation.get("caption"), str) else "")
        if not caption:
            context.report.skipped["empty caption"] += 1
            continue
        if not _hashable(annotation.get("image_id")) or annotation.get("image_id") not in file_names:
            reason = f"annotation {annotation.get('id', index)}: image_id {annotation.get('image_id')} is not in `images`"
            context.report.problems.append(Problem("unknown-image-id", reason).at(context.path, record=index))
            continue
        # All captions of an image share its id, so evaluation scores them as several references (the COCO way).
        record_id = f"coco-{annotation['image_id']}"
        prompt_key = f"coco-{annotation.get('id', index)}"
        yield None, index, _caption_record(record_id, prompt_key, file_names[annotation["image_id"]], caption, "en", context)


def _coco_file_names(images: list, context: _Context) -> dict:
    """image id -> file name; an entry without an `id` or a `file_name` is reported, not a KeyError."""
    file_names = {}
    for index, image in enumerate(images):
        valid = isinstance(image, dict) and _hashable(image.get("id")) and isinstance(image.get("file_name"), str)
        if valid and text_problem(image) is None:
            file_names[image["id"]] = image["file_name"]
            continue
        reason = f"images[{index}] needs an `id` and a `file_name` string; its captions are left out"
        context.report.problems.append(Problem("bad-item", reason).at(context.path))
    return file_names


def _not_an_object(item: object, name: str) -> Problem | None:
    return None if isinstance(item, dict) else Problem("bad-item", f"{name} is not a JSON object")


def _hashable(value: object) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _read_aic(context: _Context) -> Iterator[tuple[int | None, int | None, dict]]:
    for line, index, item in _items(context):
        if not isinstance(item, dict) or not isinstance(item.get("image_id"), str):
            reason = "expected an object with `image_id` (file name) and `caption` (list of sentences)"
            context.report.problems.append(Problem("bad-item", reason).at(context.path, line, index))
            continue
        captions = item.get("caption")
        for number, caption in enumerate([captions] if isinstance(captions, str) else _list(captions)):
            caption = clean_caption(caption if isinstance(caption, str) else "")
            if not caption:
                context.report.skipped["empty caption"] += 1
                continue
            record_id = f"aic-{Path(item['image_id']).stem}"
            prompt_key = f"{record_id}-{number}"
            yield line, index, _caption_record(record_id, prompt_key, item["image_id"], caption, "zh", context)


def _caption_record(record_id: str, prompt_key: str, image: str, caption: str, lang: str, context: _Context) -> dict:
    """One caption as a record; `prompt_key` (one per caption) picks its instruction deterministically."""
    prompt = pick_prompt(context.prompts, context.options.seed, prompt_key)
    question = prompt if IMAGE_PLACEHOLDER in prompt else f"{IMAGE_PLACEHOLDER}\n{prompt}"
    if context.options.normalize_placeholders:
        question = normalize_placeholders(question)
    return {
        "id": record_id,
        "source": context.source,
        "images": [image],
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": caption}],
        "type": "caption",
        "lang": lang,
    }


def _load_json_object(path: Path, keys: tuple[str, ...]) -> dict:
    data = load_json_document(path)
    if not isinstance(data, dict) or any(not isinstance(data.get(key), list) for key in keys):
        raise DataError(f"{path}: expected a JSON object with lists {', '.join(keys)}")
    return data


READERS = {
    "llava": _read_llava,
    "llava-pretrain": _read_llava,
    "coco": _read_coco,
    "aic": _read_aic,
    "sharegpt": _read_sharegpt,
}
FORMATS = tuple(READERS)


# ---------------------------------------------------------------------------------------------
# Driver


def convert_files(fmt: str, inputs: Sequence[str | Path], output: str | Path, options: ConvertOptions | None = None) -> ConvertReport:
    """Convert every input of format `fmt` into one JSONL file; returns the report (problems included)."""
    options = options or ConvertOptions()
    if fmt not in READERS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    require_files(inputs)
    if Path(output).is_dir():
        raise DataError(f"--out {output} is a folder; name the output file (e.g. {Path(output) / 'data.jsonl'})")
    prompts = _prompts_for(fmt, options)
    report = ConvertReport(output=str(output))
    contexts = [_Context(Path(path), options.source or Path(path).stem, options, report, prompts) for path in inputs]
    report.records = write_records(output, _converted(fmt, contexts))
    return report


def _prompts_for(fmt: str, options: ConvertOptions) -> list[str]:
    if options.prompts_file is not None:
        return load_prompts(options.prompts_file)
    return shipped_prompts(DEFAULT_PROMPTS[fmt]) if fmt in DEFAULT_PROMPTS else []


def _converted(fmt: str, contexts: list[_Context]) -> Iterator[dict]:
    from tqdm.auto import tqdm

    roots = [os.path.abspath(root) for root in contexts[0].options.image_roots]
    for context in contexts:
        for line, index, record in tqdm(READERS[fmt](context), desc=f"convert {context.path.name}", unit=" rec", leave=False):
            problems = validate_record(record) or _place_images(record, roots, context.options.check_images)
            if problems:
                context.report.problems += [problem.at(context.path, line, index) for problem in problems]
                continue
            context.report.per_source[context.source] += 1
            yield record


def _place_images(record: dict, roots: list[str], check_images: bool) -> list[Problem]:
    """Join image paths to the image roots (in place); with `check_images`, report missing files."""
    if not roots and not check_images:
        return []
    placed = [resolve_image_path(path, roots) for path in record["images"]]
    record["images"] = [str(path) for path in placed]
    return [Problem("missing-image", f"missing image {path}") for path in placed if check_images and not path.is_file()]


def format_convert_report(report: ConvertReport, max_problems: int = 20) -> str:
    """A short human summary: counts per source, skipped items, the first problems."""
    sources = ", ".join(f"{source}: {count}" for source, count in report.per_source.items()) or "none"
    lines = [f"wrote {report.records} record(s) to {report.output} ({sources})"]
    lines += [f"skipped {count} × {reason}" for reason, count in report.skipped.items()]
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s); the records they concern were left out:")
        lines += [f"  {problem}" for problem in report.problems[:max_problems]]
        if len(report.problems) > max_problems:
            lines.append(f"  ... and {len(report.problems) - max_problems} more (use --json for all)")
    return "\n".join(lines)
