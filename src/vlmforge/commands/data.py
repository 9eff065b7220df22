"""`vlmforge data convert | check | synth`: prepare datasets in the canonical JSONL format.

    vlmforge data convert --from llava detail_23k.json complex_reasoning_77k.json --out llava.jsonl \\
        --image-root coco/train2017 --check-images
    vlmforge data check llava.jsonl --model runs/my-vlm --max-length 2048 --json report.json
    vlmforge data synth --out data/shapes

Exit codes: 0 clean, 1 problems found (listed, with file:line), 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlmforge.config import option, require
from vlmforge.data.convert import FORMATS  # the converters' registry itself (a light import: no torch)

REPORT_HELP = "also write the full report as JSON"
ROOT_HELP = "join image paths to this folder (repeatable; the first that holds the file wins)"


@dataclass
class DataConvertConfig:
    inputs: list[str] = option(help="source file(s) of the format", factory=list)
    fmt: Literal[FORMATS] | None = option(None, "source format (required)", flags=("--from",))
    out: str = option("", "output JSONL file (required)")
    image_root: list[str] = option(help=ROOT_HELP, factory=list, metavar="DIR", repeat=True)
    check_images: bool = option(False, "leave out (and report) records whose image files are missing")
    prompts: str | None = option(None, "caption prompts, one per line (coco/aic); unset: the shipped set",
                                 metavar="FILE")
    seed: int = option(0, "seed of the per-record prompt choice")
    source: str | None = option(None, "source name written into records; unset: the input file name stem")
    normalize_placeholders: bool = option(True, "move <image> before/after the question to '<image>\\n' + question")
    json: str | None = option(None, REPORT_HELP, metavar="REPORT")

    def validate(self) -> None:
        require(self.fmt, f"vlmforge data convert needs --from FORMAT (one of {', '.join(FORMATS)})")
        require(self.out, "vlmforge data convert needs --out OUT.jsonl")


@dataclass
class DataCheckConfig:
    inputs: list[str] = option(help="canonical JSONL file(s)", factory=list)
    image_root: list[str] = option(help="folder(s) relative image paths are under (repeatable); unset: the JSONL "
                                        "file's folder", factory=list, metavar="DIR", repeat=True)
    model: str | None = option(None, "VLM folder: measure token lengths with its template and processor",
                               metavar="MODEL_DIR")
    max_length: int | None = option(None, "report records longer than this many tokens (needs --model)", ge=1)
    max_pixels: int | None = option(None, "largest image accepted, in pixels; unset: the image loader's limit", ge=1)
    images: bool = option(True, "decode every image")
    workers: int = option(4, "threads decoding images", ge=1)
    json: str | None = option(None, "write the machine-readable report here", metavar="REPORT")


@dataclass
class DataSynthConfig:
    out: str = option("", "output folder (required)", metavar="DIR")
    seed: int = option(0, "seed of the scenes and questions")
    num_train: int | None = option(None, "training records; unset: the library's", ge=0)
    num_val: int | None = option(None, "validation records; unset: the library's", ge=0)
    num_test: int | None = option(None, "test records; unset: the library's", ge=0)
    image_size: int | None = option(None, "image side in pixels; unset: the library's", ge=1)
    referents: str | None = option(None, "what questions name their object by, comma-separated from "
                                         "shape,colour,position; unset: all three (the demo uses shape,colour)",
                                   metavar="LIST")

    def validate(self) -> None:
        require(self.out, "vlmforge data synth needs --out DIR")


# action -> (config, help, positional inputs' metavar or None)
ACTIONS = {
    "convert": (DataConvertConfig, "convert a public dataset format to vlmforge JSONL", "INPUT"),
    "check": (DataCheckConfig, "report problems and statistics of JSONL data", "DATA.jsonl"),
    "synth": (DataSynthConfig, "write the synthetic shapes dataset of the demo", None),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.config import field_help

    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, (config_class, help_text, inputs) in ACTIONS.items():
        action = actions.add_parser(name, help=help_text, description=help_text)
        if inputs:
            action.add_argument("inputs", nargs="+", metavar=inputs, help=field_help(config_class, "inputs"))
        add_config_arguments(action, config_class, skip=("inputs",))


def config_from_args(args: argparse.Namespace):
    """The action's config from the parsed flags (`config.from_args`)."""
    from vlmforge.config import from_args

    return from_args(ACTIONS[args.data_command][0], args)


def run(args: argparse.Namespace) -> int:
    handlers = {"convert": _run_convert, "check": _run_check, "synth": _run_synth}
    return handlers[args.data_command](config_from_args(args))


def _run_convert(config: DataConvertConfig) -> int:
    from vlmforge.data.convert import ConvertOptions, convert_files, format_convert_report

    _check_report_path(config.json)
    options = ConvertOptions(image_roots=config.image_root, check_images=config.check_images,
                             prompts_file=config.prompts, seed=config.seed, source=config.source,
                             normalize_placeholders=config.normalize_placeholders)
    report = convert_files(config.fmt, config.inputs, config.out, options)
    print(format_convert_report(report))
    _write_json(config.json, report.to_dict())
    return 1 if report.problems else 0


def _run_check(config: DataCheckConfig) -> int:
    from vlmforge.data.check import CheckOptions, check_files, format_check_report
    from vlmforge.data.images import DEFAULT_MAX_PIXELS

    _check_report_path(config.json)
    options = CheckOptions(image_roots=config.image_root, model_dir=config.model, max_length=config.max_length,
                           max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS, check_images=config.images,
                           workers=config.workers)
    report = check_files(config.inputs, options)
    print(format_check_report(report))
    _write_json(config.json, report.to_dict())
    return 0 if report.ok else 1


def _run_synth(config: DataSynthConfig) -> int:
    from vlmforge.data.synth import write_synthetic_dataset

    sizes = {"num_train": config.num_train, "num_val": config.num_val, "num_test": config.num_test,
             "image_size": config.image_size}
    options = {key: value for key, value in sizes.items() if value is not None}
    if config.referents:
        options["referents"] = tuple(name.strip() for name in config.referents.split(",") if name.strip())
    summary = write_synthetic_dataset(config.out, seed=config.seed, **options)
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return 0


def _check_report_path(path: str | None) -> None:
    """Refuse a `--json` path that is a folder before any work is done (one line, exit 2)."""
    from vlmforge.errors import DataError

    if path and Path(path).is_dir():
        raise DataError(f"--json {path} is a folder; name the report file (e.g. {Path(path) / 'report.json'})")


def _write_json(path: str | None, data: dict) -> None:
    """Write a report; a path that cannot be written is one clear line, not a traceback."""
    from vlmforge.errors import DataError
    from vlmforge.utils.atomic import atomic_write_text

    if not path:
        return
    _check_report_path(path)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except OSError as error:
        raise DataError(f"cannot write --json {path}: {error.strerror or error}") from error
