"""Converters: each source format in tests/fixtures/data/sources → the golden canonical JSONL."""

import json
from pathlib import Path

import pytest

from vlmforge.data.convert import ConvertOptions, convert_files, format_convert_report
from vlmforge.data.json_items import iter_json_items
from vlmforge.data.records import read_records, validate_record
from vlmforge.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SOURCES = FIXTURES / "sources"
CASES = json.loads((FIXTURES / "convert_cases.json").read_text())


def convert(tmp_path, fmt, *names, **options):
    out = tmp_path / "out.jsonl"
    report = convert_files(fmt, [SOURCES / name for name in names], out, ConvertOptions(**options))
    return report, read_records(out)


@pytest.mark.parametrize("case", CASES, ids=[case["expected"] for case in CASES])
def test_conversion_matches_golden(tmp_path, case):
    expected = FIXTURES / "expected" / case["expected"]
    report, _ = convert(tmp_path, case["format"], *case["inputs"])
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == expected.read_text(encoding="utf-8")
    problems = [[Path(p.path).name, p.line, p.record, p.kind] for p in report.problems]
    assert problems == json.loads(expected.with_suffix(".problems.json").read_text())
    assert all(validate_record(record) == [] for record in read_records(expected))


def test_llava_keeps_every_turn_and_records_sharing_an_image(tmp_path):
    _, records = convert(tmp_path, "llava", "detail_23k.json", "complex_reasoning_77k.json")
    same_image = [r for r in records if r["images"] == ["000000000139.jpg"]]
    assert [r["source"] for r in same_image] == ["detail_23k", "complex_reasoning_77k"]
    _, mix = convert(tmp_path, "llava", "llava_v1_5_mix665k.json")
    assert [len(r["messages"]) for r in mix] == [4, 4, 4, 2, 2]
    assert [r["id"] for r in mix][:3] == ["000000000632", "2354786", "043902348X"]  # int ids become strings
    assert mix[3]["images"] == [] and "<image>" not in json.dumps(mix[3])  # text-only row
    assert "\n\nBoth leave" in mix[3]["messages"][1]["content"]  # paragraph breaks kept


def test_placeholders_before_after_or_glued_are_normalised(tmp_path):
    _, detail = convert(tmp_path, "llava", "detail_23k.json")
    assert detail[0]["messages"][0]["content"] == "<image>\nWhat do you see happening in this image?"
    _, demo = convert(tmp_path, "sharegpt", "mllm_demo.json")
    assert demo[0]["messages"][2]["content"] == "<image>\nWhat are they doing?"
    assert demo[0]["images"] == ["mllm_demo_data/1.jpg", "mllm_demo_data/1.jpg"]  # the same file twice: two inputs
    assert demo[2]["messages"][0]["content"] == "Compare <image> with <image>."  # interior placeholders stay
    _, kept = convert(tmp_path, "llava", "detail_23k.json", normalize_placeholders=False)
    assert kept[0]["messages"][0]["content"].endswith("?\n<image>")


def test_coco_uses_every_caption_cleaned_and_file_names_from_images(tmp_path):
    report, records = convert(tmp_path, "coco", "captions_train2017.json")
    assert [r["messages"][1]["content"] for r in records] == [
        "A big brown bear sitting in the grass.",
        "A living room with a TV and a kitchen",
        "A WOMAN STANDING IN A KITCHEN.",
        "A room with chairs, a TV and a kitchen.",
    ]
    assert records[0]["images"] == ["COCO_train2014_000000000285.jpg"]
    assert report.skipped == {"empty caption": 1}
    assert {r["lang"] for r in records} == {"en"} and {r["type"] for r in records} == {"caption"}


def test_aic_reads_escaped_chinese_and_writes_utf8(tmp_path):
    assert "\\u4e24" in (SOURCES / "caption_train_annotations_20170902.json").read_text()
    report, records = convert(tmp_path, "aic", "caption_train_annotations_20170902.json")
    assert len(records) == 6 and report.skipped == {"empty caption": 1}
    assert records[3]["messages"][1]["content"] == "道路上有一个穿着红色上衣的男人在和人说话"
    assert records[0]["images"] == ["8f00f3d0f1008e085ab660e70dffced16a8259f6.jpg"]  # no .jpg.jpg
    assert "两个衣着休闲" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")


def test_prompt_choice_is_deterministic_by_seed_and_replaceable(tmp_path):
    def prompts(**options):
        _, records = convert(tmp_path, "aic", "caption_train_annotations_20170902.json", **options)
        return [r["messages"][0]["content"] for r in records]

    assert prompts(seed=0) == prompts(seed=0)
    assert prompts(seed=0) != prompts(seed=1)
    custom = tmp_path / "prompts.txt"
    custom.write_text("# mine\n描述图片。\n\n<image>图里有什么？\n", encoding="utf-8")
    assert set(prompts(prompts_file=custom)) <= {"<image>\n描述图片。", "<image>\n图里有什么？"}


def test_image_roots_join_paths_and_check_images_reports_missing(tmp_path):
    roots = [tmp_path / "nowhere", FIXTURES / "images" / "pretrain"]
    report, records = convert(tmp_path, "llava-pretrain", "blip_laion_cc_sbu_558k.json", image_roots=roots, check_images=True)
    assert [r["images"] for r in records] == [[str(FIXTURES / "images/pretrain/00453/004539375.jpg")]]
    assert [(p.kind, p.line, p.record) for p in report.problems] == [("missing-image", 1, 1)]
    assert str(tmp_path / "nowhere" / "00453/004539376.jpg") in report.problems[0].reason
    assert "1 problem(s)" in format_convert_report(report)


def test_json_items_track_lines_in_arrays_and_jsonl(tmp_path):
    array = tmp_path / "a.json"
    array.write_text('[\n  {"a": 1},\n\n  {"a": [\n 2]}, 3\n]', encoding="utf-8")
    assert list(iter_json_items(array)) == [(2, 0, {"a": 1}), (4, 1, {"a": [2]}), (5, 2, 3)]
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(iter_json_items(lines)) == [(1, 0, {"a": 1}), (3, 1, {"a": 2})]
    broken = tmp_path / "b.json"
    broken.write_text('[\n{"a": 1},\n{"a": }\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"b.json:3 \[record 1\]: not valid JSON"):
        list(iter_json_items(broken))


def test_missing_input_and_unknown_format_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        convert_files("llava", [tmp_path / "nope.json"], tmp_path / "o.jsonl")
    with pytest.raises(DataError):
        convert_files("coco", [SOURCES / "detail_23k.json"], tmp_path / "o.jsonl")  # an array, not the COCO object
    with pytest.raises(ConfigError, match="unknown format"):
        convert_files("csv", [SOURCES / "detail_23k.json"], tmp_path / "o.jsonl")
