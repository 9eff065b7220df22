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
from pathlib import Path

FORMATS = ("llava", "llava-pretrain", "coco", "aic", "sharegpt")  # vlmforge.data.convert.FORMATS, without importing it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    _add_convert(actions.add_parser("convert", help="convert a public dataset format to vlmforge JSONL"))
    _add_check(actions.add_parser("check", help="report problems and statistics of JSONL data"))
    _add_synth(actions.add_parser("synth", help="write the synthetic shapes dataset of the demo"))


def _add_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="source file(s) of the format")
    parser.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="source format")
    parser.add_argument("--out", required=True, help="output JSONL file")
    parser.add_argument("--image-root", action="append", default=[], metavar="DIR",
                        help="join image paths to this folder (repeatable; the first that holds the file wins)")
    parser.add_argument("--check-images", action="store_true", help="leave out (and report) records whose image files are missing")
    parser.add_argument("--prompts", metavar="FILE", help="caption prompts, one per line (coco/aic; default: shipped set)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-record prompt choice")
    parser.add_argument("--source", help="source name written into records (default: input file name stem)")
    parser.add_argument("--normalize-placeholders", action=argparse.BooleanOptionalAction, default=True,
                        help="move <image> before/after the question to '<image>\\n' + question (default: on)")
    parser.add_argument("--json", metavar="REPORT", help="also write the full report as JSON")


def _add_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="DATA.jsonl", help="canonical JSONL file(s)")
    parser.add_argument("--image-root", action="append", default=[], metavar="DIR",
                        help="folder(s) relative image paths are under (default: the JSONL file's folder)")
    parser.add_argument("--model", metavar="MODEL_DIR", help="VLM folder: measure token lengths with its template and processor")
    parser.add_argument("--max-length", type=int, help="report records longer than this many tokens (needs --model)")
    parser.add_argument("--max-pixels", type=int, default=None, help="largest image accepted, in pixels")
    parser.add_argument("--images", action=argparse.BooleanOptionalAction, default=True, help="decode every image (default: on)")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images")
    parser.add_argument("--json", metavar="REPORT", help="write the machine-readable report here")


def _add_synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, help="training records (default: the library's)")
    parser.add_argument("--num-val", type=int, help="validation records")
    parser.add_argument("--num-test", type=int, help="test records")
    parser.add_argument("--image-size", type=int, help="image side in pixels")
    parser.add_argument("--referents", metavar="LIST",
                        help="what questions name their object by, comma-separated from shape,colour,position "
                             "(default: all three; the demo uses shape,colour)")


def run(args: argparse.Namespace) -> int:
    handlers = {"convert": _run_convert, "check": _run_check, "synth": _run_synth}
    return handlers[args.data_command](args)


def _run_convert(args: argparse.Namespace) -> int:
    from vlmforge.data.convert import ConvertOptions, convert_files, format_convert_report

    _check_report_path(args.json)
    options = ConvertOptions(image_roots=args.image_root, check_images=args.check_images, prompts_file=args.prompts,
                             seed=args.seed, source=args.source, normalize_placeholders=args.normalize_placeholders)
    report = convert_files(args.fmt, args.inputs, args.out, options)
    print(format_convert_report(report))
    _write_json(args.json, report.to_dict())
    return 1 if report.problems else 0


def _run_check(args: argparse.Namespace) -> int:
    from vlmforge.data.check import CheckOptions, check_files, format_check_report
    from vlmforge.data.images import DEFAULT_MAX_PIXELS

    _check_report_path(args.json)
    options = CheckOptions(image_roots=args.image_root, model_dir=args.model, max_length=args.max_length,
                           max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, check_images=args.images, workers=args.workers)
    report = check_files(args.inputs, options)
    print(format_check_report(report))
    _write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def _run_synth(args: argparse.Namespace) -> int:
    from vlmforge.data.synth import write_synthetic_dataset

    sizes = {"num_train": args.num_train, "num_val": args.num_val, "num_test": args.num_test, "image_size": args.image_size}
    options = {key: value for key, value in sizes.items() if value is not None}
    if args.referents:
        options["referents"] = tuple(name.strip() for name in args.referents.split(",") if name.strip())
    summary = write_synthetic_dataset(args.out, seed=args.seed, **options)
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
