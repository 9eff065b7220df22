"""Clumsy and hostile configs (issues 19 and 20): every mistake is one line on stderr, exit 2, before any work.

Ranges live beside the fields (`option(..., ge=0)`) and are checked by one function when a config is
read (YAML, CLI flags) and again by `validate_recipe` for recipes built in Python.
"""

import pytest

from vlmforge.cli import main
from vlmforge.config import apply_overrides, from_dict, load_yaml
from vlmforge.errors import ConfigError
from vlmforge.infer.serve_config import ServeConfig
from vlmforge.train.recipe import Recipe, load_recipe, validate_recipe

BAD_TRAIN_FLAGS = [
    (["--train.lr.llm", "nan"], "train.lr.llm must be a finite number"),
    (["--train.lr.projector=-1e-4"], "train.lr.projector must be >= 0"),
    (["--train.lr.vision", "inf"], "train.lr.vision must be a finite number"),
    (["--data.max_length", "-5"], "data.max_length must be >= 1"),
    (["--train.batch_size", "0"], "train.batch_size must be >= 1"),
    (["--train.batch-size", "-2"], "train.batch_size must be >= 1"),
    (["--train.grad_accum", "0"], "train.grad_accum must be >= 1"),
    (["--train.warmup_ratio", "1.5"], "train.warmup_ratio must be >= 0 and < 1"),
    (["--train.min_lr_ratio", "-0.1"], "train.min_lr_ratio must be >= 0 and <= 1"),
    (["--data.max_bad_fraction", "2"], "data.max_bad_fraction must be >= 0 and <= 1"),
    (["--lora.dropout", "1"], "lora.dropout must be >= 0 and < 1"),
    (["--lora.rank", "0"], "lora.rank must be >= 1"),
    (["--train.weight_decay", "-0.01"], "train.weight_decay must be >= 0"),
    (["--train.max_steps", "0"], "train.max_steps must be >= 1"),
    (["--train.seed", "-1"], "train.seed must be >= 0"),
    (["--data.paths", "a.jsonl", "b.jsonl", "--data.weights", "1", "-1"], "data.weights must be >= 0"),
    (["--train.max_steps", "1e3"], "train.max_steps: expected int"),
]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_bad_numbers_on_the_command_line_are_one_line(flags, message, capsys):
    assert main(["train", "instruct-lora", *flags]) == 2
    assert message in one_error_line(capsys)


def test_bad_numbers_in_yaml_name_the_file_and_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr:\n    llm: .nan\n")
    with pytest.raises(ConfigError, match=r"r.yaml: train.lr.llm must be a finite number"):
        load_recipe(str(recipe))
    recipe.write_text("data:\n  max_length: -1\n")
    assert main(["train", str(recipe)]) == 2
    assert "data.max_length must be >= 1, got -1" in one_error_line(capsys)


def test_recipes_built_in_python_are_checked_by_the_same_ranges():
    recipe = apply_overrides(load_recipe("instruct-lora"), {"model.path": "m", "data.paths": ["a.jsonl"]})
    validate_recipe(recipe)
    recipe.train.lr.llm = float("nan")
    with pytest.raises(ConfigError, match="train.lr.llm must be a finite number"):
        validate_recipe(recipe)
    recipe.train.lr.llm = 1e-5
    recipe.data.weights = [0.0]
    with pytest.raises(ConfigError, match="data.weights are all 0"):
        validate_recipe(recipe)


def test_duplicate_yaml_key_is_an_error_naming_key_and_line(tmp_path, capsys):
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("train:\n  max_steps: 10\n  batch_size: 2\n  max_steps: 5000\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: duplicate key 'max_steps'"):
        load_recipe(str(recipe))
    assert main(["train", str(recipe)]) == 2
    assert "duplicate key 'max_steps'" in one_error_line(capsys)
    recipe.write_text("train:\n  max_steps: 10\ntrain:\n  batch_size: 2\n")
    with pytest.raises(ConfigError, match=r":3: duplicate key 'train'"):
        load_yaml(Recipe, recipe)


def test_a_folder_as_recipe_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 2
    assert "it is a folder" in one_error_line(capsys)


def test_cuda_device_without_a_gpu_is_refused_at_validation(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = apply_overrides(load_recipe("instruct-lora"), {"model.path": "m", "data.paths": ["a.jsonl"],
                                                            "train.device": "cuda"})
    with pytest.raises(ConfigError, match="train.device is 'cuda' but torch sees no cuda device"):
        validate_recipe(recipe)
    assert main(["train", "instruct-lora", "--train.device", "cuda", "--model.path", str(tmp_path),
                 "--data.paths", str(tmp_path / "a.jsonl"), "--train.output_dir", str(tmp_path / "run")]) == 2
    assert "--train.device cpu" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="not a device"):
        validate_recipe(apply_overrides(recipe, {"train.device": "gpu0"}))


@pytest.mark.parametrize("words, expected", [([], True), (["false"], False), (["False"], False), (["no"], False),
                                              (["0"], False), (["true"], True), (["yes"], True), (["1"], True)])
def test_boolean_flags_take_true_false_words(words, expected):
    from vlmforge.cli import build_parser
    from vlmforge.config import overrides_from_args

    argv = ["train", "instruct-lora", "--train.export", *words]
    args = build_parser(argv).parse_args(argv)
    assert overrides_from_args(args, Recipe)["train.export"] is expected


def test_boolean_flags_keep_no_form_and_refuse_other_words(capsys):
    from vlmforge.cli import build_parser
    from vlmforge.config import overrides_from_args

    argv = ["train", "instruct-lora", "--no-train.export", "--no-train.gradient-checkpointing"]
    given = overrides_from_args(build_parser(argv).parse_args(argv), Recipe)
    assert given["train.export"] is False and given["train.gradient_checkpointing"] is False
    argv = ["train", "instruct-lora", "--train.export", "maybe"]
    with pytest.raises(SystemExit) as exit_info:
        build_parser(argv).parse_args(argv)
    assert exit_info.value.code == 2
    assert "expected true or false" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--port", "-1"], "port must be >= 0 and <= 65535"),
    (["--max-queue", "0"], "max_queue must be >= 1"),
    (["--remote-image-timeout", "nan"], "remote_image_timeout must be a finite number"),
    (["--max-decoding-pixels", "1000", "--max-image-pixels", "2000"], "max_decoding_pixels (1000) must be >= max_image_pixels"),
])
def test_bad_serve_settings_are_one_line_before_the_model_loads(flags, message, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "no-model-here"), *flags]) == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], "top_p must be > 0 and <= 1"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--batch-size", "0"], "batch_size must be >= 1"),
])
def test_bad_chat_settings_are_one_line_before_the_model_loads(flags, message, tmp_path, capsys):
    assert main(["chat", str(tmp_path / "no-model-here"), "--prompt", "hi", *flags]) == 2
    assert message in one_error_line(capsys)


def test_serve_config_from_python_is_checked_too():
    with pytest.raises(ConfigError, match="max_tokens must be >= 1"):
        ServeConfig(max_tokens=0).validate()
    assert from_dict(ServeConfig, {"allowed_hosts": ["example.test"]}).allowed_hosts == ["example.test"]


def _with_custom_code(folder, tmp_path, name):
    """A copy of a model folder whose config asks for its own Python code (unknown type + auto_map)."""
    import json
    import shutil

    copy = shutil.copytree(folder, tmp_path / name)
    config = json.loads((copy / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                               "AutoModelForImageTextToText": "modeling_evil.EvilModel"})
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "configuration_evil.py").write_text("raise SystemExit('the folder ran its own code')\n")
    return copy


def test_model_folders_with_custom_code_are_refused_in_one_line_without_a_prompt(tiny_parts, tiny_vlm_dir, tmp_path,
                                                                                  capsys, monkeypatch):
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")  # a user typing y
    llm = _with_custom_code(tiny_parts["qwen2"], tmp_path, "llm")
    assert main(["build", "--vision", str(tiny_parts["siglip"]), "--llm", str(llm), "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    assert "never runs code from a model folder" in one_error_line_of(captured.err)
    assert "[y/N]" not in captured.out + captured.err
    vlm = _with_custom_code(tiny_vlm_dir, tmp_path, "vlm")
    assert main(["chat", str(vlm), "--prompt", "hi"]) == 2
    assert "never runs code from a model folder" in one_error_line_of(capsys.readouterr().err)
    assert asked == []


def one_error_line_of(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err
