"""Write a scoring result (`vlmforge.eval.scoring.score_predictions`) to a folder:
`metrics.json` (everything but the per-example rows) and `report.md` (metrics, then the best and
worst examples); a run with blank images writes `metrics_blank.json` and `report_blank.md`.
`summary_lines` / `gap_lines` give the few lines a command prints; `write_gap_section` adds the
blank-image gap (normal − blank, per metric) to a report.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmforge.utils.atomic import atomic_write_text

REPORT_EXAMPLES = 5
_SHOWN_REFERENCES = 3
GAP_HEADING = "## Blank-image gap"


def write_report(result: dict, out_dir: str | Path, num_examples: int = REPORT_EXAMPLES,
                 suffix: str = "") -> tuple[Path, Path]:
    """Write `metrics{suffix}.json` and `report{suffix}.md` into `out_dir` (created if needed); return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {key: value for key, value in result.items() if key != "per_example"}
    metrics_path = atomic_write_text(out_dir / f"metrics{suffix}.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    report_path = atomic_write_text(out_dir / f"report{suffix}.md", markdown_report(result, num_examples))
    return metrics_path, report_path


def gap_lines(gap: dict[str, float]) -> list[str]:
    """The blank-image gap as plain lines: how much each metric drops without the image."""
    lines = ["blank-image gap (normal - blank; larger = the model relies more on the image):"]
    return lines + [f"  {name:<12} {value:+.4f}" for name, value in gap.items()]


def write_gap_section(report_path: Path, gap: dict[str, float]) -> None:
    """Put the gap section at the end of an existing report, replacing an older one."""
    text = report_path.read_text(encoding="utf-8").split(f"\n{GAP_HEADING}\n")[0].rstrip("\n")
    rows = [f"| {name} | {value:+.4f} |" for name, value in gap.items()]
    section = [GAP_HEADING, "", "Normal run minus the run with blank images (`metrics.json` − `metrics_blank.json`): "
               "how much each metric owes to the image.", "", "| metric | gap |", "|---|---|", *rows]
    atomic_write_text(report_path, text + "\n\n" + "\n".join(section) + "\n")


def summary_lines(result: dict) -> list[str]:
    """A few plain lines: counts, each metric, what was skipped."""
    lines = [f"{result['task']}: {result['num_examples']} examples ({_languages(result)}), "
             f"{result['num_empty_predictions']} empty predictions"]  # fmt: skip
    lines += [f"  {name:<12} {value:.4f}" for name, value in result["metrics"].items()]
    lines += [f"  {name:<12} skipped: {why}" for name, why in result.get("skipped", {}).items()]
    return lines


def markdown_report(result: dict, num_examples: int = REPORT_EXAMPLES) -> str:
    """The report: sources, metric tables, skipped metrics, best and worst examples."""
    parts = [
        f"# Evaluation: {result['task']}\n",
        f"Predictions `{result['predictions']}` against references `{result['references']}`: "
        f"{result['num_examples']} examples ({_languages(result)}), {result['num_empty_predictions']} empty "
        f"predictions (scored zero), {result['num_references_without_prediction']} references without a prediction.\n",
    ]
    if result.get("blank_images"):
        parts.append("Images were replaced by blank (black) images of the same size.\n")
    parts += [_metrics_table(result)]
    for key, name in (("by_lang", "language"), ("by_type", "question type")):
        if result.get(key):
            parts.append(_group_table(f"By {name}", result[key]))
    if result.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{name} ({why})" for name, why in result["skipped"].items()) + ".\n")
    parts += _examples_sections(result, num_examples)
    return "\n".join(parts)


def _languages(result: dict) -> str:
    return ", ".join(f"{lang}: {count}" for lang, count in result["languages"].items())


def _metrics_table(result: dict) -> str:
    names = list(result["metrics"])
    rows = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    rows.append("| " + " | ".join(f"{result['metrics'][name]:.4f}" for name in names) + " |")
    return "\n".join(rows) + "\n"


def _group_table(title: str, groups: dict) -> str:
    """One row per group: {"metrics": {...}, "num_examples"} (captions) or {"exact_match", "num_examples"} (VQA)."""
    rows_of = {group: entry.get("metrics") or _without_count(entry) for group, entry in groups.items()}
    names = list(next(iter(rows_of.values())))
    rows = [f"## {title}\n", "| group | examples | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for group, metrics in rows_of.items():
        values = " | ".join(f"{metrics[name]:.4f}" for name in names)
        rows.append(f"| {group} | {groups[group]['num_examples']} | {values} |")
    return "\n".join(rows) + "\n"


def _without_count(entry: dict) -> dict:
    return {name: value for name, value in entry.items() if name != "num_examples"}


def _examples_sections(result: dict, num_examples: int) -> list[str]:
    """The best and the worst examples by the per-example score (they never overlap)."""
    ranked = sorted(result.get("per_example", []), key=lambda row: -row["score"])
    best_count = min(num_examples, (len(ranked) + 1) // 2)
    best = ranked[:best_count]
    worst = ranked[best_count:][::-1][:num_examples]
    score_name = result.get("score_name", "score")
    sections = [(f"Best {len(best)} (by {score_name})", best), (f"Worst {len(worst)} (by {score_name})", worst)]
    return [_example_list(title, rows) for title, rows in sections if rows]


def _example_list(title: str, rows: list[dict]) -> str:
    lines = [f"## {title}\n"]
    for number, row in enumerate(rows, start=1):
        lines.append(f"{number}. `{row['id']}` — {row['score']:.4f}")
        if row.get("question"):
            lines.append(f"   - question: {_one_line(row['question'])}")
        lines.append(f"   - prediction: {_one_line(row['prediction']) or '*(empty)*'}")
        shown = [_one_line(ref) for ref in row["references"][:_SHOWN_REFERENCES]]
        more = f" (+{len(row['references']) - _SHOWN_REFERENCES} more)" if len(row["references"]) > _SHOWN_REFERENCES else ""
        lines.append(f"   - references: {' / '.join(shown)}{more}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
