"""The training loop: one process or many (torchrun / accelerate: DDP, FSDP, DeepSpeed), resumable.

    from vlmforge.train.loop import train
    result = train(load_recipe("instruct-lora"), resume=True)

accelerate wraps the model for whatever the launcher set up; vlmforge itself decides the data
(the global-batch plan), the token-normalised loss, checkpoints and logging. Only rank 0 logs and
writes; every rank reads the same plan.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlmforge.config import save_yaml, to_dict
from vlmforge.errors import ConfigError, VlmforgeError
from vlmforge.train.callbacks import TrainingView
from vlmforge.train.recipe import Recipe, validate_recipe

log = logging.getLogger("vlmforge.train")


class TrainingError(VlmforgeError):
    """The run cannot go on (non-finite loss under the `stop` policy, ...); checkpoints stay intact."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    final_loss: float
    final_model: Path | None
    history: list[dict] = field(default_factory=list)
    skipped_steps: int = 0


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def choose_precision(setting: str, device) -> bool:
    """True when bf16 autocast should be used.

    On a CPU only with AMX tiles: there oneDNN's bf16 GEMM is several times faster than fp32, while with
    AVX512-BF16 alone it measured 2-3× slower than fp32 (`vlmforge bench`, docs/performance.md).
    """
    import torch

    if setting != "auto":
        return setting == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.cpu._is_amx_tile_supported()


def load_model_for_training(recipe: Recipe, device, loaded=None):
    """The base model with trainability applied; trainable weights in fp32.

    `loaded`: an already built (model, processor) to use instead of loading `recipe.model.path`.
    """
    import torch

    from vlmforge.model.load import load
    from vlmforge.train.trainability import set_trainable

    model, processor = loaded or load(recipe.model.path, dtype="float32" if device.type == "cpu" else None)
    model.config._attn_implementation = recipe.model.attn_implementation
    parts = recipe.trainable
    model = set_trainable(model, parts.vision, parts.projector, parts.llm, recipe.lora)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, processor


class Trainer:
    """Holds the run's state; `run()` trains to `max_steps` and returns a `TrainResult`.

    A caller that drives the steps itself (the benchmark times each one) uses the public calls
    `run()` makes: `setup()`, then for each item of `batches(start)` `step(...)` and
    `optimizer_step(...)`. `model` is the model as the launcher wrapped it (DDP, FSDP, compiled),
    `peft_model` is it unwrapped, `base_model` the transformers model under the LoRA adapters.
    """

    def __init__(self, recipe: Recipe, resume: bool = False, callbacks=(), loaded=None):
        """`loaded`: an in-memory (model, processor) trained instead of `recipe.model.path`'s, the public
        way to train a model that is not on disk (the benchmark's full-size random models)."""
        validate_recipe(recipe)
        missing = [path for path in recipe.data.paths if not Path(path).is_file()]
        if missing:
            raise VlmforgeError(f"data file not found: {missing[0]} (data.paths)")
        if recipe.train.strategy == "fsdp" and recipe.eval.data:
            raise ConfigError("eval.data: evaluation during training runs on rank 0 alone, which a sharded model "
                              "(train.strategy fsdp) cannot do; evaluate the exported model with `vlmforge eval`")
        self.recipe = recipe
        self.loaded = loaded
        self.resume = resume
        self.callbacks = list(callbacks)
        self.output_dir = Path(recipe.train.output_dir)

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Accelerator, model (+ LoRA), optimizer, schedule, dataset and global-batch plan; `run()` calls it first."""
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        from vlmforge.data.dataset import BadSampleBudget, ConversationDataset
        from vlmforge.data.token_lengths import dataset_token_lengths
        from vlmforge.train.batching import BatchPlan, Collator
        from vlmforge.train.sharded_state import use_fsdp
        from vlmforge.train.steps import StepBatches
        from vlmforge.train.trainability import count_parameters, parameter_groups

        train, data = self.recipe.train, self.recipe.data
        cpu = train.device == "cpu" or (not train.device and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.is_main = self.accelerator.is_main_process
        if not self.is_main:  # only rank 0 talks; the others still raise their errors
            logging.getLogger("vlmforge").setLevel(logging.WARNING)
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
        self.fsdp = use_fsdp(self.accelerator, train.strategy)
        torch.manual_seed(train.seed)
        model, self.processor = load_model_for_training(self.recipe, self.accelerator.device, self.loaded)
        self.bf16 = choose_precision(train.precision, self.accelerator.device)
        trainable, total = count_parameters(model)
        log.info("parameters: %.2fM trainable of %.2fM (%s)", trainable / 1e6, total / 1e6,
                 ", ".join(f"{k}: {v}" for k, v in to_dict(self.recipe.trainable).items()))
        if self.fsdp:  # before the optimizer: it must hold the sharded parameters
            from vlmforge.train.sharded_state import shard_model

            model = shard_model(model.to(self.accelerator.device), self.accelerator.device)
        groups = parameter_groups(model, train.lr.projector, train.lr.llm, train.lr.vision, train.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
        warmup = int(train.warmup_ratio * train.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup, train.max_steps, train.min_lr_ratio))
        if train.compile:
            model = torch.compile(model)
        if self.fsdp:
            self.model, self.optimizer = model, optimizer
        else:
            self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = scheduler
        self.group_names = [group["name"] for group in groups]

        budget = BadSampleBudget(max_fraction=data.max_bad_fraction)
        self.dataset = ConversationDataset(data.paths, data.weights or None, data.image_roots, budget=budget, seed=train.seed)
        from vlmforge.data.image_tokens import image_tokens_for, typical_count

        num_image_tokens = image_tokens_for(self.processor)  # a constant (Llava) or per image size (Idefics3 tiles)
        world = self.accelerator.num_processes
        lengths = (dataset_token_lengths(self.dataset, self.processor.tokenizer, self.processor.image_token, num_image_tokens)
                   if data.group_by_length else self.dataset.length_estimates(typical_count(num_image_tokens)))
        self.plan = BatchPlan(lengths, train.batch_size * train.grad_accum * world,
                              train.seed, data.group_by_length)
        if self.plan.steps_per_epoch() == 0:
            raise VlmforgeError(f"{len(self.dataset)} samples cannot fill one global batch of {self.plan.global_batch} "
                                "(batch_size × grad_accum × processes): lower the batch size or add data")
        from vlmforge.data.token_lengths import check_lengths_fit  # nothing trains on nothing: stop before step 1

        check_lengths_fit(self.dataset, self.processor.tokenizer, self.processor.image_token, num_image_tokens, data.max_length,
                          data.too_long, lengths if data.group_by_length else None, self.plan.epoch_plan(0))
        collator = Collator(self.processor, num_image_tokens, data.max_length, data.too_long)
        self.step_batches = StepBatches(self.dataset, self.plan, collator, self.accelerator.process_index, world, train.grad_accum)

    @property
    def base_model(self):
        """The transformers model under the LoRA adapters (the same as `peft_model` without LoRA)."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def batches(self, start: int):
        """The micro-batches of steps `start`.. of the plan, one list per optimizer step, loaded in
        `data.num_workers` processes.

        The loader gets its own generator: without one, starting its iterator draws the workers'
        base seed from the global torch generator, so a resumed run (which starts it right after
        restoring the checkpoint's RNG state) shifted every later dropout mask by one draw.
        """
        import torch

        steps = range(start, self.recipe.train.max_steps)
        workers = self.recipe.data.num_workers
        return torch.utils.data.DataLoader(self.step_batches, batch_size=None, sampler=steps, num_workers=workers,
                                           collate_fn=lambda item: item, persistent_workers=False,
                                           prefetch_factor=2 if workers else None,
                                           generator=torch.Generator().manual_seed(self.recipe.train.seed))

    # -- one step ---------------------------------------------------------------------------
    def step(self, micro_batches: list) -> dict:
        """Forward and backward of one optimizer step's micro-batches; the loss is normalised by the
        step's trained tokens over all processes. Returns the step's stats (loss, token counts)."""
        import torch

        from vlmforge.train.steps import summed_loss, trained_token_count

        device = self.accelerator.device
        local_tokens = sum(trained_token_count(batch) for batch in micro_batches)
        counts = torch.tensor([local_tokens, sum(0 if b is None else int(b["attention_mask"].sum()) for b in micro_batches),
                               sum(0 if b is None else len(b["input_ids"]) for b in micro_batches),
                               sum(0 if b is None else b["input_ids"].numel() for b in micro_batches)],
                              dtype=torch.float64, device=device)
        global_tokens, real_tokens, samples, padded = self.accelerator.reduce(counts, reduction="sum").tolist()
        world = self.accelerator.num_processes
        loss_total = torch.zeros((), dtype=torch.float64, device=device)
        for index, batch in enumerate(micro_batches):
            if batch is None:
                continue
            batch = {key: value.to(device) for key, value in batch.items()}
            last = index == len(micro_batches) - 1
            with self._gradient_sync(last), torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss_sum = summed_loss(self.model, batch)
            self.accelerator.backward(loss_sum * world / max(global_tokens, 1.0))
            loss_total += loss_sum.detach().double()
        loss = float(self.accelerator.reduce(loss_total, reduction="sum")) / max(global_tokens, 1.0)
        return {"loss": loss, "trained_tokens": global_tokens, "tokens": real_tokens, "samples": samples,
                "pad_fraction": 1.0 - real_tokens / max(padded, 1.0)}

    def _gradient_sync(self, last: bool):
        """Average gradients across processes only after the last micro-batch of a step."""
        if self.fsdp:
            self.peft_model.set_requires_gradient_sync(last)
            return nullcontext()
        return self.accelerator.no_sync(self.model) if not last and self.accelerator.num_processes > 1 else nullcontext()

    def optimizer_step(self, stats: dict) -> bool:
        """Clip, check, step. False when the step was skipped (non-finite loss or gradient)."""
        import torch

        max_norm = self.recipe.train.max_grad_norm
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if self.fsdp:
            from vlmforge.train.sharded_state import clip_grad_norm

            grad_norm = clip_grad_norm(parameters, max_norm)
        elif max_norm > 0:
            grad_norm = self.accelerator.clip_grad_norm_(parameters, max_norm)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters if p.grad is not None]))
        stats["grad_norm"] = float(grad_norm)
        stats["lrs"] = self.scheduler.get_last_lr()  # the rates this step uses
        if not (math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        from tqdm import tqdm

        from vlmforge.train.checkpoint import clean_output_dir, latest_checkpoint, load_checkpoint
        from vlmforge.train.metrics_log import MetricsLog, plot_curves

        self.setup()
        train = self.recipe.train
        state = {"skipped_steps": 0, "trained_tokens": 0.0}
        start = 0
        if self.is_main:
            clean_output_dir(self.output_dir)
        self.accelerator.wait_for_everyone()
        if self.resume:
            checkpoint = latest_checkpoint(self.output_dir, quiet=not self.is_main)  # one line, not one per rank
            if checkpoint is None:
                log.info("--resume: no complete checkpoint in %s, starting from step 0", self.output_dir)
            else:
                state = self._load(checkpoint, load_checkpoint)
                start = state["step"]
                log.info("resumed from %s (step %d)", checkpoint, start)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.recipe, self.output_dir / "recipe.yaml")
        metrics = MetricsLog(self.output_dir, enabled=self.is_main, tensorboard=train.tensorboard, resume_step=start)
        history, window, last_loss = [], _Window(), float("nan")
        progress = tqdm(total=train.max_steps, initial=start, desc="train", unit="step", disable=not self.is_main)
        try:  # an error mid-run is printed on its own line, not after the unfinished bar
            for step, micro_batches in enumerate(self.batches(start), start=start):
                stats = self.step(micro_batches)
                if self.optimizer_step(stats):
                    state["trained_tokens"] += stats["trained_tokens"]
                    window.add(stats)
                    last_loss = stats["loss"]
                    progress.set_postfix(loss=f"{stats['loss']:.3f}")
                else:
                    self._handle_nonfinite(step, stats, state)
                    window.skipped += 1
                progress.update(1)
                self._on_schedule(step + 1, window, stats, state, history, metrics)
        finally:
            progress.close()
        metrics.close()
        final = self._finish(metrics.path, plot_curves)
        return TrainResult(self.output_dir, train.max_steps, last_loss, final, history, state["skipped_steps"])

    def _on_schedule(self, done: int, window, stats: dict, state: dict, history: list, metrics) -> None:
        """After every step, trained or skipped: log and save when due, so the last step is always saved."""
        train = self.recipe.train
        last = done == train.max_steps
        if done % train.log_steps == 0 or last:
            row = self._log_row(done, window.flush(), stats)
            row.update(self._run_callbacks(done))
            metrics.write(row)
            history.append(row)
        if done % train.save_steps == 0 or last:
            self._save(done, state, history)

    def _run_callbacks(self, step: int) -> dict:
        """Callbacks (evaluation) see the run between steps through a `TrainingView`, not the Trainer;
        they run on a forked RNG so that whatever they draw (generation, their own loaders) never
        changes the training's random stream."""
        import torch

        device = self.accelerator.device
        row = {}
        view = TrainingView(step, self.peft_model, self.processor, self.is_main, self.bf16, self.output_dir)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for callback in self.callbacks:
                row.update(callback(view, step) or {})
        return row

    @property
    def peft_model(self):
        """`model` unwrapped from DDP / FSDP / compile: with its LoRA adapters, what checkpoints and export save."""
        return self.accelerator.unwrap_model(self.model)

    def _handle_nonfinite(self, step: int, stats: dict, state: dict) -> None:
        message = f"non-finite loss or gradient at step {step + 1} (loss {stats['loss']}, grad norm {stats['grad_norm']})"
        if self.recipe.train.nonfinite == "stop":
            raise TrainingError(f"{message}; stopped (train.nonfinite=stop). The last checkpoint in {self.output_dir} is intact")
        state["skipped_steps"] += 1
        log.warning("%s: step skipped (train.nonfinite=skip)", message)

    def _log_row(self, step: int, window: dict, stats: dict) -> dict:
        from vlmforge.train.steps import peak_memory_mb

        grad_norm = stats["grad_norm"] if math.isfinite(stats["grad_norm"]) else None  # JSON has no NaN
        row = {"step": step, "loss": window["loss"], "grad_norm": grad_norm}
        if window["skipped_steps"]:
            row["skipped_steps"] = window["skipped_steps"]
        for name, lr in zip(self.group_names, stats["lrs"]):
            row.setdefault(f"lr_{name.removesuffix('_no_decay')}", lr)
        row.update(tokens_per_s=window["tokens_per_s"], samples_per_s=window["samples_per_s"],
                   pad_fraction=window["pad_fraction"], peak_memory_mb=peak_memory_mb(self.accelerator.device))
        return row

    def _load(self, checkpoint: Path, load_checkpoint) -> dict:
        """Restore the run from `checkpoint` (every rank reads it); returns its trainer state."""
        rank = self.accelerator.process_index
        if not self.fsdp:
            return load_checkpoint(checkpoint, self.peft_model, self.optimizer, self.scheduler, self.recipe, rank)
        from vlmforge.train.sharded_state import FullOptimizerState, FullState, scatter_full_state

        weights, optimizer_state = FullState.receiving(self.peft_model), FullOptimizerState()
        state = load_checkpoint(checkpoint, weights, optimizer_state, self.scheduler, self.recipe, rank)
        scatter_full_state(self.peft_model, self.optimizer, weights.tensors, optimizer_state.state)
        return state

    def _full_state(self) -> tuple:
        """(model, optimizer) as the checkpoint writer reads them: under FSDP, the state gathered onto rank 0."""
        if not self.fsdp:
            return self.peft_model, self.optimizer
        from vlmforge.train.sharded_state import FullOptimizerState, FullState, gather_full_state

        weights, optimizer_state = gather_full_state(self.peft_model, self.optimizer)  # every rank takes part
        return FullState(weights), FullOptimizerState(optimizer_state)

    def _rng_states(self) -> list | None:
        """Every process's RNG state, in rank order, when several train: each draws its own dropout
        masks (its micro-batches differ in shape), so each must continue from its own state."""
        if self.accelerator.num_processes == 1:
            return None
        import torch.distributed as dist

        from vlmforge.train.checkpoint import rng_state

        states = [None] * self.accelerator.num_processes
        dist.all_gather_object(states, rng_state())
        return states

    def _save(self, step: int, state: dict, history: list) -> None:
        from vlmforge.train.checkpoint import save_checkpoint

        self.accelerator.wait_for_everyone()
        model, optimizer = self._full_state()
        rng_states = self._rng_states()
        if self.is_main:
            import yaml

            recipe_yaml = yaml.safe_dump(to_dict(self.recipe), sort_keys=False, allow_unicode=True)
            trainer_state = {**state, "last_metrics": history[-1] if history else {}}
            save_checkpoint(self.output_dir, step, model, optimizer, self.scheduler, trainer_state,
                            recipe_yaml, self.recipe.train.save_total_limit, rng_states)
        self.accelerator.wait_for_everyone()

    def _finish(self, metrics_path: Path, plot_curves) -> Path | None:
        from vlmforge.train.export import export_checkpoint, export_model

        final = None
        if self.is_main:
            if metrics_path.exists():
                plot_curves(metrics_path, self.output_dir / "curves.png")
            if self.recipe.train.export and self.fsdp:  # rank 0 holds shards only; the last step is checkpointed
                final = export_checkpoint(self.output_dir / f"checkpoint-{self.recipe.train.max_steps}", self.output_dir / "final")
            elif self.recipe.train.export:
                final = export_model(self.peft_model, self.processor, self.output_dir / "final")
            if final:
                log.info("merged model written to %s", final)
        self.accelerator.wait_for_everyone()
        return final


class _Window:
    """Averages over the steps between two log lines, and their throughput."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.losses, self.tokens, self.samples, self.real, self.padded_fraction = [], 0.0, 0.0, 0.0, []
        self.skipped = 0  # steps dropped for a non-finite loss (train.nonfinite=skip)
        self.started = time.perf_counter()

    def add(self, stats: dict) -> None:
        self.losses.append(stats["loss"])
        self.tokens += stats["tokens"]
        self.samples += stats["samples"]
        self.padded_fraction.append(stats["pad_fraction"])

    def flush(self) -> dict:
        """Means over the trained steps; `loss` and `pad_fraction` are None when every step was skipped."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
        summary = {"loss": mean(self.losses), "tokens_per_s": self.tokens / elapsed,
                   "samples_per_s": self.samples / elapsed, "pad_fraction": mean(self.padded_fraction),
                   "skipped_steps": self.skipped}
        self.reset()
        return summary


def train(recipe: Recipe, resume: bool = False, callbacks=()) -> TrainResult:
    return Trainer(recipe, resume=resume, callbacks=callbacks).run()
