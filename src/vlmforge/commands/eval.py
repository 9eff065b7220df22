"""`vlmforge eval score`: score existing predictions against reference records.

    vlmforge eval score --pred preds.jsonl --ref test.jsonl [--task auto|caption|vqa] [--lang en|zh] [--out eval/]

Prints the metrics; with `--out`, also writes `metrics.json` and `report.md` (best and worst
examples). Exit code 2 with one line for bad input (unknown ids, wrong reference format).
"""

from __future__ import annotations

import argparse

# TODO(issue 6, generation): add the second mode `vlmforge eval MODEL_DIR --data test.jsonl --out eval/
# [--blank-images]` once the inference path exists: drop `choices` from MODE (anything that is not
# "score" is then a model folder), add --data / --blank-images / --batch-size, generate
# predictions.jsonl with the batched inference path, then call the same `_score` below.
MODES = ("score",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=MODES, help="'score': score an existing predictions file")
    parser.add_argument("--pred", required=True, help="predictions JSONL: one {\"id\": ..., \"prediction\": \"...\"} per line")
    parser.add_argument("--ref", required=True, help="reference records JSONL (vlmforge record format)")
    parser.add_argument("--task", choices=("auto", "caption", "vqa"), default="auto", help="default: detect from the references")
    parser.add_argument("--lang", choices=("en", "zh"), default=None, help="force the language (default: detect per record)")
    parser.add_argument("--out", default=None, help="folder for metrics.json and report.md")
    parser.add_argument(
        "--java-metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compute METEOR and SPICE when Java and pycocoevalcap are available (default: on)",
    )


def run(args: argparse.Namespace) -> int:
    return _score(args)


def _score(args: argparse.Namespace) -> int:
    from vlmforge.eval.report import summary_lines, write_report
    from vlmforge.eval.scoring import score_predictions

    result = score_predictions(args.pred, args.ref, task=args.task, lang=args.lang, java_metrics=args.java_metrics)
    print("\n".join(summary_lines(result)))
    if args.out:
        metrics_path, report_path = write_report(result, args.out)
        print(f"wrote {metrics_path} and {report_path}")
    return 0
