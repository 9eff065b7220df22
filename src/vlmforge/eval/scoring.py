"""Score a predictions file against reference records: captions (BLEU, ROUGE-L, CIDEr-D, and
METEOR / SPICE when Java allows) or VQA (exact match; the official VQA accuracy too when every
question has several human answers), overall, per language and per question type.

    result = score_predictions("preds.jsonl", "test.jsonl")          # task and language detected
    write_report(result, "eval/")                                     # metrics.json + report.md

The result is a plain dict: what `metrics.json` holds, plus `per_example` (id, prediction,
references, score) for the report. Empty predictions score zero and stay in every average.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from vlmforge.errors import ConfigError, DataError
from vlmforge.eval import text as caption_text
from vlmforge.eval.caption_metrics import caption_scores
from vlmforge.eval.java_metrics import JAVA_METRICS, java_caption_metrics
from vlmforge.eval.references import Reference, read_predictions, read_references
from vlmforge.eval.vqa_metrics import vqa_scores

logger = logging.getLogger(__name__)

TASKS = ("auto", "caption", "vqa")
_SHORT_ANSWER_WORDS, _SHORT_ANSWER_CHARS = 3, 4  # "auto": VQA answers are this short (en words / zh chars)


@dataclass
class Example:
    """One prediction with its references."""

    id: str
    prediction: str
    reference: Reference
    lang: str


def score_predictions(
    pred_path: str | Path, ref_path: str | Path, task: str = "auto", lang: str | None = None, java_metrics: bool = True
) -> dict:
    """Score `pred_path` (JSONL `{"id", "prediction"}`) against the records of `ref_path`.

    `task`: "caption", "vqa" or "auto" (caption when every record has `type: caption`, else VQA
    when most reference answers are at most 3 words or 4 Chinese characters).
    `lang`: "en" / "zh" forces the language; None takes each record's `lang` field, or detects
    Chinese characters in its references. `java_metrics`: try METEOR and SPICE.
    """
    _check_choice("task", task, TASKS)
    lang = caption_text.check_lang(lang)
    references = read_references(ref_path)
    predictions = read_predictions(pred_path, references, ref_path)
    examples = [Example(p.id, p.text, references[p.id], _example_lang(references[p.id], lang)) for p in predictions]
    task = _resolve_task(task, examples)
    result = _header(task, pred_path, ref_path, examples, references)
    result.update(_score_vqa(examples) if task == "vqa" else _score_captions(examples, java_metrics))
    return result


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")


def _example_lang(reference: Reference, forced: str | None) -> str:
    if forced:
        return forced
    if reference.lang in caption_text.LANGUAGES:
        return reference.lang
    return caption_text.detect_lang(reference.answers)


def _resolve_task(task: str, examples: list[Example]) -> str:
    if task != "auto":
        return task
    if all(example.reference.type == "caption" for example in examples):
        logger.info("task: caption (every record has type 'caption')")
        return "caption"
    answers = [answer for example in examples for answer in example.reference.answers]
    short = sum(_is_short_answer(answer) for answer in answers) / len(answers)
    detected = "vqa" if short > 0.5 else "caption"
    logger.info("task: %s (%.0f%% of reference answers are short); set task to override", detected, 100 * short)
    return detected


def _is_short_answer(answer: str) -> bool:
    if caption_text.has_cjk(answer):
        return len(answer.strip()) <= _SHORT_ANSWER_CHARS
    return len(answer.split()) <= _SHORT_ANSWER_WORDS


def _header(task: str, pred_path, ref_path, examples: list[Example], references: dict) -> dict:
    missing = len(references) - len(examples)
    if missing:
        logger.warning("%d reference id(s) have no prediction; scoring the %d that do", missing, len(examples))
    langs = [example.lang for example in examples]
    return {
        "task": task,
        "predictions": str(pred_path),
        "references": str(ref_path),
        "num_examples": len(examples),
        "num_empty_predictions": sum(not example.prediction.strip() for example in examples),
        "num_references_without_prediction": missing,
        "languages": {lang: langs.count(lang) for lang in sorted(set(langs))},
    }


# ------------------------------------------------------------------------------------- captions


def _score_captions(examples: list[Example], java_metrics: bool) -> dict:
    hypotheses = [caption_text.tokenize(example.prediction, example.lang) for example in examples]
    references = [_tokenized_references(example) for example in examples]
    metrics, per_example = caption_scores(hypotheses, references)
    langs = sorted({example.lang for example in examples})
    extra, skipped = _java_metrics(hypotheses, references, langs, java_metrics)
    result = {"metrics": {**metrics, **extra}}
    if len(langs) > 1:
        result["by_lang"] = {lang: _caption_subset(hypotheses, references, examples, lang) for lang in langs}
    result.update(skipped=skipped, score_name="CIDEr-D", per_example=_per_example(examples, per_example["CIDEr-D"]))
    return result


def _tokenized_references(example: Example) -> list[list[str]]:
    tokenized = [caption_text.tokenize(answer, example.lang) for answer in example.reference.answers]
    kept = [tokens for tokens in tokenized if tokens]
    if not kept:
        raise DataError(f"{example.reference.location}: id {example.id!r} has no words in any reference")
    return kept


def _caption_subset(hypotheses, references, examples: list[Example], lang: str) -> dict:
    chosen = [i for i, example in enumerate(examples) if example.lang == lang]
    metrics, _ = caption_scores([hypotheses[i] for i in chosen], [references[i] for i in chosen])
    return {"metrics": metrics, "num_examples": len(chosen)}


def _java_metrics(hypotheses, references, langs: list[str], wanted: bool) -> tuple[dict, dict]:
    if not wanted:
        return {}, {name: "not requested" for name in JAVA_METRICS}
    lang = langs[0] if len(langs) == 1 else "mixed"
    joined_refs = [[" ".join(ref) for ref in refs] for refs in references]
    return java_caption_metrics([" ".join(hyp) for hyp in hypotheses], joined_refs, lang)


# ------------------------------------------------------------------------------------------ VQA


def _score_vqa(examples: list[Example]) -> dict:
    scores, per_example = vqa_scores(
        [example.prediction for example in examples],
        [example.reference.answers for example in examples],
        types=[example.reference.type for example in examples],
        langs=[example.lang for example in examples],
    )
    metrics = {name: scores.pop(name) for name in ("vqa_accuracy", "exact_match") if name in scores}
    result = {"metrics": metrics, "score_name": next(iter(metrics))}  # VQA accuracy leads when there is one
    result.update(scores)
    result["per_example"] = _per_example(examples, per_example)
    return result


def _per_example(examples: list[Example], scores: list[float]) -> list[dict]:
    return [
        {
            "id": example.id,
            "prediction": example.prediction,
            "references": example.reference.answers,
            "question": example.reference.question,
            "lang": example.lang,
            "type": example.reference.type,
            "score": score,
        }
        for example, score in zip(examples, scores, strict=True)
    ]
