"""Training end to end on CPU with a tiny model: what changes, what is saved, resume, invariants."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import shipped_recipe, tiny_recipe, write_colour_dataset
from vlmforge.cli import main
from vlmforge.config import apply_overrides
from vlmforge.errors import ConfigError, DataError
from vlmforge.train.checkpoint import CHECKPOINT_FILES
from vlmforge.train.loop import TrainingError, train
from vlmforge.train.recipe import load_recipe, shipped_recipes, validate_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_dataset(tmp_path_factory.mktemp("colours"))


def _weights(folder):
    return load_file(Path(folder) / "model.safetensors")


def test_only_trainable_parts_change_and_export_loads_natively(tiny_vlm_dir, data, tmp_path):
    result = train(tiny_recipe(tiny_vlm_dir, data, tmp_path / "run", max_steps=3, export=True))
    before, after = _weights(tiny_vlm_dir), _weights(result.final_model)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "nothing was trained"
    # LoRA is merged into the LLM's linear layers; the projector is trained; the vision tower is frozen.
    assert all(".vision_tower." not in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
    assert any("language_model" in name and "proj" in name for name in changed)
    assert not any("embed_tokens" in name or "norm" in name for name in changed)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(result.final_model)
    processor = AutoProcessor.from_pretrained(result.final_model)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    inputs = processor(text="<image>\nWhat colour?", images=[__import__("PIL.Image").Image.new("RGB", (32, 32))], return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=3).shape[1] > inputs["input_ids"].shape[1]


def test_run_folder_and_checkpoint_files(tiny_vlm_dir, data, tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe(tiny_vlm_dir, data, run, max_steps=6, save_steps=2, save_total_limit=2))
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-4", "checkpoint-6", "checkpoint-latest", "curves.png",
                                                    "metrics.jsonl", "recipe.yaml"]
    assert sorted(p.name for p in (run / "checkpoint-6").iterdir()) == sorted(CHECKPOINT_FILES)
    assert os.readlink(run / "checkpoint-latest") == "checkpoint-6"
    weights = load_file(run / "checkpoint-6" / "trainable.safetensors")
    assert any("lora_A" in n for n in weights) and any("multi_modal_projector" in n for n in weights)
    assert not any("vision_tower" in n for n in weights)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr_projector", "lr_llm", "grad_norm", "tokens_per_s", "samples_per_s", "peak_memory_mb"):
        assert all(key in r for r in rows), key
    state = json.loads((run / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6


def _final_trainable(run):
    return load_file(Path(run) / "checkpoint-latest" / "trainable.safetensors")


def test_grad_accum_1x4_equals_4x1(tiny_vlm_dir, data, tmp_path):
    one = train(tiny_recipe(tiny_vlm_dir, data, tmp_path / "a", max_steps=3, batch_size=4, grad_accum=1))
    four = train(tiny_recipe(tiny_vlm_dir, data, tmp_path / "b", max_steps=3, batch_size=1, grad_accum=4))
    assert [r["loss"] for r in one.history] == pytest.approx([r["loss"] for r in four.history], rel=1e-5)
    a, b = _final_trainable(tmp_path / "a"), _final_trainable(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


KILLER = """
import os, signal, sys
import torch
torch.set_num_threads({threads})  # the test process's own setting: both halves run the same kernels
sys.path.insert(0, {tests!r})
from train_helpers import shipped_recipe
from vlmforge.eval.during_training import make_eval_callback
from vlmforge.train.loop import train

def die(trainer, step):
    if step == 5:  # after checkpoint-4 was written, in the middle of the run
        os.kill(os.getpid(), signal.SIGKILL)

recipe = shipped_recipe("instruct-lora", {model!r}, {data!r}, {run!r}, **{settings!r})
recipe.eval.data, recipe.eval.every, recipe.eval.max_samples, recipe.eval.max_new_tokens = {data!r}, 2, 4, 2
recipe.data.num_workers = 2
train(recipe, callbacks=[make_eval_callback(recipe), die])
"""

# The shipped instruct-lora recipe as shipped (LoRA dropout 0.05, grad_accum 2) on tiny data, with two
# loader workers and evaluation every 2 steps: everything that draws random numbers or runs between steps.
RESUME_SETTINGS = dict(max_steps=8, batch_size=4, save_steps=2, log_steps=1, seed=3)


def _shipped_lora_run(model, data, run, **extra):
    from vlmforge.eval.during_training import make_eval_callback

    recipe = shipped_recipe("instruct-lora", model, data, run, **RESUME_SETTINGS)
    recipe.eval.data, recipe.eval.every, recipe.eval.max_samples, recipe.eval.max_new_tokens = str(data), 2, 4, 2
    recipe.data.num_workers = 2
    return train(recipe, callbacks=[make_eval_callback(recipe)], **extra)


def test_killed_run_resumes_to_the_same_weights(tiny_vlm_dir, data, tmp_path):
    recipe = load_recipe("instruct-lora")
    assert recipe.lora.dropout > 0 and recipe.train.grad_accum > 1  # what this test is about
    uninterrupted = tmp_path / "whole"
    _shipped_lora_run(tiny_vlm_dir, data, uninterrupted)
    run = tmp_path / "killed"
    script = KILLER.format(tests=str(Path(__file__).parent), model=str(tiny_vlm_dir), data=str(data), run=str(run),
                           threads=torch.get_num_threads(), settings=RESUME_SETTINGS)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    assert os.readlink(run / "checkpoint-latest") == "checkpoint-4"
    resumed = _shipped_lora_run(tiny_vlm_dir, data, run, resume=True)
    assert [r["step"] for r in resumed.history] == [5, 6, 7, 8]
    assert "eval_loss" in resumed.history[1]
    a, b = _final_trainable(uninterrupted), _final_trainable(run)
    assert a.keys() == b.keys() and any("lora_A" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6, 7, 8]


def test_loader_leaves_the_global_generator_alone(tiny_vlm_dir, data, tmp_path):
    """The cause of the drift: starting the loader drew its workers' seed from the global generator."""
    from vlmforge.train.loop import Trainer

    trainer = Trainer(shipped_recipe("instruct-lora", tiny_vlm_dir, data, tmp_path / "run", max_steps=2, batch_size=2))
    trainer.setup()
    before = torch.get_rng_state()
    next(iter(trainer.batches(0)))
    assert torch.equal(torch.get_rng_state(), before)


def _nan_loss_at_call(monkeypatch, bad_call: int) -> dict:
    """Make the `bad_call`-th loss computation NaN; the returned counter can be reset to 0 for the next run."""
    import vlmforge.train.steps as steps

    real = steps.summed_loss
    calls = {"n": 0}

    def loss_or_nan(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] == bad_call else loss

    monkeypatch.setattr(steps, "summed_loss", loss_or_nan)
    return calls


def test_nonfinite_loss_stops_or_skips(tiny_vlm_dir, data, tmp_path, monkeypatch):
    calls = _nan_loss_at_call(monkeypatch, 3)
    with pytest.raises(TrainingError, match="non-finite loss.*step 3"):
        train(tiny_recipe(tiny_vlm_dir, data, tmp_path / "stop", max_steps=4, save_steps=2))
    assert os.readlink(tmp_path / "stop" / "checkpoint-latest") == "checkpoint-2"
    calls["n"] = 0
    result = train(tiny_recipe(tiny_vlm_dir, data, tmp_path / "skip", max_steps=4, save_steps=2, nonfinite="skip"))
    assert result.skipped_steps == 1 and all(r["loss"] == r["loss"] for r in result.history)


def test_skipped_last_step_still_logs_and_saves(tiny_vlm_dir, data, tmp_path, monkeypatch):
    """The bad step is the last one and a save step: the run still ends with checkpoint-4 and a row for step 4."""
    _nan_loss_at_call(monkeypatch, 4)
    run = tmp_path / "run"
    result = train(tiny_recipe(tiny_vlm_dir, data, run, max_steps=4, save_steps=2, log_steps=1, nonfinite="skip"))
    assert result.skipped_steps == 1
    assert os.readlink(run / "checkpoint-latest") == "checkpoint-4"
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["skipped_steps"] == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[3]["skipped_steps"] == 1 and rows[3]["loss"] is None  # nothing trained in that window
    assert all("skipped_steps" not in r and r["loss"] > 0 for r in rows[:3])
    # the skipped step changed nothing: checkpoint-4 holds the weights after step 3 (the NaN is spent: calls > 4)
    train(tiny_recipe(tiny_vlm_dir, data, tmp_path / "three", max_steps=4, save_steps=3, log_steps=1))
    skipped, three = load_file(run / "checkpoint-4" / "trainable.safetensors"), load_file(tmp_path / "three" / "checkpoint-3" / "trainable.safetensors")
    for name in skipped:
        torch.testing.assert_close(skipped[name], three[name], rtol=0, atol=0)


def test_fsdp_strategy_refuses_eval_and_trains_unsharded_in_one_process(tiny_vlm_dir, data, tmp_path, caplog):
    recipe = tiny_recipe(tiny_vlm_dir, data, tmp_path / "run", max_steps=2, strategy="fsdp")
    recipe.eval.data = str(data)
    with pytest.raises(ConfigError, match="eval.data.*train.strategy fsdp"):
        train(recipe)
    recipe.eval.data = ""
    with caplog.at_level("INFO", logger="vlmforge.train"):
        assert train(recipe).steps == 2
    assert "nothing to shard" in caplog.text


def test_bad_images_are_skipped_then_budget_stops_the_run(tiny_vlm_dir, tmp_path):
    path = write_colour_dataset(tmp_path / "d", count=24, with_text_only=False)
    (tmp_path / "d" / "3.png").write_bytes(b"broken")
    recipe = tiny_recipe(tiny_vlm_dir, path, tmp_path / "ok", max_steps=6)
    recipe.data.max_bad_fraction = 0.1
    assert train(recipe).steps == 6
    for index in range(6):
        (tmp_path / "d" / f"{index}.png").unlink()
    recipe.train.output_dir = str(tmp_path / "too-many")
    with pytest.raises(DataError, match="too many bad samples"):
        train(recipe)


def test_every_shipped_recipe_loads_and_validates(tmp_path):
    assert {"align", "instruct-lora", "instruct-full"} <= set(shipped_recipes())
    for name in shipped_recipes():
        recipe = apply_overrides(load_recipe(name), {"model.path": "m", "data.paths": ["a.jsonl"]})
        validate_recipe(recipe)
    assert load_recipe("instruct-lora").train.lr.projector > load_recipe("instruct-lora").train.lr.llm


def test_recipe_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="train.max_stepz"):
        load_recipe(str(bad))


def test_cli_train_with_overrides_then_export(tiny_vlm_dir, data, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    assert main(["recipes", "copy", "instruct-lora", str(recipe)]) == 0
    run = tmp_path / "run"
    code = main(["train", str(recipe), "--model.path", str(tiny_vlm_dir), "--data.paths", str(data),
                 "--train.output_dir", str(run), "--train.max-steps", "2", "--train.batch_size", "2",
                 "--train.grad_accum", "1", "--train.save_steps", "1", "--lora.rank", "4", "--train.lr.projector", "2e-3",
                 "--train.device", "cpu", "--no-train.export"])
    assert code == 0
    saved = load_recipe(str(run / "recipe.yaml"))
    assert saved.train.lr.projector == 2e-3 and saved.lora.rank == 4
    assert main(["export", str(run / "checkpoint-latest"), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert main(["recipes", "list"]) == 0 and "instruct-lora" in capsys.readouterr().out


def test_cli_missing_data_or_model_is_one_line_exit_2(tiny_vlm_dir, data, tmp_path, capsys):
    assert main(["train", "instruct-lora", "--model.path", str(tiny_vlm_dir), "--data.paths", str(tmp_path / "no.jsonl")]) == 2
    assert main(["train", "instruct-lora", "--model.path", str(tmp_path / "no-model"), "--data.paths", str(data),
                 "--train.output_dir", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("error")] == ["error", "error"]
    assert "no.jsonl" in lines[0] and "no-model" in lines[-1]
