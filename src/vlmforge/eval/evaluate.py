"""Generate answers for a record file with a model, then score them: what `vlmforge eval MODEL` runs.

    model, processor = load("my-vlm")
    result = evaluate_model(model, processor, "test.jsonl", "eval/")                     # real images
    result = evaluate_model(model, processor, "test.jsonl", "eval/", blank_images=True)  # + the gap

Generation is greedy and batched through `vlmforge.infer.chat.answer_records` (the same chat
template and image processing as training and `vlmforge chat --batch`). One prompt per id: records
sharing an id (five COCO captions as five records) are answered once and scored against all their
references. The out folder gets `predictions.jsonl`, `metrics.json` and `report.md` (`*_blank.*`
with blank images), plus `references.jsonl` when `max_samples` evaluates only part of the file.
When both runs are in the folder, the gap (normal − blank, per metric) is returned as `blank_gap`
and written into both reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlmforge.data.records import iter_records, write_records
from vlmforge.errors import ConfigError
from vlmforge.eval.references import read_references
from vlmforge.eval.report import write_gap_section, write_report
from vlmforge.eval.scoring import score_predictions

logger = logging.getLogger(__name__)

BLANK_SUFFIX = "_blank"


@dataclass
class EvalSet:
    """The records one evaluation answers, and the references it scores against."""

    path: Path
    prompts: list[dict]  # the first record of each evaluated id, in file order
    lines: list[int]  # their 1-based line numbers in `path`
    references: list[dict]  # every record of the evaluated ids
    total_ids: int  # ids in the whole file

    @property
    def truncated(self) -> bool:
        return len(self.prompts) < self.total_ids


def load_eval_set(data_path: str | Path, max_samples: int | None = None) -> EvalSet:
    """The first `max_samples` ids of a record file (all when None); bad files raise `DataError` first."""
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
    read_references(data_path)  # every problem (no id, no reference, not JSONL) as one DataError, before generating
    rows = list(iter_records(data_path))
    first: dict[str, tuple[int, dict]] = {}
    for line, record in rows:
        first.setdefault(str(record["id"]), (line, record))
    chosen = list(first)[:max_samples]
    kept = set(chosen)
    return EvalSet(Path(data_path), [first[i][1] for i in chosen], [first[i][0] for i in chosen],
                   [record for _, record in rows if str(record["id"]) in kept], len(first))


def evaluate_model(model, processor, data_path: str | Path, out_dir: str | Path | None = None, *,
                   blank_images: bool = False, batch_size: int = 16, max_new_tokens: int = 64,
                   max_samples: int | None = None, image_roots: Sequence[str | Path] = (), task: str = "auto",
                   lang: str | None = None, progress: bool = True, java_metrics: bool = True) -> dict:
    """Answer the records of `data_path` greedily, score the answers, write them into `out_dir`.

    Returns the scoring result (`metrics`, counts, `per_example`, ...; see `score_predictions`),
    with `blank_gap` when the folder also holds the other run. `out_dir=None` writes nothing.
    Relative image paths resolve against `image_roots`, else the data file's folder.
    """
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    eval_set = load_eval_set(data_path, max_samples)
    roots = list(image_roots) or [eval_set.path.parent]
    predictions = generate_predictions(model, processor, eval_set.prompts, batch_size, max_new_tokens, roots,
                                       blank_images, progress)
    suffix = BLANK_SUFFIX if blank_images else ""
    with _output_folder(out_dir) as folder:
        pred_path = folder / f"predictions{suffix}.jsonl"
        write_records(pred_path, predictions)
        result = score_predictions(pred_path, _reference_file(eval_set, folder), task, lang, java_metrics)
        result["blank_images"] = blank_images
        if out_dir is not None:
            write_report(result, folder, suffix=suffix)
            _add_gap(result, folder)
            logger.info("wrote %s, metrics%s.json and report%s.md to %s", pred_path.name, suffix, suffix, folder)
    return result


def generate_predictions(model, processor, records: list[dict], batch_size: int, max_new_tokens: int,
                         image_roots: Sequence[str | Path], blank_images: bool = False, progress: bool = True) -> list[dict]:
    """Greedy answers `{"id", "prediction", "finish_reason", "completion_tokens"}`, one per record, in order."""
    from tqdm import tqdm

    from vlmforge.infer.chat import answer_records
    from vlmforge.infer.generate import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens)  # temperature 0: greedy
    desc = "generating (blank images)" if blank_images else "generating"
    with tqdm(total=len(records), desc=desc, unit="record", disable=not progress) as bar:
        predictions = answer_records(model, processor, records, options, batch_size, image_roots,
                                     blank_images=blank_images, progress=bar)
    cut = sum(prediction["finish_reason"] == "length" for prediction in predictions)
    if cut:
        logger.info("%d of %d answers stopped at max_new_tokens=%d", cut, len(predictions), max_new_tokens)
    return predictions


@contextlib.contextmanager
def _output_folder(out_dir: str | Path | None) -> Iterator[Path]:
    """`out_dir` (created), or a temporary folder removed afterwards when it is None."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        yield Path(out_dir)
        return
    with tempfile.TemporaryDirectory(prefix="vlmforge-eval-") as folder:
        yield Path(folder)


def _reference_file(eval_set: EvalSet, folder: Path) -> Path:
    """The data file itself, or the evaluated ids' records written to `references.jsonl` when truncated."""
    if not eval_set.truncated:
        return eval_set.path
    path = folder / "references.jsonl"
    write_records(path, eval_set.references)
    logger.info("evaluating the first %d of %d ids of %s", len(eval_set.prompts), eval_set.total_ids, eval_set.path)
    return path


def _add_gap(result: dict, folder: Path) -> None:
    gap = blank_gap(folder)
    if gap is None:
        return
    result["blank_gap"] = gap
    for name in ("report.md", f"report{BLANK_SUFFIX}.md"):
        if (folder / name).exists():
            write_gap_section(folder / name, gap)


def blank_gap(folder: str | Path) -> dict[str, float] | None:
    """Normal − blank for each metric of `metrics.json` and `metrics_blank.json`; None unless both exist and match."""
    normal, blank = (_read_metrics(Path(folder) / f"metrics{suffix}.json") for suffix in ("", BLANK_SUFFIX))
    if normal is None or blank is None:
        return None
    if (normal["references"], normal["num_examples"]) != (blank["references"], blank["num_examples"]):
        logger.warning("%s: the normal and blank-image runs scored different records; no gap", folder)
        return None
    return {name: value - blank["metrics"][name] for name, value in normal["metrics"].items() if name in blank["metrics"]}


def _read_metrics(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
