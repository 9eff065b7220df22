"""The demo's proof, as numbers and text: accuracy per question type × language, with and without the image.

    table = accuracy_table(result["per_example"])        # {"colour": {"en": 0.98, "zh": 0.96}, ...}
    print(format_table(report))                          # the table `vlmforge demo` prints
    print(format_samples(report["samples"]))

`per_example` rows come from `vlmforge.eval.evaluate.evaluate_model` (`type`, `lang`, `score`).
Pure functions over plain dicts: no model, no files, so they are tested on their own.
"""

from __future__ import annotations

from collections import defaultdict

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER
from vlmforge.data.synth_language import FOLLOW_UP, LANGUAGES, QUESTION_TYPES


def accuracy_table(per_example: list[dict]) -> dict[str, dict[str, float]]:
    """Mean score per question type and language: {type: {lang: accuracy}}, types in a fixed order."""
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in per_example:
        scores[(row.get("type") or "(none)", row.get("lang") or "?")].append(float(row["score"]))
    types = [t for t in (*QUESTION_TYPES, FOLLOW_UP) if any(key[0] == t for key in scores)]
    types += sorted({key[0] for key in scores} - set(types))
    table: dict[str, dict[str, float]] = {}
    for qtype in types:
        langs = sorted({lang for t, lang in scores if t == qtype}, key=_language_order)
        table[qtype] = {lang: _rounded_mean(scores[(qtype, lang)]) for lang in langs}
    return table


def overall_accuracy(per_example: list[dict]) -> float:
    return _rounded_mean([float(row["score"]) for row in per_example])


def _rounded_mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def _language_order(lang: str) -> tuple[int, str]:
    return (LANGUAGES.index(lang) if lang in LANGUAGES else len(LANGUAGES), lang)


def format_table(report: dict) -> str:
    """The accuracy table: one row per question type, a column per language, with and without the image."""
    accuracy, blind = report["accuracy"], report["blind_accuracy"]
    langs = sorted({lang for row in accuracy.values() for lang in row}, key=_language_order)
    header = ["question", *langs, *(f"blind {lang}" for lang in langs)]
    rows = [header]
    for qtype, by_lang in accuracy.items():
        blind_row = blind.get(qtype, {})
        rows.append([qtype, *(_percent(by_lang.get(lang)) for lang in langs),
                     *(_percent(blind_row.get(lang)) for lang in langs)])
    rows.append(["overall", _percent(report["overall"]), *[""] * (len(langs) - 1),
                 _percent(report["blind_overall"]), *[""] * (len(langs) - 1)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def sample_conversation(record: dict, prediction: str, description: str, correct: bool) -> dict:
    """One test record shown to the user: its image, what the image holds, the question and both answers."""
    question = next(m["content"] for m in record["messages"] if m["role"] == "user")
    reference = next(m["content"] for m in record["messages"] if m["role"] == "assistant")
    return {"id": record["id"], "image": record["images"][0], "description": description,
            "question": question.replace(IMAGE_PLACEHOLDER, "").strip(), "answer": prediction, "reference": reference,
            "correct": bool(correct)}


def format_samples(samples: list[dict]) -> str:
    """Sample conversations as text, each with the image's description."""
    blocks = []
    for sample in samples:
        mark = "right" if sample["correct"] else "wrong"
        blocks.append("\n".join([
            f"image {sample['image']}: {sample['description']}",
            f"  user:      {sample['question']}",
            f"  assistant: {sample['answer']}   (reference: {sample['reference']}; {mark})",
        ]))
    return "\n\n".join(blocks)


def format_seconds(stage_seconds: dict[str, float], total: float) -> str:
    """"data 4s · parts 95s · … · total 412s"."""
    parts = [f"{name} {seconds:.0f}s" for name, seconds in stage_seconds.items()]
    return " · ".join([*parts, f"total {total:.0f}s"])
