"""One benchmark run: ceiling, data, vlmforge and the baseline trained side by side, generation; one report.

    report = run_bench("small", steps=5)   # the dict `vlmforge bench --json` writes

Everything is written to a temporary folder (or `work_dir`) and measured in this process. On a
CPU both training sides live together and alternate step by step (the machine may be shared); on
a GPU they run one after the other, each alone in memory. The GEMM ceiling is measured before and
after, and the best is kept.
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from vlmforge.bench.configs import BenchConfig, get_config
from vlmforge.errors import ConfigError

log = logging.getLogger(__name__)


def bench_device(config: BenchConfig, device: str = ""):
    """The torch device of a run: `resolve_device`'s default (the one of chat, eval and serve)."""
    import torch

    from vlmforge.utils.device import resolve_device

    name = resolve_device(device)
    if config.needs_cuda and not name.startswith("cuda"):
        raise ConfigError(f"bench config '{config.name}' needs a CUDA GPU (a 7B model does not train on a CPU); "
                          "on a CPU use --config small")
    return torch.device(name)


BASELINES = ("trl", "naive")


def default_baseline() -> str:
    """`trl` when TRL is installed (the `bench` extra), else the naive loop."""
    from vlmforge.bench.trl_baseline import trl_available

    return "trl" if trl_available() else "naive"


def run_bench(config_name: str, steps: int | None = None, device: str = "", work_dir: str | Path | None = None,
              precision: str = "auto", threads: int | None = None, baseline: str = "", breakdown: bool = False,
              inference: bool = True, progress=None) -> dict:
    """Measure everything for `config_name`; returns the report (its keys: docs/performance.md).

    `threads` sets torch's CPU threads (on a CPU shared with other torch work, 1 thread avoids the
    oversubscription that makes every step many times slower). `baseline`: "trl" (TRL's SFTTrainer,
    the `bench` extra) or "naive" (a plain transformers + peft loop); default: trl when installed.
    `breakdown` also times vlmforge with each of its levers switched off in turn. `progress(phase, total)`
    returns an object with `update()` / `close()` (a tqdm bar, say) for each phase; None: silent.
    """
    import torch

    config = get_config(config_name)
    baseline = baseline or default_baseline()
    if baseline not in BASELINES:
        raise ConfigError(f"unknown baseline '{baseline}' (choose from {', '.join(BASELINES)})")
    if baseline == "trl":
        from vlmforge.bench.trl_baseline import trl_available

        if not trl_available():
            raise ConfigError("--baseline trl needs TRL: pip install -e '.[bench]'"
                              + (" (or --baseline naive)" if config.arch == "llava" else ""))
    if baseline == "naive" and config.arch != "llava":  # its data and loss are written for Llava's fixed image tokens
        raise ConfigError(f"--baseline naive runs Llava models only; {config.name} ({config.arch}) compares with "
                          "TRL's SFTTrainer: --baseline trl (pip install -e '.[bench]')")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {steps}")
        config = replace(config, steps=steps)
    torch_device = bench_device(config, device)
    options = Options(precision, baseline, breakdown, inference, progress or _silent)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return _run(config, torch_device, Path(work_dir), options)
    with tempfile.TemporaryDirectory(prefix="vlmforge-bench-") as folder:
        return _run(config, torch_device, Path(folder), options)


def export_bench(config_name: str, out_dir: str | Path, steps: int | None = None, precision: str = "auto") -> Path:
    """Write `config_name`'s model folder, data and the settings both sides share to `out_dir` (for a trainer that
    cannot share this process, e.g. LLaMA-Factory: scripts/bench-llamafactory.sh); returns `out_dir`.

    settings.json holds the batch, LoRA, learning rates, schedule, precision and the dataset rows vlmforge's
    warm-up and timed steps train on, in order.
    """
    from vlmforge.bench.flops import lora_target_names
    from vlmforge.bench.models import build_model_folder
    from vlmforge.bench.synthetic_data import write_bench_dataset
    from vlmforge.bench.vlmforge_training import VlmforgeSide, bench_recipe
    from vlmforge.utils.atomic import atomic_write_text

    config = get_config(config_name)
    if config.needs_cuda:
        raise ConfigError(f"--export-data writes a model folder; {config.name} is built on the GPU (use small)")
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {steps}")
        config = replace(config, steps=steps)
    folder = Path(out_dir)
    data_path = write_bench_dataset(folder / "data", config.dataset_size, config.data_image_size,
                                    text_scale=config.text_scale)
    model_dir = build_model_folder(config, folder / "model")
    recipe = bench_recipe(config, model_dir, data_path, folder / "run", cuda=False, precision=precision)
    side = VlmforgeSide(recipe)
    indices = side.trained_sample_indices()
    train = recipe.train
    settings = {
        "config": config.name, "arch": config.arch, "steps": config.steps, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
        "lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha, "lora_dropout": recipe.lora.dropout,
        "lora_targets": list(lora_target_names(side.trainer.base_model)),
        "lr_projector": train.lr.projector,
        "lr_llm": train.lr.llm, "warmup_ratio": train.warmup_ratio, "max_grad_norm": train.max_grad_norm,
        "max_length": config.max_length, "precision": side.run.precision, "seed": train.seed,
        "trainable_params": side.run.trainable_params,
        "model": str(model_dir.relative_to(folder)), "data": str(data_path.relative_to(folder)),
        "warmup_indices": indices[:config.global_batch], "indices": indices,
    }
    atomic_write_text(folder / "settings.json", json.dumps(settings, indent=1) + "\n")
    return folder


@dataclass
class Options:
    precision: str
    baseline: str
    breakdown: bool
    inference: bool
    progress: object


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _silent(phase: str, total: int) -> _NoBar:
    return _NoBar()


def _run(config: BenchConfig, device, folder: Path, options: Options) -> dict:
    from vlmforge.bench.machine import best_gemm, load_average, machine_info, measure_gemm
    from vlmforge.bench.models import build_model_folder
    from vlmforge.bench.synthetic_data import write_bench_dataset

    report = {"config": config.name, "steps": config.steps, "baseline": options.baseline, "machine": machine_info(device)}
    started = _now()
    bar = options.progress("set-up (ceiling, data, model)", 3)
    gemm_before = measure_gemm(device, config.gemm_size)
    bar.update()
    data_path = write_bench_dataset(folder / "data", config.dataset_size, config.data_image_size,
                                    text_scale=config.text_scale)
    bar.update()
    model_dir = build_model_folder(config, folder / "model")
    bar.update()
    bar.close()
    bench = _Bench(config, device, folder, data_path, model_dir, options)
    bench.seconds["set-up"] = _since(started)
    vlmforge_run, baseline_run, report["inference"], lever_runs = bench.run()
    report["phase_seconds"] = {phase: round(wall, 1) for phase, (wall, _) in bench.seconds.items()}
    # this process's CPU time: with --threads 1 about the wall time an idle machine would take
    report["phase_cpu_seconds"] = {phase: round(cpu, 1) for phase, (_, cpu) in bench.seconds.items()}
    report["gemm"] = best_gemm(gemm_before, measure_gemm(device, config.gemm_size))
    report["machine"]["load_average_end"] = load_average()
    report["training"] = training_report(vlmforge_run, baseline_run, report["gemm"])
    report["training"]["baseline_name"] = options.baseline
    report["images"] = {"arch": config.arch, **bench.image_tokens}
    if lever_runs:
        report["breakdown"] = breakdown_report(vlmforge_run, lever_runs, report["gemm"])
    return report


def _ceiling(gemm: dict, precision: str) -> float | None:
    return gemm["bf16_tflops"] if precision == "bf16" else gemm["fp32_tflops"]


def training_report(vlmforge_run, baseline_run, gemm: dict) -> dict:
    ours = vlmforge_run.summary(_ceiling(gemm, vlmforge_run.precision))
    theirs = baseline_run.summary(_ceiling(gemm, baseline_run.precision))
    speedup = ours["real_tokens_per_s"] / theirs["real_tokens_per_s"] if "error" not in theirs else None
    cpu_speedup = (ours["real_tokens_per_cpu_s"] / theirs["real_tokens_per_cpu_s"]
                   if "error" not in theirs and ours["real_tokens_per_cpu_s"] and theirs["real_tokens_per_cpu_s"] else None)
    return {"vlmforge": ours, "baseline": theirs, "speedup": speedup, "cpu_time_speedup": cpu_speedup,
            "pad_fraction": ours["pad_fraction"],
            "mfu": ours["mfu"], "flops_per_step": ours["flops_per_step"],
            "step1_loss": {"vlmforge": ours.get("step1_loss"), "baseline": theirs.get("step1_loss")},
            "trainable_params": {"vlmforge": ours.get("trainable_params"), "baseline": theirs.get("trainable_params")}}


def breakdown_report(vlmforge_run, lever_runs: dict, gemm: dict) -> dict:
    """Per lever: vlmforge's real tokens/s with that lever switched off, and what the lever is worth (all on ÷ off)."""
    ours = vlmforge_run.summary(_ceiling(gemm, vlmforge_run.precision))
    rows = {}
    for lever, run in lever_runs.items():
        summary = run.summary(_ceiling(gemm, run.precision))
        per_cpu = summary["real_tokens_per_cpu_s"]
        rows[lever] = {"real_tokens_per_s": summary["real_tokens_per_s"], "real_tokens_per_cpu_s": per_cpu,
                       "pad_fraction": summary["pad_fraction"], "precision": summary["precision"],
                       "peak_memory_mb": summary["peak_memory_mb"],
                       "gain": ours["real_tokens_per_s"] / summary["real_tokens_per_s"],
                       "cpu_time_gain": ours["real_tokens_per_cpu_s"] / per_cpu if per_cpu and ours["real_tokens_per_cpu_s"] else None}
    return rows


class _Bench:
    """The phases of one run over one model folder and one dataset."""

    def __init__(self, config: BenchConfig, device, folder: Path, data_path: Path, model_dir: Path, options: Options):
        self.config, self.device, self.folder = config, device, folder
        self.data_path, self.model_dir, self.options = data_path, model_dir, options
        self.seconds: dict[str, tuple[float, float]] = {}  # (wall, CPU) seconds per phase
        self.image_tokens: dict = {}  # what one of the bench's images becomes, asked of the trainer's processor

    def run(self):
        """(vlmforge TrainingRun, baseline TrainingRun, inference report or None, {lever: TrainingRun})."""
        started = _now()
        result = self._run()
        wall, cpu = _since(started)
        generation = self.seconds.get("generation", (0.0, 0.0))
        self.seconds["training"] = (wall - generation[0], cpu - generation[1])
        return result

    def _run(self):
        from vlmforge.bench.training_run import run_sides

        from vlmforge.bench.models import image_token_counts

        vlmforge_side = self._vlmforge_side()
        self.image_tokens = image_token_counts(vlmforge_side.trainer.processor, self.config.data_image_size)
        indices = vlmforge_side.trained_sample_indices()
        steps, progress = self.config.steps, self.options.progress
        lever_runs = {}
        if self.device.type == "cuda":  # one side at a time: a 7B model and its activations fill the GPU
            run_sides([vlmforge_side], steps, alternate=False, bar=progress("training: vlmforge", steps + 1))
            if self.options.breakdown:
                lever_runs = self._levers_alone(vlmforge_side)
            inference = self._inference(vlmforge_side)
            baseline_run = self._baseline_alone(indices)
        else:
            sides = [vlmforge_side, self._baseline_side(indices)]
            if self.options.breakdown:
                sides += self._lever_sides(vlmforge_side).values()
            names = " + ".join(["vlmforge", self.options.baseline] + [side.lever for side in sides[2:]])
            run_sides(sides, steps, alternate=True, bar=progress(f"training: {names}, alternating", (steps + 1) * len(sides)))
            baseline_run = sides[1].run
            lever_runs = {side.lever: side.run for side in sides[2:]}
            del sides
            _free(self.device)
            inference = self._inference(vlmforge_side)
        return vlmforge_side.run, baseline_run, inference, lever_runs

    def _base_model(self):
        """(model, processor) for configs built in memory (7b-lora); None: the folder is loaded."""
        from vlmforge.bench.models import instantiate_large

        return instantiate_large(self.config, self.model_dir, str(self.device)) if self.config.needs_cuda else None

    def _recipe(self):
        from vlmforge.bench.vlmforge_training import bench_recipe

        return bench_recipe(self.config, self.model_dir, self.data_path, self.folder / "run",
                            cuda=self.device.type == "cuda", precision=self.options.precision)

    def _vlmforge_side(self):
        from vlmforge.bench.vlmforge_training import VlmforgeSide

        return VlmforgeSide(self._recipe(), base_model=self._base_model())

    def _lever_sides(self, vlmforge_side) -> dict:
        from vlmforge.bench.levers import lever_sides

        if self.config.needs_cuda:
            raise ConfigError(f"--breakdown is for configs that fit several copies in memory (tiny, small), "
                              f"not {self.config.name}")
        from vlmforge.bench.machine import cpu_bf16_native

        return lever_sides(self._recipe(), vlmforge_side.trainer.bf16, self.device.type == "cuda" or cpu_bf16_native())

    def _levers_alone(self, vlmforge_side) -> dict:
        from vlmforge.bench.training_run import run_sides

        runs = {}
        for lever, side in self._lever_sides(vlmforge_side).items():
            run_sides([side], self.config.steps, alternate=False,
                      bar=self.options.progress(f"breakdown: without {lever}", self.config.steps + 1))
            runs[lever] = side.run
            del side
            _free(self.device)
        return runs

    def _baseline_side(self, indices: list[int]):
        if self.options.baseline == "trl":
            return self._trl_side(indices)
        from vlmforge.bench.baseline import BaselineSettings, BaselineSide
        from vlmforge.model.load import load

        config = self.config
        settings = BaselineSettings(batch_size=config.batch_size, grad_accum=config.grad_accum, lora_rank=config.lora_rank,
                                    lora_alpha=config.lora_alpha, max_length=config.max_length)
        model, processor = self._base_model() or load(self.model_dir, dtype="float32")
        warmup_indices = indices[:self.config.global_batch]  # vlmforge's first global batch: the longest
        return BaselineSide(model, processor, self.data_path, indices, settings, self.device, warmup_indices)

    def _trl_side(self, indices: list[int]):
        """TRL's SFTTrainer with vlmforge's batch, LoRA, learning rates, schedule, clipping and precision."""
        from vlmforge.bench.trl_baseline import PeerSettings, TrlSide
        from vlmforge.model.load import load
        from vlmforge.train.loop import choose_precision

        config, recipe = self.config, self._recipe()
        train = recipe.train
        settings = PeerSettings(batch_size=config.batch_size, grad_accum=config.grad_accum, lora_rank=config.lora_rank,
                                lora_alpha=config.lora_alpha, lora_dropout=recipe.lora.dropout,
                                lr_projector=train.lr.projector, lr_llm=train.lr.llm, warmup_ratio=train.warmup_ratio,
                                max_grad_norm=train.max_grad_norm, max_length=config.max_length,
                                bf16=choose_precision(train.precision, self.device), steps=config.steps, seed=train.seed)
        model, processor = self._base_model() or load(self.model_dir, dtype="float32")
        warmup_indices = indices[:self.config.global_batch]
        return TrlSide(model, processor, self.data_path, indices, settings, self.device, warmup_indices,
                       self.folder / "trl")

    def _baseline_alone(self, indices: list[int]):
        """The baseline on its own (GPU); an out-of-memory baseline is reported as such."""
        import torch

        from vlmforge.bench.training_run import TrainingRun, run_sides

        side = None
        _free(self.device)  # the vlmforge side's model is gone: give its memory back before building this one
        try:
            side = self._baseline_side(indices)
            run_sides([side], self.config.steps, alternate=False,
                      bar=self.options.progress(f"training: {self.options.baseline}", self.config.steps + 1))
            return side.run
        except torch.OutOfMemoryError:
            log.warning("baseline: out of memory on %s", self.device)
            return TrainingRun(self.options.baseline, "fp32", shape=None, error="out of memory")
        finally:
            del side
            _free(self.device)

    def _inference(self, vlmforge_side) -> dict | None:
        """Export the trained model (LoRA merged) and time generation on it; frees the trainer. None: not asked for."""
        from vlmforge.bench.inference import measure_inference
        from vlmforge.model.load import load
        from vlmforge.train.export import export_model

        trainer = vlmforge_side.trainer
        if not self.options.inference:
            vlmforge_side.trainer = trainer = None
            _free(self.device)
            return None
        started = _now()
        bar = self.options.progress("generation: export, then both paths", 2)
        if self.config.needs_cuda:  # no round trip through the disk for 7B: merge in memory
            import torch

            model, processor = trainer.peft_model.merge_and_unload().eval().to(torch.bfloat16), trainer.processor
        else:
            export_model(trainer.peft_model, trainer.processor, self.folder / "export")
            model, processor = load(self.folder / "export", device=str(self.device))
        vlmforge_side.trainer = trainer = None
        _free(self.device)
        bar.update()
        records = [json.loads(line) for line in self.data_path.read_text(encoding="utf-8").splitlines()]
        log.info("generation: batch %s, %d new tokens...", list(self.config.generation_batches), self.config.max_new_tokens)
        result = measure_inference(model, processor, records, self.data_path.parent, self.config.generation_batches,
                                   self.config.max_new_tokens)
        bar.update()
        bar.close()
        self.seconds["generation"] = _since(started)
        return result


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(started: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since `started` (from `_now`)."""
    wall, cpu = _now()
    return wall - started[0], cpu - started[1]


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
