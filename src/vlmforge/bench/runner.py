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
from dataclasses import replace
from pathlib import Path

from vlmforge.bench.configs import BenchConfig, get_config
from vlmforge.errors import ConfigError

log = logging.getLogger(__name__)


def bench_device(config: BenchConfig, device: str = ""):
    import torch

    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.needs_cuda and not name.startswith("cuda"):
        raise ConfigError(f"bench config '{config.name}' needs a CUDA GPU (a 7B model does not train on a CPU); "
                          "on a CPU use --config small")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device(name)


def run_bench(config_name: str, steps: int | None = None, device: str = "", work_dir: str | Path | None = None,
              precision: str = "auto", threads: int | None = None) -> dict:
    """Measure everything for `config_name`; returns the report (its keys: docs/performance.md).

    `threads` sets torch's CPU threads (on a CPU shared with other torch work, 1 thread avoids the
    oversubscription that makes every step many times slower).
    """
    import torch

    config = get_config(config_name)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if steps is not None:
        if steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {steps}")
        config = replace(config, steps=steps)
    torch_device = bench_device(config, device)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return _run(config, torch_device, Path(work_dir), precision)
    with tempfile.TemporaryDirectory(prefix="vlmforge-bench-") as folder:
        return _run(config, torch_device, Path(folder), precision)


def _run(config: BenchConfig, device, folder: Path, precision: str) -> dict:
    from vlmforge.bench.machine import best_gemm, load_average, machine_info, measure_gemm
    from vlmforge.bench.models import build_model_folder
    from vlmforge.bench.synthetic_data import write_bench_dataset

    report = {"config": config.name, "steps": config.steps, "machine": machine_info(device)}
    log.info("GEMM ceiling (%d×%d)...", config.gemm_size, config.gemm_size)
    gemm_before = measure_gemm(device, config.gemm_size)
    data_path = write_bench_dataset(folder / "data", config.dataset_size, config.vision.image_size,
                                    text_scale=config.text_scale)
    model_dir = build_model_folder(config, folder / "model")
    bench = _Bench(config, device, folder, data_path, model_dir, precision)
    vlmforge_run, baseline_run, report["inference"] = bench.run()
    report["gemm"] = best_gemm(gemm_before, measure_gemm(device, config.gemm_size))
    report["machine"]["load_average_end"] = load_average()
    report["training"] = training_report(vlmforge_run, baseline_run, report["gemm"])
    return report


def _ceiling(gemm: dict, precision: str) -> float | None:
    return gemm["bf16_tflops"] if precision == "bf16" else gemm["fp32_tflops"]


def training_report(vlmforge_run, baseline_run, gemm: dict) -> dict:
    ours = vlmforge_run.summary(_ceiling(gemm, vlmforge_run.precision))
    theirs = baseline_run.summary(_ceiling(gemm, baseline_run.precision))
    speedup = ours["real_tokens_per_s"] / theirs["real_tokens_per_s"] if "error" not in theirs else None
    return {"vlmforge": ours, "baseline": theirs, "speedup": speedup, "pad_fraction": ours["pad_fraction"],
            "mfu": ours["mfu"], "flops_per_step": ours["flops_per_step"]}


class _Bench:
    """The phases of one run over one model folder and one dataset."""

    def __init__(self, config: BenchConfig, device, folder: Path, data_path: Path, model_dir: Path, precision: str):
        self.config, self.device, self.folder = config, device, folder
        self.data_path, self.model_dir, self.precision = data_path, model_dir, precision

    def run(self):
        """(vlmforge TrainingRun, baseline TrainingRun, inference report)."""
        from vlmforge.bench.training_run import run_sides

        vlmforge_side = self._vlmforge_side()
        indices = vlmforge_side.trained_sample_indices()
        if self.device.type == "cuda":  # one side at a time: a 7B model and its activations fill the GPU
            run_sides([vlmforge_side], self.config.steps, alternate=False)
            inference = self._inference(vlmforge_side)
            baseline_run = self._baseline_alone(indices)
        else:
            baseline_side = self._baseline_side(indices)
            run_sides([vlmforge_side, baseline_side], self.config.steps, alternate=True)
            baseline_run = baseline_side.run
            del baseline_side
            _free(self.device)
            inference = self._inference(vlmforge_side)
        return vlmforge_side.run, baseline_run, inference

    def _base_model(self):
        """(model, processor) for configs built in memory (7b-lora); None: the folder is loaded."""
        from vlmforge.bench.models import instantiate_large

        return instantiate_large(self.config, self.model_dir, str(self.device)) if self.config.needs_cuda else None

    def _vlmforge_side(self):
        from vlmforge.bench.vlmforge_training import VlmforgeSide, bench_recipe

        recipe = bench_recipe(self.config, self.model_dir, self.data_path, self.folder / "run",
                              cuda=self.device.type == "cuda", precision=self.precision)
        return VlmforgeSide(recipe, base_model=self._base_model())

    def _baseline_side(self, indices: list[int]):
        from vlmforge.bench.baseline import BaselineSettings, BaselineSide
        from vlmforge.model.load import load

        config = self.config
        settings = BaselineSettings(batch_size=config.batch_size, grad_accum=config.grad_accum, lora_rank=config.lora_rank,
                                    lora_alpha=config.lora_alpha, max_length=config.max_length)
        model, processor = self._base_model() or load(self.model_dir, dtype="float32")
        warmup_indices = indices[:self.config.global_batch]  # vlmforge's first global batch: the longest
        return BaselineSide(model, processor, self.data_path, indices, settings, self.device, warmup_indices)

    def _baseline_alone(self, indices: list[int]):
        """The baseline on its own (GPU); an out-of-memory baseline is reported as such."""
        import torch

        from vlmforge.bench.training_run import TrainingRun, run_sides

        side = None
        _free(self.device)  # the vlmforge side's model is gone: give its memory back before building this one
        try:
            side = self._baseline_side(indices)
            run_sides([side], self.config.steps, alternate=False)
            return side.run
        except torch.OutOfMemoryError:
            log.warning("baseline: out of memory on %s", self.device)
            return TrainingRun("baseline", "fp32", shape=None, error="out of memory")
        finally:
            del side
            _free(self.device)

    def _inference(self, vlmforge_side) -> dict:
        """Export the trained model (LoRA merged) and time generation on it; frees the trainer."""
        from vlmforge.bench.inference import measure_inference
        from vlmforge.model.load import load
        from vlmforge.train.export import export_model

        trainer = vlmforge_side.trainer
        if self.config.needs_cuda:  # no round trip through the disk for 7B: merge in memory
            import torch

            model, processor = trainer.unwrapped_peft.merge_and_unload().eval().to(torch.bfloat16), trainer.processor
        else:
            export_model(trainer.unwrapped_peft, trainer.processor, self.folder / "export")
            model, processor = load(self.folder / "export", device=str(self.device))
        vlmforge_side.trainer = trainer = None
        _free(self.device)
        records = [json.loads(line) for line in self.data_path.read_text(encoding="utf-8").splitlines()]
        log.info("generation: batch %s, %d new tokens...", list(self.config.generation_batches), self.config.max_new_tokens)
        return measure_inference(model, processor, records, self.data_path.parent, self.config.generation_batches,
                                 self.config.max_new_tokens)


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
