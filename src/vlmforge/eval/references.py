"""Read what `vlmforge eval score` compares: a predictions JSONL and the reference records.

Predictions: one `{"id": ..., "prediction": "..."}` per line (`null` or `""` is an empty
prediction: it scores zero, it is not dropped). References: vlmforge record JSONL; a record's
reference is its last assistant turn, or its `references` list when it has one (e.g. the five
COCO captions); several records with the same id add up. Optional fields: `type` (VQA question
type) and `lang` ("en" / "zh"). Ids match as strings, so `123` and `"123"` are the same id.

Lines are parsed by the data layer (`vlmforge.data.records.iter_records`). Problems are collected
as `file:line: reason` and raised together as one `DataError`; a whole-file JSON array (a source
format not yet converted) is refused at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.records import Problem, iter_records
from vlmforge.errors import DataError

_SHOWN_PROBLEMS = 5


@dataclass
class Reference:
    """Everything the references file says about one id."""

    id: str
    answers: list[str]
    location: str  # file:line of its first record
    question: str = ""
    type: str | None = None
    lang: str | None = None


@dataclass
class Prediction:
    id: str
    text: str
    location: str


@dataclass
class _Problems:
    """Data problems collected while reading (`file:line: reason`), raised together in line order."""

    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, location: str, reason: str) -> None:
        self.items.append((int(location.rsplit(":", 1)[1]), f"{location}: {reason}"))

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        self.items.sort(key=lambda item: item[0])
        shown = "; ".join(text for _, text in self.items[:_SHOWN_PROBLEMS])
        more = f" (and {len(self.items) - _SHOWN_PROBLEMS} more)" if len(self.items) > _SHOWN_PROBLEMS else ""
        raise DataError(f"{len(self.items)} problem(s) in {what}: {shown}{more}")


def read_references(path: str | Path) -> dict[str, Reference]:
    """Reference answers by id (as a string), in file order."""
    path = Path(path)
    problems, references = _Problems(), {}
    for location, record in _json_lines(path, problems):
        reference = _reference_from_record(record, location, problems)
        if reference is None:
            continue
        if reference.id in references:
            references[reference.id].answers.extend(reference.answers)
        else:
            references[reference.id] = reference
    problems.raise_if_any(f"reference file {path}")
    if not references:
        raise DataError(f"reference file {path} has no records")
    return references


def read_predictions(path: str | Path, references: dict[str, Reference], reference_path: str | Path) -> list[Prediction]:
    """Predictions in file order; every id must be in `references` and appear once."""
    path = Path(path)
    problems, predictions, seen = _Problems(), [], {}
    for location, record in _json_lines(path, problems):
        prediction = _prediction_from_record(record, location, problems)
        if prediction is None:
            continue
        if prediction.id in seen:
            problems.add(location, f"id {prediction.id!r} is predicted twice (first at {seen[prediction.id]})")
        elif prediction.id not in references:
            problems.add(location, f"id {prediction.id!r} has no reference in {reference_path}")
        else:
            seen[prediction.id] = location
            predictions.append(prediction)
    problems.raise_if_any(f"predictions file {path}")
    if not predictions:
        raise DataError(f"predictions file {path} has no predictions")
    return predictions


def _json_lines(path: Path, problems: _Problems):
    """(file:line, JSON object) for each non-blank line, read by the data layer; bad lines become problems."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    _refuse_json_array(path)
    parse_problems: list[Problem] = []
    for line_number, record in iter_records(path, parse_problems):
        yield f"{path}:{line_number}", record
    for problem in parse_problems:
        problems.add(f"{path}:{problem.line}", problem.reason)


def _refuse_json_array(path: Path) -> None:
    """A whole-file JSON array (LLaVA, COCO, ...) gets one clear error, not one per line."""
    with open(path, encoding="utf-8") as handle:
        start = handle.read(256).lstrip()
    if start.startswith("["):
        raise DataError(f"{path}:1: one JSON array, not JSONL (one object per line); convert it with `vlmforge data convert`")


def _record_id(record: dict, location: str, problems: _Problems) -> str | None:
    record_id = record.get("id")
    if record_id is None or isinstance(record_id, (dict, list)) or str(record_id) == "":
        problems.add(location, "record has no 'id'")
        return None
    return str(record_id)


def _prediction_from_record(record: dict, location: str, problems: _Problems) -> Prediction | None:
    record_id = _record_id(record, location, problems)
    if record_id is None:
        return None
    if "prediction" not in record:
        problems.add(location, f"id {record_id!r} has no 'prediction' field")
        return None
    text = record["prediction"]
    if text is not None and not isinstance(text, str):
        problems.add(location, f"id {record_id!r}: 'prediction' must be a string, got {type(text).__name__}")
        return None
    return Prediction(record_id, text or "", location)


def _reference_from_record(record: dict, location: str, problems: _Problems) -> Reference | None:
    record_id = _record_id(record, location, problems)
    if record_id is None:
        return None
    messages = record.get("messages")
    if messages is not None and not _is_message_list(messages):
        problems.add(location, f"id {record_id!r}: 'messages' must be a list of {{'role', 'content'}} objects")
        return None
    answers = _answers(record, messages or [], record_id, location, problems)
    if answers is None:
        return None
    lang, qtype = record.get("lang"), record.get("type")
    return Reference(
        id=record_id,
        answers=answers,
        location=location,
        question=_last_question(messages or []),
        type=None if qtype is None else str(qtype),
        lang=lang if isinstance(lang, str) else None,
    )


def _answers(record: dict, messages: list, record_id: str, location: str, problems: _Problems) -> list[str] | None:
    """The record's non-empty reference texts: its `references` list, else its last assistant turn."""
    if "references" in record:
        texts = record["references"]
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            problems.add(location, f"id {record_id!r}: 'references' must be a list of strings")
            return None
    else:
        replies = [_content_text(m.get("content")) for m in messages if m.get("role") == "assistant"]
        if not replies:
            hint = " (is this a predictions file?)" if "prediction" in record else ""
            problems.add(location, f"id {record_id!r} has no assistant turn in 'messages' and no 'references'{hint}")
            return None
        texts = replies[-1:]
    answers = [text.strip() for text in texts if text.strip()]
    if not answers:
        problems.add(location, f"id {record_id!r}: every reference answer is empty")
        return None
    return answers


def _is_message_list(messages) -> bool:
    return isinstance(messages, list) and all(isinstance(m, dict) and "role" in m for m in messages)


def _content_text(content) -> str:
    """Text of a message: a string, or the text parts of a content-part list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")
    return ""


def _last_question(messages: list) -> str:
    """The last user turn before the last assistant turn, without the image placeholder."""
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    questions = [_content_text(m.get("content")) for m in messages[:last_assistant] if m.get("role") == "user"]
    return questions[-1].replace(IMAGE_PLACEHOLDER, "").strip() if questions else ""
