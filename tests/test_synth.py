"""Synthetic shape-scene dataset: determinism, vocabulary, unambiguous questions, pixels that match the records."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.records import validate_record
from vlmforge.data.synth import scene_of_record, write_synthetic_dataset
from vlmforge.data.synth_language import COUNT_WORDS, POSITION_NAMES, describe_scene
from vlmforge.data.synth_scenes import COLOUR_BY_NAME, COLOURS, SHAPES, cell_box, scene_key
from vlmforge.errors import ConfigError

SMALL = {"num_train": 240, "num_val": 24, "num_test": 96}


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("synth")
    summary = write_synthetic_dataset(out_dir, seed=3, **SMALL)
    splits = {name: read_jsonl(summary[name]) for name in ("train", "val", "test", "captions")}
    return out_dir, summary, splits


def test_records_pass_validation(dataset):
    _, _, splits = dataset
    problems = [(record["id"], problem) for records in splits.values() for record in records
                for problem in validate_record(record)]
    assert problems == []


def test_summary_counts_and_files(dataset):
    out_dir, summary, splits = dataset
    assert summary["counts"] == {"train": 240, "val": 24, "test": 96, "captions": 240}
    assert {name: len(records) for name, records in splits.items()} == summary["counts"]
    assert len(list((out_dir / "images" / "train").glob("*.png"))) == 240
    for records in splits.values():
        for record in records:
            assert (out_dir / record["images"][0]).is_file()


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    out_dir, _, _ = dataset
    write_synthetic_dataset(tmp_path / "again", seed=3, **SMALL)
    write_synthetic_dataset(tmp_path / "other", seed=4, **SMALL)
    for name in ("train.jsonl", "test.jsonl", "captions.jsonl", "images/test/000007.png"):
        assert (tmp_path / "again" / name).read_bytes() == (out_dir / name).read_bytes()
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (out_dir / "train.jsonl").read_bytes()


def test_vocabulary_is_rich_enough(dataset):
    _, _, splits = dataset
    objects = [obj for record in splits["train"] for obj in record["meta"]["objects"]]
    assert len({obj["colour"] for obj in objects}) >= 6
    assert len({obj["shape"] for obj in objects}) >= 3
    assert len({(obj["row"], obj["col"]) for obj in objects}) == 9
    assert {len(record["meta"]["objects"]) for record in splits["train"]} == {1, 2, 3}


def test_objects_in_a_scene_are_unambiguous(dataset):
    _, _, splits = dataset
    for record in splits["train"] + splits["test"]:
        objects = record["meta"]["objects"]
        for attribute in ("shape", "colour"):
            assert len({obj[attribute] for obj in objects}) == len(objects), record["id"]
        assert len({(obj["row"], obj["col"]) for obj in objects}) == len(objects), record["id"]


def test_both_languages_and_all_question_types(dataset):
    _, _, splits = dataset
    test_buckets = Counter((record["type"], record["lang"]) for record in splits["test"])
    assert len(test_buckets) == 12 and set(test_buckets.values()) == {8}  # 5 types + follow_up, balanced
    assert {record["lang"] for record in splits["train"]} == {"en", "zh"}
    assert {record["lang"] for record in splits["captions"]} == {"en", "zh"}
    assert any(len(record["messages"]) > 2 for record in splits["train"])  # multi-turn conversations
    for record in splits["test"]:
        assert len(record["messages"]) == (4 if record["type"] == "follow_up" else 2)


def test_follow_ups_ask_every_type_as_the_second_turn(dataset):
    _, _, splits = dataset
    follow_ups = [record for record in splits["test"] if record["type"] == "follow_up"]
    turn_types = [record["meta"]["turn_types"] for record in follow_ups]
    assert all(len(types) == 2 and types[0] != types[1] for types in turn_types)
    assert {types[1] for types in turn_types} == {"colour", "shape", "position", "count", "by_position"}
    assert all(IMAGE_PLACEHOLDER not in record["messages"][2]["content"] for record in follow_ups)


def test_answers_are_canonical_and_match_the_scene(dataset):
    _, _, splits = dataset
    for record in splits["test"]:
        answer, lang, objects = record["messages"][-1]["content"], record["lang"], record["meta"]["objects"]
        colours = {obj["colour"] if lang == "en" else COLOUR_BY_NAME[obj["colour"]].zh for obj in objects}
        shapes = {obj["shape"] if lang == "en" else {s.name: s.zh for s in SHAPES}[obj["shape"]] for obj in objects}
        qtype = record["meta"]["turn_types"][-1]
        if qtype == "count":
            assert answer == COUNT_WORDS[lang][len(objects) - 1]
        elif qtype == "position":
            assert answer in {POSITION_NAMES[lang][obj["row"]][obj["col"]] for obj in objects}
        elif qtype == "colour":
            assert answer in colours
        elif qtype == "shape":
            assert answer in shapes
        else:
            assert qtype == "by_position" and answer in colours | shapes


def test_question_names_the_object_in_en_and_zh(dataset):
    _, _, splits = dataset
    english = [r for r in splits["test"] if r["type"] == "colour" and r["lang"] == "en"]
    chinese = [r for r in splits["test"] if r["type"] == "count" and r["lang"] == "zh"]
    assert all(r["messages"][0]["content"].startswith("What color is the") for r in english)
    assert all("几个" in r["messages"][0]["content"] for r in chinese)
    assert {r["messages"][1]["content"] for r in chinese} <= set(COUNT_WORDS["zh"])


def test_image_placeholder_only_in_first_user_turn(dataset, tmp_path):
    _, _, splits = dataset
    for record in splits["train"]:
        placements = [IMAGE_PLACEHOLDER in message["content"] for message in record["messages"]]
        assert placements == [True] + [False] * (len(placements) - 1)
        assert record["messages"][0]["content"].endswith("\n" + IMAGE_PLACEHOLDER)  # question before the image
    summary = write_synthetic_dataset(tmp_path, num_train=4, num_val=1, num_test=1, question_position="after")
    assert read_jsonl(summary["train"])[0]["messages"][0]["content"].startswith(IMAGE_PLACEHOLDER + "\n")


def test_test_scenes_are_not_train_scenes(dataset):
    _, _, splits = dataset
    train_keys = {scene_key(scene_of_record(record)) for record in splits["train"]}
    held_out_keys = {scene_key(scene_of_record(r)) for r in splits["test"] + splits["val"]}
    assert not train_keys & held_out_keys


def test_pixels_show_each_object_colour_in_its_cell(dataset):
    out_dir, _, splits = dataset
    for record in splits["test"][:20]:
        image = Image.open(out_dir / record["images"][0]).convert("RGB")
        assert image.size == (48, 48)
        occupied = set()
        for obj in record["meta"]["objects"]:
            cell_pixels = np.asarray(image.crop(cell_box(obj["row"], obj["col"], 48))).reshape(-1, 3)  # (P, 3)
            share = (cell_pixels == COLOUR_BY_NAME[obj["colour"]].rgb).all(axis=1).mean()
            assert share > 0.15, (record["id"], obj)
            occupied.add((obj["row"], obj["col"]))
        empty_cells = [(r, c) for r in range(3) for c in range(3) if (r, c) not in occupied]
        for row, col in empty_cells:
            assert (np.asarray(image.crop(cell_box(row, col, 48))) == 245).all()


def test_image_size_is_configurable(tmp_path):
    summary = write_synthetic_dataset(tmp_path, num_train=2, num_val=1, num_test=1, image_size=64)
    record = read_jsonl(summary["train"])[0]
    assert Image.open(tmp_path / record["images"][0]).size == (64, 64)


def test_captions_name_every_cell_in_order(dataset):
    _, _, splits = dataset
    record = splits["captions"][0]
    scene = scene_of_record(record)
    assert record["type"] == "caption"
    assert record["messages"][1]["content"] == describe_scene(scene, record["lang"])
    english = describe_scene(scene, "en").split("; ")
    assert [part.split(": ")[0] for part in english] == [name for row in POSITION_NAMES["en"] for name in row]
    assert describe_scene(scene, "zh").startswith("左上：")
    assert sum(part.endswith("nothing") for part in english) == 9 - len(scene)


def test_colour_palette_is_distinct():
    assert len({colour.rgb for colour in COLOURS}) == len(COLOURS) >= 6


def test_bad_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="question_position"):
        write_synthetic_dataset(tmp_path, num_train=1, question_position="middle")
    with pytest.raises(ConfigError, match="image_size"):
        write_synthetic_dataset(tmp_path, num_train=1, image_size=6)


def test_referents_choose_how_questions_name_their_object(tmp_path):
    summary = write_synthetic_dataset(tmp_path, seed=1, num_train=200, num_val=0, num_test=80,
                                      referents=("shape", "colour"))
    assert summary["referents"] == ["shape", "colour"]
    records = read_jsonl(summary["train"]) + read_jsonl(summary["test"])
    position_names = [name for lang in POSITION_NAMES.values() for row in lang for name in row]
    questions = [m["content"] for r in records for m in r["messages"] if m["role"] == "user"]
    assert not [q for q in questions if any(name in q for name in position_names)]
    types = Counter(t for r in records for t in r["meta"]["turn_types"])
    assert set(types) == {"colour", "shape", "position", "count"}  # no by_position without the referent


def test_all_referents_by_default(dataset):
    _, summary, splits = dataset
    assert summary["referents"] == ["shape", "colour", "position"]
    position_names = [name for lang in POSITION_NAMES.values() for row in lang for name in row]
    def named_by_cell(question):
        return any(name in question for name in position_names)

    first_questions = [(r["type"], r["messages"][0]["content"]) for r in splits["train"]]
    assert all(named_by_cell(q) == (qtype == "by_position") for qtype, q in first_questions if qtype != "position")
    assert any(qtype == "by_position" for qtype, _ in first_questions)


def test_bad_referents_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown referents"):
        write_synthetic_dataset(tmp_path, num_train=1, referents=("size",))
    with pytest.raises(ConfigError, match="no way to ask a colour question"):
        write_synthetic_dataset(tmp_path, num_train=1, referents=("colour",))


def test_turn_cells_name_the_object_each_question_asks_about(dataset):
    _, _, splits = dataset
    for record in splits["train"] + splits["test"]:
        objects = {obj["row"] * 3 + obj["col"]: obj for obj in record["meta"]["objects"]}
        types, cells = record["meta"]["turn_types"], record["meta"]["turn_cells"]
        assert len(cells) == len(types) == len(record["messages"]) // 2
        for qtype, cell, answer in zip(types, cells, record["messages"][1::2]):
            if qtype == "count":
                assert cell is None
                continue
            obj = objects[cell]
            lang = record["lang"]
            names = {obj["colour"], obj["shape"], COLOUR_BY_NAME[obj["colour"]].zh,
                     {s.name: s.zh for s in SHAPES}[obj["shape"]], POSITION_NAMES[lang][obj["row"]][obj["col"]]}
            assert answer["content"] in names, record["id"]
