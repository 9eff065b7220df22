"""`vlmforge eval MODEL --data ...` (generate, then score), the blank-image gap, and evaluation during training."""

import json
import math
from types import SimpleNamespace

import pytest
from train_helpers import tiny_recipe, write_colour_dataset

from vlmforge.cli import main
from vlmforge.errors import ConfigError, DataError
from vlmforge.eval.during_training import held_out_loss, is_due, make_eval_callback
from vlmforge.eval.evaluate import blank_gap, evaluate_model, load_eval_set
from vlmforge.eval.report import write_gap_section
from vlmforge.model.load import load

FAST = ["--max-new-tokens", "3", "--batch-size", "4", "--no-java-metrics"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]  # not splitlines: \x85 is text


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Six image records 'What colour is this?' → a colour name (ids c0..c5)."""
    return write_colour_dataset(tmp_path_factory.mktemp("colours"), count=6, with_text_only=False)


@pytest.fixture(scope="module")
def tiny(tiny_vlm_dir):
    return load(tiny_vlm_dir)


@pytest.fixture(scope="module")
def scrambled_vlm_dir(lively_vlm_dir):
    """A tiny VLM whose (nonsense) answers depend on the image and the question (see conftest)."""
    return lively_vlm_dir


def test_cli_writes_predictions_metrics_and_report(scrambled_vlm_dir, colours, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(scrambled_vlm_dir), "--data", str(colours), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "vqa: 6 examples (en: 6)" in printed and "exact_match" in printed
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [row["id"] for row in predictions] == [f"c{i}" for i in range(6)]
    assert all(row["completion_tokens"] <= 3 for row in predictions)
    assert len({row["prediction"] for row in predictions}) > 1  # real answers, one per record
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "vqa" and metrics["num_examples"] == 6 and metrics["blank_images"] is False
    assert 0.0 <= metrics["metrics"]["exact_match"] <= 1.0
    assert "# Evaluation: vqa" in (out / "report.md").read_text()
    assert not (out / "references.jsonl").exists()  # the whole file was evaluated: scored against it directly


def test_blank_images_run_shows_the_gap(scrambled_vlm_dir, colours, tmp_path, capsys):
    out, model = tmp_path / "eval", str(scrambled_vlm_dir)
    assert main(["eval", model, "--data", str(colours), "--out", str(out), *FAST]) == 0
    assert "blank-image gap" not in capsys.readouterr().out  # one run: nothing to compare yet
    assert main(["eval", model, "--data", str(colours), "--out", str(out), "--blank-images", *FAST]) == 0
    printed = capsys.readouterr().out
    real, blank = (read_jsonl(out / name) for name in ("predictions.jsonl", "predictions_blank.jsonl"))
    assert [row["prediction"] for row in real] != [row["prediction"] for row in blank]  # the images really went blank
    normal_metrics, blank_metrics = (json.loads((out / name).read_text()) for name in ("metrics.json", "metrics_blank.json"))
    assert blank_metrics["blank_images"] is True
    gap = normal_metrics["metrics"]["exact_match"] - blank_metrics["metrics"]["exact_match"]
    assert f"exact_match  {gap:+.4f}" in printed.split("blank-image gap")[1]
    for report in ("report.md", "report_blank.md"):
        text = (out / report).read_text()
        assert text.count("## Blank-image gap") == 1 and f"| exact_match | {gap:+.4f} |" in text
    assert "replaced by blank" in (out / "report_blank.md").read_text()


def test_blank_gap_is_normal_minus_blank_for_the_same_records(tmp_path):
    def write(name, references, **metrics):
        body = {"references": references, "num_examples": 4, "metrics": metrics}
        (tmp_path / name).write_text(json.dumps(body))

    write("metrics.json", "test.jsonl", **{"CIDEr-D": 0.75, "BLEU-4": 0.25})
    assert blank_gap(tmp_path) is None  # one run only
    write("metrics_blank.json", "test.jsonl", **{"CIDEr-D": 0.25, "BLEU-4": 0.5})
    assert blank_gap(tmp_path) == {"CIDEr-D": 0.5, "BLEU-4": -0.25}
    write("metrics_blank.json", "other.jsonl", **{"CIDEr-D": 0.25, "BLEU-4": 0.5})
    assert blank_gap(tmp_path) is None  # different records: not comparable
    report = tmp_path / "report.md"
    report.write_text("# Evaluation\n")
    write_gap_section(report, {"CIDEr-D": 0.5})
    write_gap_section(report, {"CIDEr-D": 0.25})  # a rerun replaces the section
    assert report.read_text().count("## Blank-image gap") == 1 and "| CIDEr-D | +0.2500 |" in report.read_text()


def test_predictions_equal_chat_batch_answers(scrambled_vlm_dir, colours, tmp_path):
    out, answers = tmp_path / "eval", tmp_path / "answers.jsonl"
    assert main(["eval", str(scrambled_vlm_dir), "--data", str(colours), "--out", str(out), *FAST]) == 0
    assert main(["chat", str(scrambled_vlm_dir), "--batch", str(colours), "--out", str(answers), "--batch-size", "4",
                 "--max-new-tokens", "3"]) == 0
    chat = {row["id"]: row["prediction"] for row in read_jsonl(answers)}
    evaluated = {row["id"]: row["prediction"] for row in read_jsonl(out / "predictions.jsonl")}
    assert evaluated == chat and len(set(chat.values())) > 1


def test_max_samples_and_shared_ids(tiny, tmp_path):
    """Records sharing an id are answered once and scored against all their references."""
    model, processor = tiny
    rows = [{"id": "a", "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": text}]}
            for text in ("hi", "hello")]
    rows += [{"id": f"q{i}", "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}
             for i in range(3)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = evaluate_model(model, processor, data, tmp_path / "out", max_samples=2, max_new_tokens=2,
                            progress=False, java_metrics=False)
    assert [row["id"] for row in read_jsonl(tmp_path / "out" / "predictions.jsonl")] == ["a", "q0"]
    assert result["per_example"][0]["references"] == ["hi", "hello"]
    assert result["num_examples"] == 2 and result["num_references_without_prediction"] == 0
    assert [row["id"] for row in read_jsonl(tmp_path / "out" / "references.jsonl")] == ["a", "a", "q0"]


def test_bad_input_is_one_line_exit_2(tiny_vlm_dir, colours, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}) + "\n")
    assert main(["eval", str(tiny_vlm_dir), "--data", str(bad)]) == 2
    assert "bad.jsonl:1: record has no 'id'" in capsys.readouterr().err
    assert main(["eval", str(tiny_vlm_dir), "--out", str(tmp_path)]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["eval", "score", "--pred", "p.jsonl", "--ref", "r.jsonl", "--data", str(colours)]) == 2
    assert "--data: only with a model folder" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="max_samples must be >= 1"):
        load_eval_set(colours, max_samples=0)
    with pytest.raises(DataError, match="no such file"):
        load_eval_set(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------ during training


def test_is_due():
    assert [step for step in range(1, 8) if is_due(step, 3, 7)] == [3, 6, 7]
    assert [step for step in range(1, 8) if is_due(step, 0, 7)] == [7]


def test_callback_loss_is_the_token_normalised_training_loss(tiny, colours, tmp_path):
    """Evaluated in batches of 4, the loss equals one batch of all records (summed / trained tokens)."""
    import torch

    from vlmforge.data.dataset import ConversationDataset
    from vlmforge.data.tokenize import image_tokens_per_image
    from vlmforge.train.batching import Collator
    from vlmforge.train.steps import summed_loss, trained_token_count

    model, processor = tiny
    recipe = tiny_recipe("unused", colours, tmp_path / "run", max_steps=5)
    recipe.eval.data, recipe.eval.every, recipe.eval.max_new_tokens, recipe.eval.batch_size = str(colours), 2, 2, 4
    callback = make_eval_callback(recipe)
    trainer = SimpleNamespace(is_main=True, peft_model=model, processor=processor, bf16=False)
    model.train()
    assert callback(trainer, 1) is None and callback(SimpleNamespace(is_main=False), 2) == {}
    row = callback(trainer, 2)
    assert model.training  # back in train mode
    batch = Collator(processor, image_tokens_per_image(processor), 2048)(list(ConversationDataset([colours])))
    with torch.no_grad():
        model.eval()
        expected = float(summed_loss(model, batch)) / trained_token_count(batch)
    assert row["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert set(row) == {"eval_loss", "eval_exact_match"}
    assert (tmp_path / "run" / "eval" / "step-2" / "predictions.jsonl").exists()
    assert held_out_loss(model, processor, [None], 4, 2048) is None  # nothing to score: no loss, no crash


def test_training_logs_eval_metrics_at_the_right_steps(tiny_vlm_dir, tmp_path):
    from vlmforge.train.loop import train

    train_data = write_colour_dataset(tmp_path / "train", count=8, with_text_only=False)
    held_out = write_colour_dataset(tmp_path / "held-out", count=4, with_text_only=False)
    recipe = tiny_recipe(tiny_vlm_dir, train_data, tmp_path / "run", max_steps=5, log_steps=1, save_steps=100)
    recipe.eval.data, recipe.eval.every = str(held_out), 2
    recipe.eval.max_samples, recipe.eval.max_new_tokens, recipe.eval.batch_size = 3, 2, 4
    mode_probe = lambda trainer, step: {"training_mode": trainer.peft_model.training}  # noqa: E731
    train(recipe, callbacks=[make_eval_callback(recipe), mode_probe])
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evaluated = [row["step"] for row in rows if "eval_exact_match" in row]
    assert evaluated == [2, 4, 5] and [row["step"] for row in rows if "eval_loss" in row] == evaluated
    assert all(row["training_mode"] is True for row in rows)
    assert all(math.isfinite(row["eval_loss"]) and row["eval_loss"] > 0 for row in rows if "eval_loss" in row)
    for step in evaluated:
        folder = tmp_path / "run" / "eval" / f"step-{step}"
        assert len(read_jsonl(folder / "predictions.jsonl")) == 3 and (folder / "metrics.json").exists()
