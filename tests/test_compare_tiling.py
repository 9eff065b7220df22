"""scripts/compare_tiling.py's from-scratch task: scenes, questions, tower labels, the LM's stand-in texts.

The measured comparison itself (docs/high-resolution.md) takes ~25 minutes and is not run here.
"""

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_tiling.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("compare_tiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_region_scene_draws_each_object_small_inside_its_region(script):
    from vlmforge.data.synth_scenes import BACKGROUND_RGB, COLOUR_BY_NAME

    rng = random.Random(0)
    for _ in range(5):
        scene = script.sample_count_scene(rng)
        pixels = np.asarray(script.draw_region_scene(rng, scene))
        assert pixels.shape == (144, 144, 3) and 1 <= len(scene) <= 6
        assert len({(obj.row, obj.col) for obj in scene}) == len(scene)
        for obj in scene:
            region = pixels[obj.row * 48:(obj.row + 1) * 48, obj.col * 48:(obj.col + 1) * 48]
            ys, xs = np.nonzero((region == COLOUR_BY_NAME[obj.colour].rgb).all(-1))
            assert len(set(ys // 16)) == 1 and len(set(xs // 16)) == 1  # inside one 16 px cell of its region
            assert 7 <= np.ptp(ys) + 1 <= 10  # small: a 2-3 px blob once the scene is seen at 48 px
        drawn = sum((pixels[o.row * 48:(o.row + 1) * 48, o.col * 48:(o.col + 1) * 48] != BACKGROUND_RGB).any(-1).sum()
                    for o in scene)
        assert drawn == (pixels != BACKGROUND_RGB).any(-1).sum()  # nothing outside the objects' regions


def test_count_questions_count_the_named_attribute(script):
    from vlmforge.data.synth_scenes import SceneObject

    scene = (SceneObject(0, 0, "square", "red"), SceneObject(0, 1, "square", "blue"), SceneObject(2, 2, "circle", "red"))
    rng = random.Random(0)
    for _ in range(20):
        question, answer = script.scene_conversation(rng, scene, "count_shape")
        shape = question.removeprefix("How many ").removesuffix("s are there?")
        assert answer == script.COUNT_WORDS[sum(obj.shape == shape for obj in scene)]
        question, answer = script.scene_conversation(rng, scene, "count_colour")
        colour = question.split()[2]
        assert answer == script.COUNT_WORDS[sum(obj.colour == colour for obj in scene)]
    assert script.scene_conversation(rng, scene, "caption")[1].startswith("top left: a red square; ")


def test_tower_records_label_tiles_per_cell_and_views_per_region(script, tmp_path):
    train = script.write_split(tmp_path / "data", "train", 6, 144, 0, "regions")
    records = [json.loads(line) for line in train.read_text().splitlines()]
    images = script.tower_records(tmp_path / "tower", records, train.parent, 4, 0)
    assert len(images) == 10
    assert [record["meta"] for record in images[4:]] == [record["meta"] for record in records]
    for record in images:
        with __import__("PIL").Image.open(tmp_path / "tower" / record["images"][0]) as image:
            assert image.size == (48, 48)
    assert [record["type"] for record in records] == ["count_shape", "count_colour", "caption"] * 2


def test_idefics3_layout_is_the_processors(script):
    import transformers

    from vlmforge.model.idefics3 import add_idefics3_tokens
    from vlmforge.model.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    add_idefics3_tokens(tokenizer)
    image_processor = transformers.Idefics3ImageProcessorPil(max_image_size={"longest_edge": 48})
    processor = transformers.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1)
    expected = processor.replace_image_token({"rows": [[3]], "cols": [[3]]}, 0)
    assert script.idefics3_layout(["<image>"] * 10) == expected


def test_cell_word_messages_in_both_layouts(script):
    record = {"messages": [{"role": "user", "content": "How many squares are there?\n<image>"},
                           {"role": "assistant", "content": "one"}],
              "meta": {"objects": [{"row": 0, "col": 0, "shape": "square", "colour": "red"}]}}
    llava = script.cell_word_messages(record, "llava")[0]["content"]
    idefics3 = script.cell_word_messages(record, "idefics3")[0]["content"]
    assert llava.endswith("\n<red_square>" + "<empty>" * 8)
    assert "<row_1_col_1><red_square>" in idefics3 and "<global-img><empty>" in idefics3
    assert idefics3.count("<empty>") == 9 and "<image>" not in llava + idefics3


def test_cell_word_composition_sums_the_naming_words(script):
    from vlmforge.model.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.add_tokens(list(script.CELL_WORDS))
    ids, weights = script.cell_word_composition(tokenizer)
    assert ids.tolist() == tokenizer.convert_tokens_to_ids(list(script.CELL_WORDS))
    assert weights.shape == (19, len(tokenizer)) and np.allclose(weights.sum(-1).numpy()[:18], 2.0)
    assert np.isclose(weights[18].sum().item(), 1.0)  # <empty>: "nothing" alone
    assert (weights[:, ids] == 0).all()  # made of ordinary words only


def test_scratch_defaults_tile_the_scene_at_the_towers_size(script):
    args = script.parse_args(["--scratch", "--out", "x"])
    assert (args.scene_size, args.longest_edge, args.pixel_shuffle, args.device) == (144, 144, 3, "cpu")
    assert args.stages == "demo-align:200,demo-instruct-lora:300"
    real = script.parse_args(["--out", "x", "--vision", "v", "--llm", "l"])
    assert (real.scene_size, real.device, real.stages) == (768, "cuda", "instruct-lora:600")


def test_lm_texts_keep_the_layout_tokens_whole_and_train_the_reply(script):
    from vlmforge.model.idefics3 import add_idefics3_tokens
    from vlmforge.model.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    add_idefics3_tokens(tokenizer)
    tokenizer.add_tokens(list(script.CELL_WORDS))
    record = {"messages": [{"role": "user", "content": "How many squares are there?\n<image>"},
                           {"role": "assistant", "content": "one"}],
              "meta": {"objects": [{"row": 0, "col": 0, "shape": "square", "colour": "red"}]}}
    sample = script.encode_text_conversation(script.cell_word_messages(record, "idefics3"), tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(sample.input_ids)
    assert tokens.count("<fake_token_around_image>") == 11 and "<row_3_col_3>" in tokens
    trained = tokenizer.decode([label for label in sample.labels if label != -100])
    assert trained.startswith("one<|im_end|>")


def test_tiny_parts_for_the_real_parts_smoke_run(script, tmp_path):
    parts = script.tiny_parts(tmp_path, 64)
    assert (Path(parts["vision"]) / "config.json").exists() and (Path(parts["llm"]) / "config.json").exists()
