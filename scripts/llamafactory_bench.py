"""LLaMA-Factory's SFT on the benchmark's exported model and data; run by scripts/bench-llamafactory.sh.

    .venv-llamafactory/bin/python scripts/llamafactory_bench.py DIR     # DIR from `vlmforge bench --export-data DIR`
    .venv/bin/python scripts/llamafactory_bench.py --table DIR          # vlmforge, TRL and LLaMA-Factory side by side

LLaMA-Factory runs its own code path (`run_exp`: its template and preprocessing, its collator, its
Seq2Seq trainer) with vlmforge's settings: LoRA rank / alpha / dropout on every linear layer of the
LLM (`lora_target: all`, vision tower frozen), the projector trained in full (`additional_target`),
the same batch, steps, precision, cosine schedule with warm-up, clipping, cutoff length. A ChatML
template with the LLaVA image plugin is registered (the model's own chat format; LLaMA-Factory's
`qwen` template with its default system prompt removed). Differences it cannot avoid: one learning
rate for every trained part (vlmforge's LLM rate), and the newline after `<|im_end|>` is trained.

The data: the rows vlmforge's steps train on, the warm-up rows first (an untimed first step on the
same samples, so the step-1 losses compare), then the rest in a seeded random order (LLaMA-Factory's
own shuffling is off so the warm-up batch comes first; a random order is what its sampler gives).
Each step is timed from the end of the previous one (data loading included); real, padded and trained
tokens are counted from the batches its trainer receives.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from pathlib import Path


def lf_records(folder: Path, settings: dict) -> list[dict]:
    records = [json.loads(line) for line in (folder / settings["data"]).read_text(encoding="utf-8").splitlines()]
    root = (folder / settings["data"]).parent
    warmup = settings["warmup_indices"]
    rest = list(settings["indices"])
    for index in warmup:
        rest.remove(index)
    random.Random(settings["seed"]).shuffle(rest)
    rows = []
    for index in warmup + rest:
        record = records[index]
        rows.append({"messages": record["messages"], "images": [str(root / path) for path in record.get("images", [])]})
    return rows


def register_chatml_llava() -> str:
    from llamafactory.data.formatter import StringFormatter
    from llamafactory.data.mm_plugin import get_mm_plugin
    from llamafactory.data.template import register_template

    register_template(
        name="vlmforge_chatml",
        format_user=StringFormatter(slots=["<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"]),
        format_assistant=StringFormatter(slots=["{{content}}<|im_end|>\n"]),
        format_system=StringFormatter(slots=["<|im_start|>system\n{{content}}<|im_end|>\n"]),
        stop_words=["<|im_end|>"],
        replace_eos=True,
        mm_plugin=get_mm_plugin(name="llava", image_token="<image>"),
    )
    return "vlmforge_chatml"


class Counter:
    """Per optimizer step: seconds (from the previous step's end), real / padded / trained tokens, samples, loss."""

    def __init__(self):
        self.steps, self.current, self.last_end = [], None, None

    def micro_batch(self, inputs, loss) -> None:
        mask, labels = inputs["attention_mask"], inputs["labels"]
        if self.current is None:
            self.current = {"real": 0, "padded": 0, "trained": 0, "samples": 0, "loss": 0.0}
        self.current["real"] += int(mask.sum())
        self.current["padded"] += int(mask.numel())
        self.current["trained"] += int((labels[:, 1:] != -100).sum())
        self.current["samples"] += int(mask.shape[0])
        self.current["loss"] += float(loss)

    def step_end(self) -> None:
        now = time.perf_counter()
        self.current["seconds"] = now - self.last_end
        self.steps.append(self.current)
        self.current, self.last_end = None, now


def stub_torchaudio() -> None:
    """LLaMA-Factory 0.9.5 imports torchaudio at start-up for its audio plugins; no torchaudio build exists for
    this torch, and image SFT never calls it: an empty module stands in."""
    import importlib.machinery
    import types

    try:
        import torchaudio  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)  # transformers' availability check reads it
        sys.modules["torchaudio"] = stub


def run(folder: Path) -> dict:
    stub_torchaudio()
    import transformers
    from transformers import Trainer, TrainerCallback

    import llamafactory
    from llamafactory.train.tuner import run_exp

    settings = json.loads((folder / "settings.json").read_text())
    work = folder / "llamafactory"
    work.mkdir(exist_ok=True)
    (work / "bench.json").write_text(json.dumps(lf_records(folder, settings)))
    (work / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": "bench.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))
    counter = Counter()
    original_step = Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        loss = original_step(self, model, inputs, *args, **kwargs)
        counter.micro_batch(inputs, loss.detach())
        return loss

    Trainer.training_step = training_step

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            counter.last_end = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            counter.step_end()

        def on_train_end(self, args, state, control, model=None, **kwargs):
            counter.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    args = {
        "model_name_or_path": str(folder / settings["model"]), "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_target": "all", "lora_rank": settings["lora_rank"],
        "lora_alpha": settings["lora_alpha"], "lora_dropout": settings["lora_dropout"],
        "freeze_vision_tower": True, "freeze_multi_modal_projector": False, "additional_target": "multi_modal_projector",
        "template": register_chatml_llava(), "dataset": "bench", "dataset_dir": str(work),
        "cutoff_len": settings["max_length"], "disable_shuffling": True, "output_dir": str(work / "out"),
        "overwrite_output_dir": True, "per_device_train_batch_size": settings["batch_size"],
        "gradient_accumulation_steps": settings["grad_accum"], "learning_rate": settings["lr_llm"],
        "max_steps": settings["steps"] + 1, "lr_scheduler_type": "cosine", "warmup_ratio": settings["warmup_ratio"],
        "max_grad_norm": settings["max_grad_norm"], "bf16": settings["precision"] == "bf16",
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "plot_loss": False,
        "dataloader_num_workers": 0, "seed": settings["seed"], "use_cpu": True,
    }
    started = time.perf_counter()
    run_exp(args, callbacks=[StepTimer()])
    timed = counter.steps[1:]  # the first step is the warm-up, as in `vlmforge bench`
    seconds = sum(step["seconds"] for step in timed)
    real, padded = sum(step["real"] for step in timed), sum(step["padded"] for step in timed)
    import torch

    return {
        "system": f"LLaMA-Factory {llamafactory.__version__}", "transformers": transformers.__version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "steps": len(timed),
        "real_tokens": real, "padded_tokens": padded, "trained_tokens": sum(step["trained"] for step in timed),
        "samples": sum(step["samples"] for step in timed), "seconds": seconds,
        "median_step_s": statistics.median(step["seconds"] for step in timed) if timed else None,
        "real_tokens_per_s": real / seconds if seconds else None,
        "samples_per_s": sum(step["samples"] for step in timed) / seconds if seconds else None,
        "pad_fraction": 1 - real / padded if padded else None, "step1_loss": counter.steps[0]["loss"],
        "trainable_params": getattr(counter, "trainable", None), "precision": settings["precision"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_seconds": time.perf_counter() - started, "load_average": list(__import__("os").getloadavg()),
    }


def table(folder: Path) -> str:
    bench = json.loads((folder / "vlmforge.json").read_text())
    factory = json.loads((folder / "llamafactory.json").read_text())
    ours, trl = bench["training"]["vlmforge"], bench["training"]["baseline"]
    trl_name = "TRL SFTTrainer" if bench["training"].get("baseline_name") == "trl" else "naive loop"
    columns = [("vlmforge", ours), (trl_name, trl), (factory["system"], factory)]
    rows = [("", *[name for name, _ in columns])]
    for label, key, fmt in (("real tokens/s", "real_tokens_per_s", "{:,.0f}"), ("samples/s", "samples_per_s", "{:.2f}"),
                            ("median step (s)", "median_step_s", "{:.3f}"), ("pad fraction", "pad_fraction", "{:.1%}"),
                            ("trainable parameters", "trainable_params", "{:,}"), ("step-1 loss", "step1_loss", "{:.4f}")):
        rows.append((label, *[fmt.format(side[key]) if side.get(key) is not None else "-" for _, side in columns]))
    memory = [ours.get("peak_memory_mb"), trl.get("peak_memory_mb"), factory.get("peak_rss_mb")]
    rows.append(("peak memory (MB)*", *[f"{value:,.0f}" if value else "-" for value in memory]))
    rows.append(("vlmforge speedup", "1.00×", *[f"{ours['real_tokens_per_s'] / side['real_tokens_per_s']:.2f}×"
                                                 for _, side in columns[1:]]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    machine = bench["machine"]
    lines.append(f"* vlmforge and TRL: resident + the longest step's peak; LLaMA-Factory: the process's peak RSS. "
                 f"{machine['cpu']}, load average {machine.get('load_average_start')} → {machine.get('load_average_end')} "
                 f"(vlmforge/TRL), {factory['load_average'][0]:.2f} (LLaMA-Factory, on transformers {factory['transformers']})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--table":
        print(table(Path(argv[1])))
        return 0
    folder = Path(argv[0])
    result = run(folder)
    (folder / "llamafactory.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
