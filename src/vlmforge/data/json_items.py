"""Read the items of a source file, JSON array or JSON Lines, with the line each item starts on.

    for line, index, item in iter_json_items("detail_23k.json"): ...

Public datasets ship as one big JSON array; reporting "record 51234 at line 1" beats "somewhere in
the file". Items are decoded one at a time with `json.JSONDecoder.raw_decode`, which also keeps
the positions. A file that does not start with `[` is read as JSON Lines.

Broken input never raises mid-file: a JSONL line that is not JSON (or not UTF-8) becomes a
`Problem` with its line and the next line is read; in an array, items stay readable up to the
first syntax error, which is reported with its line (the rest of that file cannot be located).
Bytes that are not UTF-8 inside an array are kept as lone surrogates (`surrogateescape`), so the
record they belong to fails validation (`bad-text`) and only that record is left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from vlmforge.data.records import Problem, parse_line
from vlmforge.errors import DataError

_WHITESPACE = re.compile(r"\s*")


def iter_json_items(path: str | Path, problems: list[Problem] | None = None) -> Iterator[tuple[int, int, object]]:
    """Yield `(line, index, item)` for each item of a JSON array or JSONL file (UTF-8, a BOM allowed).

    Unreadable items raise `DataError`, or, when a `problems` list is given, are appended to it.
    """
    raw = _read_bytes(path)
    text = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    start = _WHITESPACE.match(text).end()
    found: list[Problem] = []
    items = _array_items(text, start + 1, found) if text.startswith("[", start) else _jsonl_items(raw, found)
    for item in items:
        if found:
            _raise_or_collect(found, path, problems)
        yield item
    _raise_or_collect(found, path, problems)


def load_json_document(path: str | Path) -> object:
    """A whole-file JSON document (e.g. COCO annotations); `DataError` with file:line when unreadable."""
    text = _read_bytes(path).decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from error
    except RecursionError as error:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from error


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from error


def _raise_or_collect(found: list[Problem], path, problems: list[Problem] | None) -> None:
    located = [problem.at(path, problem.line, problem.record) for problem in found]
    found.clear()
    if problems is None and located:
        raise DataError(str(located[0]))
    if problems is not None:
        problems += located


def _array_items(text: str, position: int, found: list[Problem]) -> Iterator[tuple[int, int, object]]:
    decoder = json.JSONDecoder()
    line, counted_to, index = 1, 0, 0
    position = _WHITESPACE.match(text, position).end()
    if text.startswith("]", position):
        return
    while True:
        line += text.count("\n", counted_to, position)
        counted_to = position
        try:
            item, end = decoder.raw_decode(text, position)
        except (json.JSONDecodeError, RecursionError) as error:
            found.append(_array_problem(error, line, index))
            return
        yield line, index, item
        index += 1
        position = _WHITESPACE.match(text, end).end()
        if text.startswith("]", position):
            return
        if not text.startswith(",", position):
            where = line + text.count("\n", counted_to, position)
            found.append(Problem("bad-json", f"expected ',' or ']' after item {index - 1}; the rest of the file is left out", line=where))
            return
        position = _WHITESPACE.match(text, position + 1).end()


def _array_problem(error: Exception, line: int, index: int) -> Problem:
    """The syntax error that ends the readable part of an array, at its own line when known."""
    if isinstance(error, json.JSONDecodeError):
        reason, line = f"{error.msg}, column {error.colno}", error.lineno
    else:
        reason = "nested too deeply"
    return Problem("bad-json", f"not valid JSON ({reason}); item {index} and the rest of the file are left out",
                   line=line, record=index)


def _jsonl_items(raw: bytes, found: list[Problem]) -> Iterator[tuple[int, int, object]]:
    index = 0
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            found.append(parse_line(line, number == 1)[1].at("", number))
            continue
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as error:
            found.append(Problem("bad-json", f"not valid JSON ({error.msg}, column {error.colno})", line=number))
            continue
        except RecursionError:
            found.append(Problem("bad-json", "not valid JSON (nested too deeply)", line=number))
            continue
        yield number, index, item
        index += 1
