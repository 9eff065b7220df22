"""The benchmark's shapes are data (bench/configs.yaml), read strictly into typed `BenchConfig`s."""

import pytest

from vlmforge.bench.configs import CONFIGS, TABLE, BenchConfig, LanguageShape, VisionShape, load_configs
from vlmforge.errors import ConfigError


def test_every_shipped_config_loads_typed():
    assert list(CONFIGS) == ["tiny", "small", "7b-lora"]
    for name, config in CONFIGS.items():
        assert isinstance(config, BenchConfig) and config.name == name and config.note
        assert isinstance(config.vision, VisionShape) and isinstance(config.llm, LanguageShape)
        assert isinstance(config.lora_alpha, float) and config.generation_batches == (1, 8)
    assert [config.needs_cuda for config in CONFIGS.values()] == [False, False, True]
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
