"""scripts/compare_tiling.py's from-scratch task: scenes, questions, tower labels, the LM's stand-in texts.

The measured comparison itself (docs/high-resolution.md) takes ~15 minutes and is not run here.
"""

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
        scene = script.sample_region_scene(rng)
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


def test_region_questions_ask_about_the_object_at_the_named_region(script):
    from vlmforge.data.synth_language import COLOUR_BY_NAME, SHAPE_BY_NAME, position_word
    from vlmforge.data.synth_scenes import SceneObject

    scene = (SceneObject(0, 0, "square", "red"), SceneObject(1, 2, "triangle", "blue"), SceneObject(2, 2, "circle", "red"))
    rng = random.Random(0)
    asked = set()
    for _ in range(40):
        for kind, lang in [(kind, lang) for kind in script.REGION_KINDS for lang in ("en", "zh")]:
            question, answer, cell = script.region_question(rng, scene, kind, lang)
            obj = next(o for o in scene if o.row * 3 + o.col == cell)
            assert position_word(obj.row, obj.col, lang) in question
            value = obj.shape if kind == "shape_at" else obj.colour
            names = SHAPE_BY_NAME if kind == "shape_at" else COLOUR_BY_NAME
            assert answer == (value if lang == "en" else names[value].zh)
            asked.add(cell)
    assert asked == {0, 5, 8}  # only occupied regions, each of them


def test_tower_records_label_tiles_per_cell_and_views_per_region(script, tmp_path):
    train = script.write_split(tmp_path / "data", "train", 8, 144, 0, "regions")
    records = [json.loads(line) for line in train.read_text().splitlines()]
    images = script.tower_records(tmp_path / "tower", records, train.parent, 4, 0)
    assert len(images) == 12
    assert [r["meta"]["objects"] for r in images[4:]] == [r["meta"]["objects"] for r in records]
    for record in images:
        with Image.open(tmp_path / "tower" / record["images"][0]) as image:
            assert image.size == (48, 48)
    assert [(r["type"], r["lang"]) for r in records[:4]] == [("shape_at", "en"), ("colour_at", "en"),
                                                             ("shape_at", "zh"), ("colour_at", "zh")]


def test_pre_training_tiles_hold_up_to_nine_objects_each_in_its_cell(script, tmp_path):
    from vlmforge.data.synth_scenes import BACKGROUND_RGB, COLOUR_BY_NAME

    images = script.tower_records(tmp_path, [], tmp_path, 40, 0, most=script.TOWER_TILE_OBJECTS)
    counts = [len(record["meta"]["objects"]) for record in images]
    assert len(images) == 40 and max(counts) > 3 and min(counts) >= 0 and max(counts) <= 9
    for record in images:
        pixels = np.asarray(Image.open(tmp_path / record["images"][0]))
        for obj in record["meta"]["objects"]:
            cell = pixels[obj["row"] * 16:(obj["row"] + 1) * 16, obj["col"] * 16:(obj["col"] + 1) * 16]
            assert (cell == COLOUR_BY_NAME[obj["colour"]].rgb).all(-1).sum() >= 20  # drawn small in its own cell
        drawn = sum(1 for r in range(3) for c in range(3)
                    if (pixels[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] != BACKGROUND_RGB).any())
        assert drawn == len(record["meta"]["objects"])


def test_probe_images_are_held_out_from_the_towers_pre_training(script, tmp_path):
    args = script.parse_args(["--scratch", "--out", str(tmp_path)])
    probes = script.probe_records(tmp_path / "parts", args, count=12)
    train = script.write_split(tmp_path / "data", "train", 12, 144, 0, "regions")
    tower = script.tower_records(tmp_path / "tower", [json.loads(line) for line in train.read_text().splitlines()],
                                 train.parent, 12, 0)

    def drawn(records, root):  # the images with an object in them (blank tiles are alike by design)
        return {np.asarray(Image.open(root / r["images"][0])).tobytes()
                for r in records if r["meta"]["objects"]}

    assert [Path(r["images"][0]).name.split("-")[0] for r in probes] == ["tile"] * 12 + ["view"] * 12
    probe_images = drawn(probes, tmp_path / "parts" / "probe-data")
    assert len(probe_images) > 12 and not probe_images & drawn(tower, tmp_path / "tower")


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


@pytest.fixture(scope="module")
def tokenizer(script):
    from vlmforge.model.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    script.add_stand_in_words(tokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def records(script, tmp_path_factory):
    train = script.write_split(tmp_path_factory.mktemp("data"), "train", 12, 144, 0, "regions")
    return [json.loads(line) for line in train.read_text().splitlines()]


def test_stand_ins_carry_place_in_llava_and_only_content_in_idefics3(script, tokenizer, records):
    record = {"meta": {"objects": [{"row": 0, "col": 1, "shape": "square", "colour": "red"}]}}
    ids, offsets = script.stand_in_ids(record, "llava", tokenizer)
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<top_left:empty>", "<top_middle:red_square>", *(f"<{p}:empty>" for p in (
            "top_right", "middle_left", "center", "middle_right", "bottom_left", "bottom_middle", "bottom_right"))]
    assert offsets == list(range(9))
    ids, offsets = script.stand_in_ids(record, "idefics3", tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [tokens[i] for i in offsets] == ["<empty>", "<red_square>"] + ["<empty>"] * 7
    assert [tokens[i - 1] for i in offsets] == [f"<row_{r}_col_{c}>" for r in (1, 2, 3) for c in (1, 2, 3)]
    assert tokens.count("<fake_token_around_image>") == 11 and tokens[-2:] == ["<image>", "<fake_token_around_image>"]


@pytest.mark.parametrize("layout", ["llava", "idefics3"])
def test_lm_samples_look_from_the_answer_at_the_token_holding_it(script, tokenizer, records, layout):
    from vlmforge.data.synth_language import POSITION_NAMES
    from vlmforge.data.tokenize import IGNORE_INDEX

    for record in records:
        sample = script.lm_sample(record, layout, tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(sample.encoded.input_ids)
        cell = record["meta"]["turn_cells"][0]
        obj = next(o for o in record["meta"]["objects"] if o["row"] * 3 + o["col"] == cell)
        answer = record["messages"][1]["content"]
        assert tokenizer.decode([sample.encoded.input_ids[q + 1] for q, _ in sample.lookups]) == answer
        assert all(sample.encoded.labels[q + 1] != IGNORE_INDEX for q, _ in sample.lookups)
        (key,) = {k for _, k in sample.lookups}
        content = f"{obj['colour']}_{obj['shape']}>"
        if layout == "llava":
            assert tokens[key] == f"<{POSITION_NAMES['en'][obj['row']][obj['col']].replace(' ', '_')}:{content}"
        else:  # the tile word after the asked region's layout token
            assert tokens[key - 1:key + 1] == [f"<row_{obj['row'] + 1}_col_{obj['col'] + 1}>", f"<{content}"]
        (query, words), *tiles = sample.question_words
        assert query == sample.lookups[0][0]
        assert [tokenizer.decode([sample.encoded.input_ids[w]]).strip() for w in words] == \
            [POSITION_NAMES[record["lang"]][obj["row"]][obj["col"]]]
        if layout == "llava":
            assert tiles == []
        else:  # each tile word looks at its own <row_r_col_c>
            assert [tokens[keys[0]] for _, keys in tiles] == [f"<row_{r}_col_{c}>" for r in (1, 2, 3) for c in (1, 2, 3)]
            assert all(keys == [q - 1] for q, keys in tiles)


def test_stand_in_composition_sums_the_naming_words(script, tokenizer):
    from vlmforge.demo.cell_words import CELL_WORDS

    ids, weights = script.stand_in_composition(tokenizer)
    assert ids.tolist() == tokenizer.convert_tokens_to_ids(list(CELL_WORDS) + list(script.TILE_WORDS))
    tile_rows = weights[len(CELL_WORDS):].sum(-1).numpy()
    assert weights.shape == (len(CELL_WORDS) + 19, len(tokenizer)) and np.allclose(tile_rows[:18], 2.0)
    assert np.isclose(tile_rows[18], 1.0)  # <empty>: "nothing" alone
    assert (weights[:, ids] == 0).all()  # made of ordinary words only


def test_scratch_defaults_tile_the_scene_at_the_towers_size(script):
    args = script.parse_args(["--scratch", "--out", "x"])
    assert (args.scene_size, args.longest_edge, args.pixel_shuffle, args.device) == (144, 144, 3, "cpu")
    assert args.stages == "demo-align:200,demo-instruct-lora:600" and (args.lm_steps, args.tower_steps) == (1500, 2000)
    assert (args.tower_tiles, args.tower_views) == (10000, 2000)  # measured: 2 000 tiles read shape at ~72 % only
    real = script.parse_args(["--out", "x", "--vision", "v", "--llm", "l"])
    assert (real.scene_size, real.device, real.stages) == (768, "cuda", "instruct-lora:600")


def test_tiny_parts_for_the_real_parts_smoke_run(script, tmp_path):
    parts = script.tiny_parts(tmp_path, 64)
    assert (Path(parts["vision"]) / "config.json").exists() and (Path(parts["llm"]) / "config.json").exists()


def test_scale_tower_features_scales_both_families_features_and_nothing_else(script, tmp_path):
    import torch
    from transformers import SiglipVisionModel

    from vlmforge.model.tiny import make_tiny_vision

    folder = make_tiny_vision(tmp_path / "vision", "siglip", image_size=48, patch_size=16)
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))

    def features():
        with torch.no_grad():
            out = SiglipVisionModel.from_pretrained(folder).eval()(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-1], out.last_hidden_state  # what Llava reads, what Idefics3's connector reads

    before = features()
    script.scale_tower_features(folder, 0.125)
    after = features()
    for old, new in zip(before, after):
        assert (new - 0.125 * old).abs().max() < 1e-4 * old.abs().max(), (new - 0.125 * old).abs().max()
    assert not torch.allclose(after[0], before[0])
