"""`vlmforge demo`: a VLM built from zero, offline, on a CPU, and proof that it looks at the image.

    from vlmforge.demo.pipeline import DemoConfig, run_demo
    report = run_demo(DemoConfig(out="demo-out"))      # or: vlmforge demo [--out DIR] [--fast] [--seed N]

Every step is vlmforge's own public API, the way a user would chain it:
  1. data      `write_synthetic_dataset`: shape scenes, captions and questions in English and Chinese;
  2. parts     a BPE tokenizer with cell words, a SigLIP tower (per-cell objective) and a Qwen2 LM
               pre-trained on text where the image is its 9 cell words (`cell_words`, `lm_pretraining`);
  3. build     `build_vlm` / `save_vlm`: the Llava folder;
  4. align     `train` with the shipped recipe `demo-align` (projector only, the conversations);
  5. instruct  `train` with `demo-instruct-lora` (projector + LoRA, conversations), vision frozen;
  6. eval      `evaluate_model` on the held-out test split, with the images and with blank ones.
OUT gets `data/`, `parts/`, `vlm/`, `runs/`, `eval/`, the exported model in `model/` (what
`vlmforge chat` / `vlmforge serve` take) and `report.json`. See docs/demo.md for the choices.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vlmforge.config import option

logger = logging.getLogger(__name__)

STAGES = ("data", "parts", "build", "align", "instruct", "eval")


@dataclass
class DemoConfig:
    """What `vlmforge demo` takes; every field is a flag."""

    out: str = option("demo-out", "folder for everything the demo writes; the trained model ends up in OUT/model")
    fast: bool = option(False, "about half the time: less data and fewer steps, a weaker model still far above blind")
    seed: int = option(0, "seed of the data, the parts and both training runs")


@dataclass(frozen=True)
class DemoBudget:
    """How much of everything a run uses (the default run and `--fast` differ only here)."""

    num_train: int  # question records (and as many caption records, on the same images)
    num_test: int  # held-out questions, balanced over type × language
    vision_steps: int
    lm_steps: int
    lm_records: int  # question records among the LM's pre-training texts (the first ones)
    lm_captions: int  # caption texts among them
    align_steps: int | None  # None: the recipe's max_steps
    instruct_steps: int | None
    vision_images: int = 10_000  # the tower reads every cell by ~300 steps: more images only cost loading time
    lm_text_answers: int = 240  # test questions the LM alone answers (the first ones: the split cycles type × language)
    eval_batch_size: int = 100


DEFAULT_BUDGET = DemoBudget(num_train=20_000, num_test=1200, vision_steps=300, lm_steps=1000, lm_records=10_000,
                            lm_captions=1000, align_steps=None, instruct_steps=None)
FAST_BUDGET = DemoBudget(num_train=3000, num_test=240, vision_steps=100, lm_steps=550, lm_records=3000, lm_captions=300,
                         align_steps=30, instruct_steps=120)

# Half the training conversations go on about their image for a turn or two, so follow-up questions
# (asked after the image, not before it) are learned as well as first ones.
MULTI_TURN_FRACTION = 0.5

# The LM the demo pre-trains (measured in docs/demo.md): small enough for a thousand steps in ~1.5 min.
# Four heads of 32 dimensions, not eight of 16: RoPE then has twice the frequencies, sharp ones to tell
# neighbouring image tokens apart and slow ones for follow-ups to find a cell by content far back
# (8 × 16: 97.2 % with the VLM's errors on the image token next to the asked one; 4 × 32: 98.9 %).
LM_SHAPE = {"hidden_size": 128, "num_layers": 2, "num_heads": 4}
LM_TRAINING = {"batch_size": 32, "learning_rate": 1e-3, "lookup_heads": 3}


def budget_for(config: DemoConfig) -> DemoBudget:
    return FAST_BUDGET if config.fast else DEFAULT_BUDGET


def run_demo(config: DemoConfig, expected_seconds: dict[str, float] | None = None) -> dict:
    """Run every stage into `config.out`; returns the report (also written to OUT/report.json).

    `expected_seconds` per stage (from `vlmforge.demo.estimate`) make the overall bar advance by time."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    budget, seconds, start = budget_for(config), {}, time.perf_counter()
    weights = expected_seconds or dict.fromkeys(STAGES, 1)
    with _overall_bar(weights, by_time=expected_seconds is not None) as bar:
        with _stage("data", seconds, bar, weights):
            data_dir = make_data(out / "data", config.seed, budget)
        with _stage("parts", seconds, bar, weights):
            parts = make_parts(data_dir, out / "parts", config.seed, budget)
        with _stage("build", seconds, bar, weights):
            vlm_dir = build_model(parts, out / "vlm", config.seed)
        with _stage("align", seconds, bar, weights):
            aligned = train_stage("demo-align", vlm_dir, data_dir / "train.jsonl", data_dir, out / "runs" / "align",
                                  config.seed, budget.align_steps)
        with _stage("instruct", seconds, bar, weights):
            tuned = train_stage("demo-instruct-lora", aligned, data_dir / "train.jsonl", data_dir,
                                out / "runs" / "instruct", config.seed, budget.instruct_steps)
            model_dir = _replace_folder(tuned, out / "model")
        with _stage("eval", seconds, bar, weights):
            results = evaluate(model_dir, data_dir / "test.jsonl", out / "eval", budget.eval_batch_size)
    report = make_report(results, data_dir, model_dir, seconds, time.perf_counter() - start, parts["metrics"])
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _overall_bar(weights: dict[str, float], by_time: bool):
    """The demo's overall bar; each stage advances it by its weight. Weighted by expected seconds, its
    time-left figure is honest from the first stage on (counted in stages, the 5-second data stage
    once made a 15-minute run look like 47 s)."""
    if not by_time:
        return tqdm(total=sum(weights.values()), desc="demo", unit="stage")
    return tqdm(total=sum(weights.values()), desc="demo", smoothing=0,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left")


@contextmanager
def _stage(name: str, seconds: dict, bar, weights: dict[str, float]):
    bar.set_description(f"demo: {name}")
    started = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - started, 1)
    logger.info("demo: %s done in %.1fs", name, seconds[name])
    bar.update(weights[name])


def make_data(data_dir: Path, seed: int, budget: DemoBudget) -> Path:
    """The synthetic dataset (question before the image: the image tokens can then read the question)."""
    from vlmforge.data.synth import write_synthetic_dataset

    write_synthetic_dataset(data_dir, seed=seed, num_train=budget.num_train, num_val=0, num_test=budget.num_test,
                            question_position="before", multi_turn_fraction=MULTI_TURN_FRACTION)
    return data_dir


def make_parts(data_dir: Path, parts_dir: Path, seed: int, budget: DemoBudget) -> dict:
    """Tokenizer with cell words, vision tower and LM from scratch; {"vision", "llm", "metrics"}."""
    from vlmforge.data.records import read_records
    from vlmforge.demo.cell_words import add_cell_words, cell_word_composition
    from vlmforge.demo.lm_pretraining import lm_samples, pretrain_language_model
    from vlmforge.demo.parts import train_demo_tokenizer
    from vlmforge.demo.training_loop import read_metrics
    from vlmforge.demo.vision_pretraining import pretrain_vision_tower

    train = read_records(data_dir / "train.jsonl")
    captions = read_records(data_dir / "captions.jsonl")
    tokenizer = train_demo_tokenizer(train + captions)
    add_cell_words(tokenizer)
    vision_dir = pretrain_vision_tower(train[:budget.vision_images], data_dir, parts_dir / "vision",
                                       max_steps=budget.vision_steps, max_seconds=None, seed=seed)
    samples = lm_samples(train[:budget.lm_records] + captions[:budget.lm_captions], tokenizer)
    llm_dir = pretrain_language_model(samples, tokenizer, parts_dir / "llm", steps=budget.lm_steps, seed=seed,
                                      composition=cell_word_composition(tokenizer), **LM_SHAPE, **LM_TRAINING)
    metrics = {"vision": read_metrics(vision_dir), "llm": read_metrics(llm_dir)}
    test = read_records(data_dir / "test.jsonl")[:budget.lm_text_answers]
    metrics["llm"]["text_answer_accuracy"] = lm_text_accuracy(llm_dir, test)
    return {"vision": str(vision_dir), "llm": str(llm_dir), "metrics": metrics}


def lm_text_accuracy(llm_dir: Path, records: list[dict]) -> dict:
    """The LM alone on the test questions, the image given as its 9 cell words: what the VLM can reach."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlmforge.demo.lm_pretraining import text_answer_accuracy

    model, tokenizer = AutoModelForCausalLM.from_pretrained(llm_dir), AutoTokenizer.from_pretrained(llm_dir)
    return text_answer_accuracy(model.eval(), tokenizer, records)


def build_model(parts: dict, vlm_dir: Path, seed: int) -> Path:
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    # The data put the question before the image; the chat template does the same with content parts, so
    # `vlmforge chat` / `serve` (which send [image, text]) give the model the layout it was trained on.
    config = BuildConfig(vision=parts["vision"], llm=parts["llm"], out=str(vlm_dir), seed=seed, images_after_text=True)
    model, processor = build_vlm(config)
    return save_vlm(model, processor, vlm_dir)


def train_stage(recipe_name: str, model_dir: Path, data_path: Path, image_root: Path, run_dir: Path, seed: int,
                max_steps: int | None) -> Path:
    """One `vlmforge train` run of a shipped recipe; returns its merged model (RUN/final)."""
    from vlmforge.config import apply_overrides
    from vlmforge.train.loop import train
    from vlmforge.train.recipe import load_recipe

    overrides = {"model.path": str(model_dir), "data.paths": [str(data_path)], "data.image_roots": [str(image_root)],
                 "train.output_dir": str(run_dir), "train.seed": seed}
    if max_steps is not None:
        overrides.update({"train.max_steps": max_steps, "train.save_steps": max_steps})
    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    if run_dir.exists():  # a fresh run, never a resumed or mixed one
        shutil.rmtree(run_dir)
    result = train(recipe)
    logger.info("%s: %d steps, final loss %.4f", recipe_name, result.steps, result.final_loss)
    return Path(result.final_model)


def _replace_folder(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


def evaluate(model_dir: Path, test_path: Path, eval_dir: Path, batch_size: int) -> dict:
    """Greedy answers on the test split with the images, then with blank ones: {"normal": ..., "blind": ...}."""
    from vlmforge.eval.evaluate import evaluate_model
    from vlmforge.model.load import load

    model, processor = load(model_dir)
    runs = {}
    for name, blank in (("normal", False), ("blind", True)):
        runs[name] = evaluate_model(model, processor, test_path, eval_dir, blank_images=blank, batch_size=batch_size,
                                    max_new_tokens=8, task="vqa", java_metrics=False)
    return runs


def make_report(results: dict, data_dir: Path, model_dir: Path, stage_seconds: dict, total_seconds: float,
                part_metrics: dict) -> dict:
    from vlmforge.demo.report import accuracy_table, overall_accuracy
    from vlmforge.utils.machine import describe_machine

    normal, blind = results["normal"]["per_example"], results["blind"]["per_example"]
    return {
        "accuracy": accuracy_table(normal),
        "blind_accuracy": accuracy_table(blind),
        "overall": overall_accuracy(normal),
        "blind_overall": overall_accuracy(blind),
        "seconds": round(total_seconds, 1),
        "stage_seconds": stage_seconds,
        "machine": describe_machine(),
        "model_dir": str(model_dir),
        "num_test": len(normal),
        "parts": part_metrics,
        "samples": pick_samples(data_dir / "test.jsonl", normal),
    }


def pick_samples(test_path: Path, per_example: list[dict], count: int = 2) -> list[dict]:
    """`count` test conversations, one per language, questions of multi-object scenes, with the answers given."""
    from vlmforge.data.records import read_records
    from vlmforge.data.synth import scene_of_record
    from vlmforge.data.synth_language import LANGUAGES, describe_scene
    from vlmforge.demo.report import sample_conversation

    by_id = {str(row["id"]): row for row in per_example}
    records = [record for record in read_records(test_path) if len(record["meta"]["objects"]) > 1]
    chosen = [next((r for r in records if r["lang"] == lang and r["type"] not in ("count", "follow_up")), None) for lang in LANGUAGES]
    chosen = [record for record in chosen if record is not None][:count]
    return [sample_conversation(record, by_id[record["id"]]["prediction"],
                                describe_scene(scene_of_record(record), record["lang"]),
                                by_id[record["id"]]["score"] > 0)
            for record in chosen]
