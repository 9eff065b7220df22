"""The benchmark's shapes are data (bench/configs.yaml), read strictly into typed `BenchConfig`s."""

import pytest

from vlmforge.bench.configs import CONFIGS, TABLE, BenchConfig, LanguageShape, VisionShape, load_configs
from vlmforge.errors import ConfigError


def test_every_shipped_config_loads_typed():
    assert list(CONFIGS) == ["tiny", "small", "7b-lora", "tiny-idefics3", "small-idefics3"]
    for name, config in CONFIGS.items():
        assert isinstance(config, BenchConfig) and config.name == name and config.note
        assert isinstance(config.vision, VisionShape) and isinstance(config.llm, LanguageShape)
        assert isinstance(config.lora_alpha, float) and config.generation_batches == (1, 8)
    assert [config.needs_cuda for config in CONFIGS.values()] == [False, False, True, False, False]
    assert [config.arch for config in CONFIGS.values()] == ["llava"] * 3 + ["idefics3"] * 2
    assert (CONFIGS["small"].llm.vocab_size, CONFIGS["small"].steps, CONFIGS["7b-lora"].vision.patch_size) == (32000, 3, 14)


def test_an_unknown_key_or_a_wrong_type_is_named(tmp_path):
    table = TABLE.read_text(encoding="utf-8")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(table.replace("  max_new_tokens: 4\n", "  max_new_tokens: 4\n  max_new_token: 5\n"))
    with pytest.raises(ConfigError, match="tiny.max_new_token"):
        load_configs(unknown)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(table.replace("steps: 3", "steps: three"))
    with pytest.raises(ConfigError, match="small.steps"):
        load_configs(wrong)


def test_idefics3_configs_are_their_llava_twins_as_tiles():
    """Same tower, LLM, batch and text as the Llava config of the same size: only the family and the images differ."""
    from dataclasses import replace

    for size in ("tiny", "small"):
        llava, idefics3 = CONFIGS[size], CONFIGS[f"{size}-idefics3"]
        assert replace(idefics3, name=size, arch="llava", pixel_shuffle=None, tile_size=None, longest_edge=None) == llava
        assert idefics3.tile == llava.vision.image_size and idefics3.data_image_size == 2 * idefics3.tile  # 2x2 tiles
        assert idefics3.build_options() == {"arch": "idefics3", "pixel_shuffle": 2, "tile_size": idefics3.tile,
                                            "longest_edge": idefics3.data_image_size}
    assert CONFIGS["small"].build_options() == {"arch": "llava"} and CONFIGS["small"].data_image_size == 224


@pytest.mark.parametrize("edit, message", [
    ("  pixel_shuffle: 2  # a tile's 4x4", "pixel_shuffle must be one of 1, 2, 3, 4, got 5"),
    ("  tile_size: 32\n", "tile_size 24 must be a multiple of patch size x pixel shuffle = 8 x 2"),
    ("  longest_edge: 64\n", "longest_edge 224 must be between one tile"),
    ("  arch: idefics3\n  pixel_shuffle: 2  # a tile's 4x4", "arch: 'idefics4' is not one of llava, idefics3"),
])
def test_impossible_idefics3_settings_are_named(tmp_path, edit, message):
    replacement = {"  pixel_shuffle: 2  # a tile's 4x4": "  pixel_shuffle: 5  # a tile's 4x4",
                   "  tile_size: 32\n": "  tile_size: 24\n", "  longest_edge: 64\n": "  longest_edge: 224\n",
                   "  arch: idefics3\n  pixel_shuffle: 2  # a tile's 4x4": "  arch: idefics4\n  pixel_shuffle: 2  # a tile's 4x4"}
    table = TABLE.read_text(encoding="utf-8")
    assert edit in table
    path = tmp_path / "bad.yaml"
    path.write_text(table.replace(edit, replacement[edit], 1))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_configs(path)


def test_idefics3_settings_on_a_llava_config_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TABLE.read_text(encoding="utf-8").replace("  max_new_tokens: 4\n", "  max_new_tokens: 4\n  tile_size: 32\n", 1))
    with pytest.raises(ConfigError, match="tiny.tile_size is an idefics3 setting"):
        load_configs(path)
