"""`vlmforge eval`: generate answers with a model and score them, or score existing predictions.

    vlmforge eval my-vlm --data test.jsonl --out eval/                 # generate, then score
    vlmforge eval my-vlm --data test.jsonl --out eval/ --blank-images  # same with blank images; prints the gap
    vlmforge eval score --pred preds.jsonl --ref test.jsonl [--task auto|caption|vqa] [--lang en|zh] [--out eval/]

A first argument `score` scores a predictions file; anything else is a model folder. Prints the
metrics; writes `predictions.jsonl`, `metrics.json` and `report.md` (best and worst examples) into
`--out`. Exit code 2 with one line for bad input (unknown ids, wrong reference format).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from vlmforge.config import option
from vlmforge.eval.scoring import TASKS  # the registries themselves (light imports: no torch)
from vlmforge.eval.text import LANGUAGES
from vlmforge.utils.device import DEVICE_HELP

SCORE_MODE = "score"
DEFAULT_OUT = "eval"


@dataclass
class EvalConfig:
    data: str = option("", "model mode: records JSONL to answer and score (vlmforge record format)")
    out: str = option("", f"folder for predictions, metrics.json, report.md; empty: {DEFAULT_OUT}/ (model), print only (score)")
    blank_images: bool = option(False, "model mode: replace every image by a blank one of the same size")
    batch_size: int = option(16, "model mode: records per generation batch")
    max_new_tokens: int = option(64, "model mode: longest answer in tokens")
    max_samples: int | None = option(None, "model mode: evaluate only the first N ids; unset: all")
    image_root: list[str] = option(help="model mode: folders relative image paths are joined to; empty: the data file's",
                                   factory=list)
    dtype: str = option("", "model mode: load the model in this dtype (float32, bfloat16); empty: as saved")
    device: str = option("", f"model mode: {DEVICE_HELP}")
    pred: str = option("", "score mode: predictions JSONL, one {\"id\": ..., \"prediction\": \"...\"} per line")
    ref: str = option("", "score mode: reference records JSONL (vlmforge record format)")
    task: Literal[TASKS] = option("auto", "caption or vqa; auto: detect from the references")
    lang: Literal[LANGUAGES] | None = option(None, "force the language; unset: detect per record")
    java_metrics: bool = option(True, "also compute METEOR and SPICE when Java and pycocoevalcap are available")


_SCORE_ONLY = ("pred", "ref")
_MODEL_ONLY = ("data", "blank_images", "batch_size", "max_new_tokens", "max_samples", "image_root", "dtype", "device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments

    parser.add_argument("mode", metavar="score|MODEL_DIR",
                        help="'score': score an existing predictions file; a model folder: generate answers, then score")
    add_config_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    from vlmforge.config import from_dict, overrides_from_args

    given = overrides_from_args(args, EvalConfig)
    config = from_dict(EvalConfig, given)
    if args.mode == SCORE_MODE:
        _refuse_flags(given, _MODEL_ONLY, "only with a model folder (vlmforge eval MODEL_DIR --data ...)")
        return _score(config)
    _refuse_flags(given, _SCORE_ONLY, "only with `vlmforge eval score`; with a model folder give --data")
    return _evaluate(args.mode, config)


def _refuse_flags(given: dict, names: tuple[str, ...], why: str) -> None:
    from vlmforge.errors import ConfigError

    wrong = [f"--{name.replace('_', '-')}" for name in names if name in given]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: {why}")


def _score(config: EvalConfig) -> int:
    from vlmforge.errors import ConfigError
    from vlmforge.eval.report import summary_lines, write_report
    from vlmforge.eval.scoring import score_predictions

    if not (config.pred and config.ref):
        raise ConfigError("vlmforge eval score needs --pred PREDICTIONS.jsonl and --ref REFERENCES.jsonl")
    result = score_predictions(config.pred, config.ref, task=config.task, lang=config.lang, java_metrics=config.java_metrics)
    print("\n".join(summary_lines(result)))
    if config.out:
        metrics_path, report_path = write_report(result, config.out)
        print(f"wrote {metrics_path} and {report_path}")
    return 0


def _evaluate(model_dir: str, config: EvalConfig) -> int:
    from vlmforge.errors import ConfigError
    from vlmforge.eval.evaluate import BLANK_SUFFIX, evaluate_model
    from vlmforge.eval.report import gap_lines, summary_lines

    if not config.data:
        raise ConfigError(f"vlmforge eval {model_dir} needs --data RECORDS.jsonl (to score existing predictions: eval score)")
    model, processor = _load(model_dir, config)
    out = config.out or DEFAULT_OUT
    result = evaluate_model(model, processor, config.data, out, blank_images=config.blank_images,
                            batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                            max_samples=config.max_samples, image_roots=config.image_root, task=config.task,
                            lang=config.lang, java_metrics=config.java_metrics)
    print("\n".join(summary_lines(result)))
    if "blank_gap" in result:
        print("\n".join(gap_lines(result["blank_gap"])))
    suffix = BLANK_SUFFIX if config.blank_images else ""
    print(f"wrote predictions{suffix}.jsonl, metrics{suffix}.json and report{suffix}.md to {out}")
    return 0


def _load(model_dir: str, config: EvalConfig):
    from vlmforge.model.load import load
    from vlmforge.utils.device import resolve_device

    return load(model_dir, dtype=config.dtype or None, device=resolve_device(config.device))
