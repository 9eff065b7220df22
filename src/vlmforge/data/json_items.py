"""Read the items of a source file, JSON array or JSON Lines, with the line each item starts on.

    for line, index, item in iter_json_items("detail_23k.json"): ...

Public datasets ship as one big JSON array; reporting "record 51234 at line 1" beats "somewhere in
the file". Items are decoded one at a time with `json.JSONDecoder.raw_decode`, which also keeps
the positions. A file that does not start with `[` is read as JSON Lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from vlmforge.errors import DataError

_WHITESPACE = re.compile(r"\s*")


def iter_json_items(path: str | Path) -> Iterator[tuple[int, int, object]]:
    """Yield `(line, index, item)` for each item of a JSON array or JSONL file (UTF-8)."""
    text = Path(path).read_text(encoding="utf-8-sig")
    start = _WHITESPACE.match(text).end()
    if text.startswith("[", start):
        yield from _array_items(text, start + 1, path)
    else:
        yield from _jsonl_items(text, path)


def _array_items(text: str, position: int, path) -> Iterator[tuple[int, int, object]]:
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
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno})") from error
        yield line, index, item
        index += 1
        position = _WHITESPACE.match(text, end).end()
        if text.startswith("]", position):
            return
        if not text.startswith(",", position):
            raise DataError(f"{path}:{line + text.count(chr(10), counted_to, position)}: expected ',' or ']' after item {index - 1}")
        position = _WHITESPACE.match(text, position + 1).end()


def _jsonl_items(text: str, path) -> Iterator[tuple[int, int, object]]:
    index = 0
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            item = json.loads(content)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line}: not valid JSON ({error.msg}, column {error.colno})") from error
        yield line, index, item
        index += 1
