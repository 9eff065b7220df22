"""The one atomic writer: a failed write leaves the old file whole and no temporary behind."""

import pytest

from vlmforge.data.records import read_records, write_records
from vlmforge.errors import DataError
from vlmforge.utils.atomic import atomic_write_text


def _records_then_failure():
    yield {"id": "new-1"}
    raise OSError(28, "No space left on device")


def test_a_records_write_that_fails_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "data.jsonl"
    write_records(path, [{"id": "old"}])
    with pytest.raises(DataError, match="cannot write"):
        write_records(path, _records_then_failure())
    assert read_records(path) == [{"id": "old"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_atomic_write_text_replaces_and_returns_the_path(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    assert atomic_write_text(path, "néw\n") == path
    assert path.read_text(encoding="utf-8") == "néw\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
