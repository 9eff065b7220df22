"""What one side of the training benchmark measured, and how the two sides' steps are run and timed.

Both sides (vlmforge and the baseline) are `TrainingSide`s: `warmup()` then `step()` one optimizer
step at a time. `run_sides` times each step with its data loading (a training run pays it) and
records its real and padded tokens, the model FLOPs of its real tokens (`flops.training_flops`)
and its memory. On a CPU shared with other work the two sides alternate step by step, so a
burst of load hits both alike; on a GPU they run one after the other.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from vlmforge.bench.flops import ModelShape, batch_step_tokens, training_flops
from vlmforge.bench.machine import StepMemory, synchronize


@dataclass
class TrainingRun:
    name: str
    precision: str  # "bf16" or "fp32"
    shape: ModelShape | None  # None only for a side that could not run (`error`)
    vision_trained: bool = False  # the baseline keeps autograd on the vision tower
    logits_on_all: bool = False  # the baseline's `labels=` loss computes every position's logits
    step_seconds: list[float] = field(default_factory=list)
    data_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time per step (all its threads)
    losses: list[float] = field(default_factory=list)
    real_tokens: int = 0
    padded_tokens: int = 0
    trained_tokens: int = 0
    samples: int = 0
    model_flops: float = 0.0  # what the training needs: the real tokens, vlmforge's trainability
    executed_flops: float = 0.0  # what this side computes: its padding, its logits, its vision gradients
    six_n_t: float = 0.0
    trainable_params: int = 0
    step1_loss: float | None = None  # the warm-up step's loss: every side's first step, on the same samples
    resident_bytes: int = 0  # weights + optimizer state, between steps
    step_peak_bytes: int = 0  # what the longest batch's step added on top
    error: str = ""

    def add_step(self, micro_batches: list, seconds: float, data_seconds: float, loss: float, cpu_seconds: float = 0.0) -> None:
        real = batch_step_tokens(micro_batches)
        padded = batch_step_tokens(micro_batches, padded=True)
        needed = training_flops(self.shape, real)
        executed = training_flops(self.shape, padded, self.vision_trained, self.logits_on_all)
        self.step_seconds.append(seconds)
        self.data_seconds.append(data_seconds)
        self.cpu_seconds.append(cpu_seconds)
        self.losses.append(loss)
        self.real_tokens += sum(real.lengths)
        self.padded_tokens += sum(padded.lengths)
        self.trained_tokens += real.trained_tokens
        self.samples += len(real.lengths)
        self.model_flops += needed.total
        self.executed_flops += executed.total
        self.six_n_t += needed.six_n_t

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def pad_fraction(self) -> float:
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)

    def summary(self, ceiling_tflops: float | None) -> dict:
        """Throughput, FLOPs and MFU against `ceiling_tflops` (the measured GEMM rate of this side's precision)."""
        if self.error:
            return {"error": self.error, "precision": self.precision}
        seconds, steps = max(self.seconds, 1e-9), max(len(self.step_seconds), 1)
        achieved = self.model_flops / seconds / 1e12
        return {
            "precision": self.precision, "steps": len(self.step_seconds),
            "real_tokens": self.real_tokens, "padded_tokens": self.padded_tokens, "trained_tokens": self.trained_tokens,
            "samples": self.samples, "seconds": round(seconds, 4),
            "median_step_s": round(statistics.median(self.step_seconds), 4) if self.step_seconds else None,
            "data_s_per_step": round(sum(self.data_seconds) / steps, 4),
            "cpu_s_per_step": round(sum(self.cpu_seconds) / steps, 4),
            # tokens per CPU-second: with --threads 1, what an idle core gives; other work on the machine barely moves it
            "real_tokens_per_cpu_s": self.real_tokens / sum(self.cpu_seconds) if sum(self.cpu_seconds) else None,
            "real_tokens_per_s": self.real_tokens / seconds, "samples_per_s": self.samples / seconds,
            "pad_fraction": self.pad_fraction, "flops_per_step": self.model_flops / steps,
            "executed_flops_per_step": self.executed_flops / steps, "six_n_t_per_step": self.six_n_t / steps,
            "achieved_tflops": achieved, "ceiling_tflops": ceiling_tflops,
            "mfu": achieved / ceiling_tflops if ceiling_tflops else None,
            "peak_memory_mb": round((self.resident_bytes + self.step_peak_bytes) / 2**20, 1),
            "resident_mb": round(self.resident_bytes / 2**20, 1), "step_peak_mb": round(self.step_peak_bytes / 2**20, 1),
            "final_loss": self.losses[-1] if self.losses else None,
            "step1_loss": self.step1_loss, "trainable_params": self.trainable_params,
        }


class TrainingSide:
    """One way of training: `warmup()` (untimed, on the run's longest batch), then per optimizer step
    `load()` its micro-batches and `step()` on them (→ loss)."""

    run: TrainingRun
    device: object

    def warmup(self) -> float:
        """One untimed step on the run's first (longest) samples; its loss."""
        raise NotImplementedError

    def load(self) -> list:
        """The next step's micro-batches (data loading, timed with the step)."""
        raise NotImplementedError

    def step(self, micro_batches: list) -> float:
        raise NotImplementedError

    def resident_bytes(self) -> int:
        raise NotImplementedError


def timed_step(side: TrainingSide) -> None:
    """Run one step of `side` and record its time (data loading included), tokens and FLOPs."""
    synchronize(side.device)
    started, cpu_started = time.perf_counter(), time.process_time()
    micro_batches = side.load()
    loaded = time.perf_counter()
    loss = side.step(micro_batches)
    synchronize(side.device)
    side.run.add_step(micro_batches, time.perf_counter() - started, loaded - started, loss,
                      time.process_time() - cpu_started)


def warmup_with_memory(side: TrainingSide) -> None:
    """The untimed first step, on the same (longest) samples for every side; it measures the memory.

    Memory is measured here and not in the timed steps: returning freed memory to the OS before a
    step, which the measurement needs on a CPU, slows the step that follows.
    """
    before = side.resident_bytes()
    memory = StepMemory(side.device)
    memory.start()
    side.run.step1_loss = side.warmup()
    side.run.resident_bytes = side.resident_bytes()
    created = side.run.resident_bytes - before  # optimizer state, created by the first step
    side.run.step_peak_bytes = max(0, memory.transient_bytes() - created)


def run_sides(sides: list[TrainingSide], steps: int, alternate: bool, bar=None) -> None:
    """Warm each side up, then time `steps` steps of each: alternating (A B, B A, ...) or one side after the other.

    `bar` (optional, tqdm-like) is advanced once per step of any side, warm-ups included.
    """
    advance = bar.update if bar is not None else (lambda n=1: None)
    for side in sides:
        warmup_with_memory(side)
        advance()
    if alternate:
        for step in range(steps):
            for side in sides if step % 2 == 0 else sides[::-1]:
                timed_step(side)
                advance()
    else:
        for side in sides:
            for _ in range(steps):
                timed_step(side)
                advance()
    if bar is not None:
        bar.close()
