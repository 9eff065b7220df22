"""`data` and `bench` take their flags from dataclass configs: old spellings and defaults kept, registries
imported from their owners, and one default device for chat, eval, serve and bench."""

import pytest

from vlmforge.cli import build_parser


def parsed(argv: list[str]):
    return build_parser(argv).parse_args(argv)


def data_config(argv: list[str]):
    from vlmforge.commands.data import config_from_args

    return config_from_args(parsed(["data", *argv]))


def bench_config(argv: list[str]):
    from vlmforge.commands.bench import config_from_args

    return config_from_args(parsed(["bench", *argv]))


def test_data_convert_flags_keep_their_spellings():
    config = data_config(["convert", "--from", "coco", "a.json", "b.json", "--out", "o.jsonl", "--image-root", "r1",
                          "--image-root", "r2", "--check-images", "--no-normalize-placeholders", "--seed", "3",
                          "--prompts", "p.txt", "--source", "s", "--json", "r.json"])
    assert (config.fmt, config.inputs, config.out, config.image_root) == ("coco", ["a.json", "b.json"], "o.jsonl", ["r1", "r2"])
    assert (config.check_images, config.normalize_placeholders, config.seed) == (True, False, 3)
    assert (config.prompts, config.source, config.json) == ("p.txt", "s", "r.json")
    defaults = data_config(["convert", "--from", "llava", "a.json", "--out", "o.jsonl"])
    assert (defaults.image_root, defaults.check_images, defaults.normalize_placeholders, defaults.seed) == ([], False, True, 0)
    assert (defaults.prompts, defaults.source, defaults.json) == (None, None, None)


def test_data_check_and_synth_flags_keep_their_spellings():
    check = data_config(["check", "a.jsonl", "--model", "m", "--max-length", "5", "--max-pixels", "100",
                         "--no-images", "--workers", "2", "--image-root", "r"])
    assert (check.inputs, check.model, check.max_length, check.max_pixels) == (["a.jsonl"], "m", 5, 100)
    assert (check.images, check.workers, check.image_root) == (False, 2, ["r"])
    defaults = data_config(["check", "a.jsonl"])
    assert (defaults.images, defaults.workers, defaults.max_pixels, defaults.model) == (True, 4, None, None)
    synth = data_config(["synth", "--out", "d", "--num-val", "0", "--referents", "shape,colour"])
    assert (synth.out, synth.seed, synth.num_train, synth.num_val, synth.referents) == ("d", 0, None, 0, "shape,colour")


@pytest.mark.parametrize("argv, missing", [(["convert", "a.json", "--out", "o"], "--from"),
                                           (["convert", "--from", "coco", "a.json"], "--out"),
                                           (["synth"], "--out")])
def test_a_missing_required_flag_is_one_config_error(argv, missing):
    from vlmforge.errors import ConfigError

    with pytest.raises(ConfigError, match=missing):
        data_config(argv)


@pytest.mark.parametrize("argv", [["export", "runs/x/checkpoint-latest"], ["convert-llm", "qwen1", "src"]])
def test_export_and_convert_llm_need_out(argv, capsys):
    from vlmforge.cli import main

    assert main(argv) == 2
    assert "needs --out DIR" in capsys.readouterr().err


def test_bench_flags_keep_their_spellings_and_defaults():
    defaults = bench_config([])
    assert (defaults.config, defaults.steps, defaults.baseline, defaults.generation, defaults.breakdown) == (
        "small", None, None, True, False)
    assert (defaults.precision, defaults.gpu_gb, defaults.device, defaults.plan, defaults.model) == ("auto", 80.0, "", "", "")
    config = bench_config(["--config", "tiny", "--steps", "2", "--baseline", "naive", "--no-generation", "--breakdown",
                           "--precision", "fp32", "--threads", "1", "--json", "b.json", "--work-dir", "w",
                           "--export-data", "e"])
    assert (config.config, config.steps, config.baseline, config.generation, config.breakdown) == ("tiny", 2, "naive", False, True)
    assert (config.precision, config.threads, config.json, config.work_dir, config.export_data) == ("fp32", 1, "b.json", "w", "e")
    for flag in ("--model", "--model.path"):
        plan = bench_config(["--plan", "instruct-lora", flag, "my-vlm", "--gpu-gb", "24", "--seq-len", "512"])
        assert (plan.plan, plan.model, plan.gpu_gb, plan.seq_len) == ("instruct-lora", "my-vlm", 24.0, 512)


def _choices(argv: list[str], dest: str) -> tuple:
    parser = build_parser(argv)
    sub = next(action for action in parser._actions if action.dest == "command").choices[argv[0]]
    if argv[0] == "data":
        sub = next(action for action in sub._actions if action.dest == "data_command").choices[argv[1]]
    return tuple(next(action for action in sub._actions if action.dest == dest).choices)


def test_choices_are_the_owning_modules_registries():
    from vlmforge.bench.configs import CONFIGS
    from vlmforge.bench.runner import BASELINES
    from vlmforge.data.convert import FORMATS, READERS
    from vlmforge.eval.scoring import TASKS
    from vlmforge.eval.text import LANGUAGES

    assert _choices(["data", "convert"], "fmt") == FORMATS == tuple(READERS)
    assert _choices(["eval"], "task") == TASKS and _choices(["eval"], "lang") == LANGUAGES
    assert _choices(["bench"], "config") == tuple(CONFIGS)
    assert _choices(["bench"], "baseline") == BASELINES


def test_chat_eval_serve_and_bench_share_one_default_device(monkeypatch):
    import torch

    from vlmforge.commands.chat import ChatConfig
    from vlmforge.commands.eval import EvalConfig
    from vlmforge.infer.serve_config import ServeConfig
    from vlmforge.utils.device import resolve_device

    defaults = {ChatConfig().device, EvalConfig().device, ServeConfig().device, bench_config([]).device}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert {resolve_device(device) for device in defaults} == {"cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert {resolve_device(device) for device in defaults} == {"cuda"}
    assert resolve_device("cpu") == "cpu"


def test_asking_for_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    import torch

    from vlmforge.errors import ConfigError
    from vlmforge.utils.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("command", ["bench", "export", "convert-llm", "data"])
def test_help_of_the_moved_commands_imports_no_torch(command):
    import subprocess
    import sys

    code = ("import sys\nfrom vlmforge.cli import main\ntry:\n    main([%r, '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n" % command)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
