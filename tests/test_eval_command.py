"""`vlmforge eval score` through the real CLI entry point."""

import json

import pytest

from vlmforge.cli import main


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def caption_record(record_id, caption):
    return {"id": record_id, "messages": [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": caption}]}


@pytest.fixture
def files(tmp_path):
    refs = [
        caption_record(1, "A man riding a wave on top of a surfboard."),
        caption_record(1, "A surfer rides a large wave in the ocean."),
        caption_record(2, "Two dogs playing with a frisbee in the grass."),
        caption_record(2, "Dogs chase a frisbee on a lawn."),
    ]
    preds = [{"id": 1, "prediction": "a man surfing a big wave"}, {"id": 2, "prediction": ""}]
    return write_jsonl(tmp_path / "preds.jsonl", preds), write_jsonl(tmp_path / "test.jsonl", refs)


def test_score_prints_metrics_and_writes_the_report(files, tmp_path, capsys):
    pred, ref = files
    out = tmp_path / "eval"
    code = main(["eval", "score", "--pred", pred, "--ref", ref, "--out", str(out), "--no-java-metrics"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "caption: 2 examples (en: 2), 1 empty predictions" in printed and "CIDEr-D" in printed
    assert "METEOR       skipped: not requested" in printed
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == "caption" and metrics["num_empty_predictions"] == 1
    assert "## Worst 1 (by CIDEr-D)" in (out / "report.md").read_text(encoding="utf-8")


def test_score_with_forced_task_and_language(files, capsys):
    pred, ref = files
    assert main(["eval", "score", "--pred", pred, "--ref", ref, "--task", "vqa", "--lang", "zh"]) == 0
    assert "vqa: 2 examples (zh: 2)" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(files, tmp_path, capsys):
    _, ref = files
    pred = write_jsonl(tmp_path / "wrong.jsonl", [{"id": 7, "prediction": "a cat"}])
    assert main(["eval", "score", "--pred", pred, "--ref", ref]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: 1 problem(s) in predictions file") and "wrong.jsonl:1: id '7' has no reference" in error
    assert "\n" not in error


def test_help_and_unknown_mode(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0 and "--pred" in capsys.readouterr().out
    assert main(["eval", "my-vlm", "--pred", "p", "--ref", "r"]) == 2  # a model folder takes --data, not --pred
    assert "--pred, --ref: only with `vlmforge eval score`" in capsys.readouterr().err
    assert main(["eval", "score", "--pred", "p"]) == 2
    assert "needs --pred PREDICTIONS.jsonl and --ref" in capsys.readouterr().err
