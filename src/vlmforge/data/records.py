"""The canonical vlmforge record: one conversation per JSON Lines line, its validation and file I/O.

    {"id": "coco-42", "source": "coco", "images": ["train2017/000000442786.jpg"],
     "messages": [{"role": "user", "content": "<image>\\nWhat is happening?"},
                  {"role": "assistant", "content": "..."}]}

Roles are system / user / assistant; each `<image>` placeholder binds to the next entry of `images`;
a record without images is text-only. Any other key (`type`, `lang`, `meta`, ...) is kept as is.
Validation collects every problem of a record instead of stopping at the first one.
See docs/data.md for the full description.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.errors import DataError
from vlmforge.utils.atomic import atomic_text_file

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: a short `kind` code, a readable `reason`, and where it is.

    `line` is the 1-based line of the record in its file; `record` is its 0-based index in a JSON
    array source (whole-file JSON is often a single line, so the line alone would not find it).
    """

    kind: str
    reason: str
    path: str = ""
    line: int | None = None
    record: int | None = None

    def at(self, path: str | Path, line: int | None = None, record: int | None = None) -> Problem:
        return replace(self, path=str(path), line=line, record=record)

    def location(self) -> str:
        where = self.path + (f":{self.line}" if self.line is not None else "")
        return where + (f" [record {self.record}]" if self.record is not None else "")

    def __str__(self) -> str:
        return f"{self.location()}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Validation


def validate_record(record: object) -> list[Problem]:
    """Every structural problem of one record (an empty list when it is valid)."""
    if not isinstance(record, dict):
        return [Problem("not-an-object", f"a record must be a JSON object, got {type(record).__name__}")]
    bad_text = text_problem(record)
    if bad_text is not None:
        return [bad_text]  # nothing downstream (tokenizer, writer) can handle it
    problems = _check_keys(record)
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return problems + [Problem("no-messages", "`messages` must be a non-empty list")]
    problems += _check_messages(messages)
    problems += _check_turn_order(messages)
    problems += _check_placeholders(messages, record.get("images", []))
    return problems


MAX_NESTING = 64  # records are shallow; deeper JSON is hostile and would overflow recursive code
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(item: object) -> Problem | None:
    """A `bad-text` problem when a string (key or value) holds a lone surrogate, or nesting is too deep.

    A lone surrogate comes from a JSON escape such as `"\\ud800"` or from bytes that are not UTF-8
    (decoded with `surrogateescape`); tokenizers and UTF-8 writers both fail on it. The scan is
    iterative, so hostile nesting cannot overflow the stack here.
    """
    stack = [(item, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            return Problem("bad-text", f"JSON nested more than {MAX_NESTING} levels deep")
        if isinstance(value, dict):
            stack += [(key, depth) for key in value] + [(child, depth + 1) for child in value.values()]
        elif isinstance(value, list):
            stack += [(child, depth + 1) for child in value]
        elif isinstance(value, str) and _SURROGATE.search(value):
            char = _SURROGATE.search(value).group()
            return Problem("bad-text", f"text holds {ascii(char)[1:-1]}, a lone surrogate or bytes that are not UTF-8")
    return None


def _check_keys(record: dict) -> list[Problem]:
    problems = []
    for key in ("id", "source"):
        if key in record and not isinstance(record[key], str):
            problems.append(Problem("bad-field", f"`{key}` must be a string, got {type(record[key]).__name__}"))
    images = record.get("images", [])
    if not isinstance(images, list) or not all(isinstance(path, str) and path for path in images):
        problems.append(Problem("bad-field", "`images` must be a list of non-empty path strings"))
    return problems


def _check_messages(messages: list) -> list[Problem]:
    problems = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(message, dict):
            problems.append(Problem("bad-message", f"message {index} is not an object"))
        elif not role:
            problems.append(Problem("empty-role", f"message {index} has an empty or missing role"))
        elif role not in ROLES:
            problems.append(Problem("unknown-role", f"message {index} has unknown role {role!r} (use {'/'.join(ROLES)})"))
        if isinstance(message, dict) and not isinstance(content, str):
            problems.append(Problem("bad-message", f"message {index} content must be a string"))
        elif role == "assistant" and not content.strip():
            problems.append(Problem("untrainable-assistant", f"message {index}: empty assistant turn, nothing to train on"))
        elif role == "user" and not content.strip():
            problems.append(Problem("empty-content", f"message {index}: empty user turn"))
    return problems


def _roles(messages: list) -> list:
    return [message.get("role") if isinstance(message, dict) else None for message in messages]


def _check_turn_order(messages: list) -> list[Problem]:
    """After an optional leading system message: user, assistant, user, assistant, ... ending on assistant."""
    roles = _roles(messages)
    if any(role not in ROLES for role in roles):
        return []  # already reported as unknown / empty roles
    start = 1 if roles[0] == "system" else 0
    turns = roles[start:]
    if "assistant" not in turns:
        return [Problem("no-assistant", "no assistant turn: nothing to train on")]
    for offset, role in enumerate(turns):
        expected = "user" if offset % 2 == 0 else "assistant"
        if role != expected:
            return [Problem("not-alternating", f"message {start + offset} is {role}, expected {expected} (turns must alternate)")]
    if turns[-1] == "user":
        return [Problem("not-alternating", f"message {len(roles) - 1} is a final user turn with no answer")]
    return []


def _check_placeholders(messages: list, images: object) -> list[Problem]:
    problems = []
    total = 0
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            continue
        count = content.count(IMAGE_PLACEHOLDER)
        total += count
        if count and message.get("role") != "user":
            problems.append(Problem("placeholder-role", f"message {index} ({message.get('role')}) holds {IMAGE_PLACEHOLDER}; only user turns may"))
    num_images = len(images) if isinstance(images, list) else 0
    if total != num_images:
        problems.append(Problem("placeholder-mismatch", f"{total} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s)"))
    return problems


# ---------------------------------------------------------------------------------------------
# Placeholder normalisation

_EDGE_PLACEHOLDERS = re.compile(r"^\s*((?:<image>\s*)+)|((?:\s*<image>)+)\s*$")


def normalize_placeholders(text: str) -> str:
    """Move `<image>` placeholders that stand before or after the question to the front, LLaVA v1.5 style.

    `"What is it?\\n<image>"`, `"<image>What is it?"` and `"<image>\\n\\nWhat is it? "` all become
    `"<image>\\nWhat is it?"`; several images give `"<image>\\n<image>\\nWhat ...?"`. A placeholder
    in the middle of the text is left where it is (its position carries meaning), as is any text
    without placeholders.
    """
    count = text.count(IMAGE_PLACEHOLDER)
    if count == 0:
        return text
    question = _EDGE_PLACEHOLDERS.sub("", text).strip()
    if IMAGE_PLACEHOLDER in question:
        return text
    prefix = "\n".join([IMAGE_PLACEHOLDER] * count)
    return f"{prefix}\n{question}" if question else prefix


# ---------------------------------------------------------------------------------------------
# Files


def iter_records(path: str | Path, problems: list[Problem] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, record)` for each non-blank line of a JSONL file (UTF-8, a BOM allowed).

    A line that is not a JSON object (bad JSON, bytes that are not UTF-8, hostile nesting) raises
    `DataError`, or, when a `problems` list is given, is appended to it and skipped, so a check
    can report every bad line at once.
    """
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error
    with handle:
        for line_number, raw in enumerate(handle, start=1):
            record, problem = parse_line(raw, first=line_number == 1)
            if record is None and problem is None:
                continue  # a blank line
            if problem is None:
                yield line_number, record
            elif problems is None:
                raise DataError(str(problem.at(path, line_number)))
            else:
                problems.append(problem.at(path, line_number))


def require_files(paths: Iterable[str | Path]) -> None:
    """One `DataError` naming every input that is missing or is a folder, before any work is done."""
    folders = [str(path) for path in paths if Path(path).is_dir()]
    missing = [str(path) for path in paths if not Path(path).exists()]
    if folders:
        raise DataError(f"{', '.join(folders)}: a folder, not a data file; name the file(s) inside it")
    if missing:
        raise DataError(f"file(s) not found: {', '.join(missing)}")


def parse_line(raw: bytes, first: bool = False) -> tuple[dict | None, Problem | None]:
    """One JSONL line as a record, or the problem that stops it; `(None, None)` for a blank line.

    The one place where a line's bytes become a record, for `data check`, `data convert` and
    training alike: a UTF-8 BOM (on the first line) is accepted, bytes that are not UTF-8 and JSON
    nested too deeply for the decoder are problems, never exceptions.
    """
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as error:
        return None, Problem("bad-encoding", f"not UTF-8 text (byte 0x{raw[error.start]:02x} at byte {error.start + 1})")
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return None, Problem("bad-json", f"not valid JSON ({error.msg}, column {error.colno})")
    except RecursionError:
        return None, Problem("bad-json", "not valid JSON (nested too deeply)")
    if not isinstance(record, dict):
        return None, Problem("not-an-object", f"a record must be a JSON object, got {type(record).__name__}")
    return record, None


def read_records(path: str | Path) -> list[dict]:
    """All records of a JSONL file; raises `DataError` on the first line that is not a JSON object."""
    return [record for _, record in iter_records(path)]


def dumps_record(record: dict) -> str:
    """One record as one JSONL line (no newline), UTF-8 text kept readable."""
    return json.dumps(record, ensure_ascii=False)


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSONL through a temporary file and a rename; returns how many were written."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; name the output file (e.g. {path / 'data.jsonl'})")
    count = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_text_file(path, newline="\n") as handle:
            for record in records:
                handle.write(dumps_record(record) + "\n")
                count += 1
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}") from error
    return count
