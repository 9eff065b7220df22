"""The canonical record: validation finds every problem, placeholder normalisation, JSONL I/O."""

import json

import pytest

from vlmforge.data.records import Problem, iter_records, normalize_placeholders, read_records, validate_record, write_records
from vlmforge.errors import DataError


def record(messages, images=()):
    return {"id": "r", "source": "s", "images": list(images), "messages": messages}


USER = {"role": "user", "content": "Hi"}
ANSWER = {"role": "assistant", "content": "Hello."}


def kinds(problems):
    return sorted(problem.kind for problem in problems)


def test_valid_records_have_no_problem():
    assert validate_record(record([USER, ANSWER])) == []
    with_image = record([{"role": "user", "content": "<image>\nWhat?"}, ANSWER], ["a.jpg"])
    assert validate_record(with_image) == []
    system_first = record([{"role": "system", "content": "Be brief."}, USER, ANSWER, USER, ANSWER])
    assert validate_record(system_first) == []
    extra_keys = {**record([USER, ANSWER]), "type": "vqa", "lang": "en", "meta": {"x": 1}}
    assert validate_record(extra_keys) == []


@pytest.mark.parametrize(
    "bad, expected",
    [
        (record([{"role": "user", "content": "<image>\n<image>\nWhat?"}, ANSWER], ["a.jpg"]), ["placeholder-mismatch"]),
        (record([USER, ANSWER], ["a.jpg"]), ["placeholder-mismatch"]),
        (record([{"role": "", "content": "Hi"}, ANSWER]), ["empty-role"]),
        (record([{"role": "human", "content": "Hi"}, ANSWER]), ["unknown-role"]),
        (record([USER, USER, ANSWER]), ["not-alternating"]),
        (record([USER, ANSWER, USER]), ["not-alternating"]),
        (record([ANSWER, USER]), ["not-alternating"]),
        (record([USER, {"role": "assistant", "content": " \n"}]), ["untrainable-assistant"]),
        (record([USER]), ["no-assistant"]),
        (record([]), ["no-messages"]),
        (record([USER, {"role": "assistant", "content": "<image> look"}], ["a.jpg"]), ["placeholder-role"]),
        ({**record([USER, ANSWER]), "id": 7}, ["bad-field"]),
        ([1, 2], ["not-an-object"]),
    ],
)
def test_each_problem_is_named(bad, expected):
    assert kinds(validate_record(bad)) == expected


def test_all_problems_are_collected_not_just_the_first():
    bad = {"id": 3, "images": ["a.jpg"], "messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": ""}]}
    assert kinds(validate_record(bad)) == ["bad-field", "placeholder-mismatch", "unknown-role", "untrainable-assistant"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("What is it?\n<image>", "<image>\nWhat is it?"),
        ("What is it? <image>", "<image>\nWhat is it?"),
        ("<image>What is it?", "<image>\nWhat is it?"),
        ("<image>\n\nWhat is it? ", "<image>\nWhat is it?"),
        ("<image>\nWhat is it?", "<image>\nWhat is it?"),
        ("<image><image>Compare.", "<image>\n<image>\nCompare."),
        ("<image>", "<image>"),
        ("Compare <image> with <image>.", "Compare <image> with <image>."),
        ("No image here.\n\nTwo paragraphs.", "No image here.\n\nTwo paragraphs."),
    ],
)
def test_normalize_placeholders(text, expected):
    assert normalize_placeholders(text) == expected


def test_write_then_read_keeps_utf8_and_extra_keys(tmp_path):
    records = [
        {**record([{"role": "user", "content": "<image>\n这是什么？"}, {"role": "assistant", "content": "一只猫。\n\n它在睡觉。"}], ["a.jpg"]), "meta": {"k": [1]}},
        record([USER, ANSWER]),
    ]
    path = tmp_path / "out" / "data.jsonl"
    assert write_records(path, records) == 2
    text = path.read_text(encoding="utf-8")
    assert "这是什么" in text and "\\u" not in text
    assert read_records(path) == records
    assert [p.name for p in path.parent.iterdir()] == ["data.jsonl"]  # no temporary file left


def test_iter_records_gives_line_numbers_and_collects_bad_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps(record([USER, ANSWER]))
    path.write_text(f"{good}\n\n{{broken\n[1]\n{good}\n", encoding="utf-8")
    problems = []
    assert [line for line, _ in iter_records(path, problems)] == [1, 5]
    assert [(p.line, p.kind) for p in problems] == [(3, "bad-json"), (4, "not-an-object")]
    assert str(problems[0]).startswith(f"{path}:3: not valid JSON")
    with pytest.raises(DataError, match=":3: not valid JSON"):
        read_records(path)


def test_problem_location_names_line_and_array_record():
    problem = Problem("missing-image", "missing image a.jpg").at("data.json", 1, 51234)
    assert str(problem) == "data.json:1 [record 51234]: missing image a.jpg"
    assert problem.to_dict()["record"] == 51234


def test_parse_line_turns_every_unreadable_line_into_a_problem():
    from vlmforge.data.records import parse_line

    assert parse_line(b'\xef\xbb\xbf{"a": 1}\n', first=True) == ({"a": 1}, None)  # a BOM on line 1
    assert parse_line(b"  \n") == (None, None)
    kinds = {raw: parse_line(raw)[1].kind for raw in (b'{"a": "\xff"}', b"{", b"[" * 50_000, b"[1]")}
    assert kinds == {b'{"a": "\xff"}': "bad-encoding", b"{": "bad-json", b"[" * 50_000: "bad-json", b"[1]": "not-an-object"}


def test_text_problem_finds_lone_surrogates_and_hostile_nesting_without_recursion():
    from vlmforge.data.records import MAX_NESTING, text_problem

    assert text_problem({"messages": [{"content": "fine 😀"}]}) is None
    assert "\\ud800" in text_problem({"messages": [{"content": "\ud800"}]}).reason
    assert text_problem({"\udcff": 1}).kind == "bad-text"  # keys too
    nested: list = []
    for _ in range(MAX_NESTING + 1):
        nested = [nested]
    assert "nested" in text_problem({"meta": nested}).reason
    assert validate_record({"messages": [{"role": "user", "content": "\ud800"}]})[0].kind == "bad-text"
