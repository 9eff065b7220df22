"""score_predictions on real files: captions and VQA, languages, bad input, and the written report."""

import json
from pathlib import Path

import pytest

from vlmforge.errors import ConfigError, DataError
from vlmforge.eval.caption_metrics import caption_scores
from vlmforge.eval.report import write_report
from vlmforge.eval.scoring import score_predictions
from vlmforge.eval.text import tokenize

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def record(record_id, answer, question="<image>\nDescribe the image.", **fields):
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": record_id, "messages": messages, "images": ["a.jpg"], **fields}


def caption_files(tmp_path: Path, name: str = "captions_en.json"):
    """COCO-style references as one record per caption (same id repeated), and the predictions."""
    examples = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    refs = [record(ex["id"], caption) for ex in examples for caption in ex["references"]]
    preds = [{"id": ex["id"], "prediction": ex["prediction"]} for ex in examples]
    return write_jsonl(tmp_path / "preds.jsonl", preds), write_jsonl(tmp_path / "test.jsonl", refs), examples


def test_caption_scores_match_the_metrics_on_the_same_words(tmp_path):
    pred_path, ref_path, examples = caption_files(tmp_path)
    result = score_predictions(pred_path, ref_path, java_metrics=False)
    expected, _ = caption_scores(
        [tokenize(ex["prediction"], "en") for ex in examples],
        [[tokenize(ref, "en") for ref in ex["references"]] for ex in examples],
    )
    assert result["task"] == "caption" and result["num_examples"] == 10
    assert result["metrics"] == pytest.approx(expected)
    assert result["num_empty_predictions"] == 1
    empty = next(row for row in result["per_example"] if row["prediction"] == "")
    assert empty["score"] == 0.0 and len(empty["references"]) == 5
    assert result["skipped"] == {"METEOR": "not requested", "SPICE": "not requested"}


def test_end_to_end_equals_the_full_coco_evaluation(tmp_path):
    """Golden scores from pycocoevalcap with its Java PTB tokenizer (tests/fixtures/eval/regenerate.py)."""
    pred_path, ref_path, _ = caption_files(tmp_path)
    golden = json.loads((FIXTURES / "pycocoevalcap_en_scores.json").read_text(encoding="utf-8"))
    result = score_predictions(pred_path, ref_path, java_metrics=False)
    assert result["metrics"] == pytest.approx(golden, abs=1e-9)


def test_references_field_and_repeated_ids_give_the_same_references(tmp_path):
    pred_path, repeated_path, examples = caption_files(tmp_path)
    listed = [record(ex["id"], ex["references"][0], references=ex["references"]) for ex in examples]
    listed_path = write_jsonl(tmp_path / "listed.jsonl", listed)
    by_repeated = score_predictions(pred_path, repeated_path, java_metrics=False)
    by_list = score_predictions(pred_path, listed_path, java_metrics=False)
    assert by_list["metrics"] == pytest.approx(by_repeated["metrics"])


def test_chinese_captions_detected_and_cut_with_jieba(tmp_path):
    pred_path, ref_path, examples = caption_files(tmp_path, "captions_zh.json")
    result = score_predictions(pred_path, ref_path, java_metrics=True)
    expected, _ = caption_scores(
        [tokenize(ex["prediction"], "zh") for ex in examples],
        [[tokenize(ref, "zh") for ref in ex["references"]] for ex in examples],
    )
    assert result["languages"] == {"zh": 5}
    assert result["metrics"] == pytest.approx(expected)
    assert result["skipped"]["METEOR"] == "English only"


def test_forced_language_changes_tokenisation(tmp_path):
    pred_path, ref_path, _ = caption_files(tmp_path, "captions_zh.json")
    detected = score_predictions(pred_path, ref_path, java_metrics=False)
    forced = score_predictions(pred_path, ref_path, lang="en", java_metrics=False)
    assert forced["languages"] == {"en": 5}
    assert forced["metrics"]["BLEU-1"] != pytest.approx(detected["metrics"]["BLEU-1"])


def test_mixed_languages_are_also_scored_per_language(tmp_path):
    refs = [record(1, "A dog runs on the grass."), record(1, "A brown dog running."), record(2, "一只猫在睡觉")]
    preds = [{"id": 1, "prediction": "a dog running on grass"}, {"id": 2, "prediction": "一只猫在睡觉"}]
    result = score_predictions(write_jsonl(tmp_path / "p.jsonl", preds), write_jsonl(tmp_path / "r.jsonl", refs), task="caption", java_metrics=False)
    assert result["languages"] == {"en": 1, "zh": 1}
    assert set(result["by_lang"]) == {"en", "zh"} and result["by_lang"]["zh"]["num_examples"] == 1


def test_vqa_per_type_and_language(tmp_path):
    refs = [
        record("q1", "Yes", question="<image>\nIs there a dog?", type="yes/no"),
        record("q2", "two", question="<image>\nHow many cats?", type="number"),
        record("q3", "两个", question="<image>\n有几个人？", type="number", lang="zh"),
        record("q4", "red", question="<image>\nWhat color is the bus?", type="color"),
    ]
    preds = [{"id": "q1", "prediction": "yes."}, {"id": "q2", "prediction": "2"}, {"id": "q3", "prediction": "2个"}, {"id": "q4", "prediction": None}]
    result = score_predictions(write_jsonl(tmp_path / "p.jsonl", preds), write_jsonl(tmp_path / "r.jsonl", refs))
    assert result["task"] == "vqa"
    assert result["metrics"] == {"exact_match": 0.75}
    assert result["by_type"]["number"] == {"exact_match": 1.0, "num_examples": 2}
    assert result["by_type"]["color"]["exact_match"] == 0.0
    assert result["by_lang"]["zh"]["exact_match"] == 1.0
    assert result["num_empty_predictions"] == 1
    assert result["per_example"][1]["question"] == "How many cats?"


def test_vqav2_style_references_get_the_official_accuracy_as_headline(tmp_path, capsys):
    from vlmforge.cli import main

    ten = {"q1": ["2"] * 3 + ["3"] * 7, "q2": ["yes"] * 10}
    refs = [record(qid, answers[0], question="<image>\nHow many?", references=answers, type="number")
            for qid, answers in ten.items()]
    preds = [{"id": "q1", "prediction": "two"}, {"id": "q2", "prediction": "yes"}]
    pred_path, ref_path = write_jsonl(tmp_path / "p.jsonl", preds), write_jsonl(tmp_path / "r.jsonl", refs)
    result = score_predictions(pred_path, ref_path)
    assert result["score_name"] == "vqa_accuracy"
    assert result["metrics"] == {"vqa_accuracy": pytest.approx(0.95), "exact_match": 1.0}
    assert [row["score"] for row in result["per_example"]] == [pytest.approx(0.9), 1.0]
    assert main(["eval", "score", "--pred", str(pred_path), "--ref", str(ref_path), "--out", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "vqa_accuracy" in report and "0.9500" in report


def test_auto_task_uses_caption_type_then_answer_length(tmp_path):
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prediction": "yes"} for i in (1, 2, 3)])
    refs = [record(1, "yes"), record(2, "a red bus"), record(3, "2")]
    assert score_predictions(preds, write_jsonl(tmp_path / "r.jsonl", refs))["task"] == "vqa"
    typed = [record(i, "a dog", type="caption") for i in (1, 2, 3)]
    assert score_predictions(preds, write_jsonl(tmp_path / "t.jsonl", typed), java_metrics=False)["task"] == "caption"


def test_prediction_without_reference_names_id_and_line(tmp_path):
    _, ref_path, _ = caption_files(tmp_path)
    preds = [{"id": 139, "prediction": "a surfer"}, {"id": 999999, "prediction": "a cat"}]
    pred_path = write_jsonl(tmp_path / "bad_preds.jsonl", preds)
    with pytest.raises(DataError, match=r"bad_preds\.jsonl:2: id '999999' has no reference in .*test\.jsonl"):
        score_predictions(pred_path, ref_path, java_metrics=False)


def test_duplicate_and_malformed_predictions_are_reported_together(tmp_path):
    _, ref_path, _ = caption_files(tmp_path)
    pred_path = tmp_path / "p.jsonl"
    pred_path.write_text('{"id": 139, "prediction": "a"}\n{"id": "139", "prediction": "b"}\nnot json\n{"id": 285}\n', encoding="utf-8")
    with pytest.raises(DataError) as error:
        score_predictions(pred_path, ref_path, java_metrics=False)
    message = str(error.value)
    assert message.startswith("3 problem(s)") and "\n" not in message
    assert "p.jsonl:2: id '139' is predicted twice (first at " in message
    assert "p.jsonl:3: not valid JSON" in message
    assert "p.jsonl:4: id '285' has no 'prediction' field" in message


def test_reference_file_in_wrong_format(tmp_path):
    pred_path = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prediction": "a dog"}])
    llava_json = tmp_path / "llava.json"
    llava_json.write_text(json.dumps([{"id": 1, "conversations": []}], indent=1), encoding="utf-8")
    with pytest.raises(DataError, match=r"llava\.json:1: one JSON array, not JSONL"):
        score_predictions(pred_path, llava_json)
    with pytest.raises(DataError, match=r"p\.jsonl:1: id '1' has no assistant turn .*\(is this a predictions file\?\)"):
        score_predictions(pred_path, pred_path)
    bad_messages = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "messages": "a dog"}])
    with pytest.raises(DataError, match=r"r\.jsonl:1: id '1': 'messages' must be a list"):
        score_predictions(pred_path, bad_messages)
    with pytest.raises(DataError, match="no such file"):
        score_predictions(pred_path, tmp_path / "missing.jsonl")


def test_unknown_task_or_language(tmp_path):
    pred_path, ref_path, _ = caption_files(tmp_path)
    with pytest.raises(ConfigError, match="unknown task 'ocr'"):
        score_predictions(pred_path, ref_path, task="ocr")
    with pytest.raises(ConfigError, match="unknown language 'fr'"):
        score_predictions(pred_path, ref_path, lang="fr")


def test_write_report(tmp_path):
    pred_path, ref_path, _ = caption_files(tmp_path)
    result = score_predictions(pred_path, ref_path, java_metrics=False)
    metrics_path, report_path = write_report(result, tmp_path / "eval")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert "per_example" not in metrics and metrics["metrics"]["CIDEr-D"] == pytest.approx(result["metrics"]["CIDEr-D"])
    report = report_path.read_text(encoding="utf-8")
    best = report.split("## Best 5 (by CIDEr-D)")[1].split("## Worst")[0]
    worst = report.split("## Worst 5 (by CIDEr-D)")[1]
    assert "a group of people standing around a table with food" in best  # an exact copy of a reference
    assert "*(empty)*" in worst and "Zebras." in worst
    assert "| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr-D |" in report
