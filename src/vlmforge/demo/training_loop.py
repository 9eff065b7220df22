"""A plain step loop bounded by steps and/or seconds, with a tqdm bar: the demo's small pre-trainings.

The demo's budgets are wall-clock budgets (the whole demo must fit in minutes on a laptop CPU),
so a loop stops at whichever limit comes first and reports how far it got.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vlmforge.errors import ConfigError

METRICS_FILE = "pretraining_metrics.json"  # written beside the weights of every part the demo pre-trains


@dataclass
class LoopResult:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    def recent_loss(self, window: int = 10) -> float:
        """Mean loss of the last `window` steps."""
        return _mean(self.losses[-window:])

    def summary(self) -> dict:
        """Steps, seconds, and the mean loss of the first and the last few steps (a quarter, at most 20)."""
        window = max(1, min(20, self.steps // 4))
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "first_loss": round(_mean(self.losses[:window]), 4),
            "final_loss": round(_mean(self.losses[-window:]), 4),
        }


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def run_steps(
    step: Callable[[float], float], max_steps: int | None, max_seconds: float | None, desc: str, model=None
) -> LoopResult:
    """Call `step(progress) -> loss` until `max_steps` steps or `max_seconds` seconds, whichever comes first.

    `progress` in [0, 1) is how far the loop is towards the nearer limit (for learning-rate schedules).
    `model`, when given, is in train mode during the loop and in eval mode after it.
    """
    if max_steps is None and max_seconds is None:
        raise ConfigError("a pre-training needs a limit: give max_steps, max_seconds or both")
    if model is not None:
        model.train()
    result, start = LoopResult(), time.perf_counter()
    limit_steps = max_steps if max_steps is not None else math.inf
    limit_seconds = max_seconds if max_seconds is not None else math.inf
    with tqdm(total=max_steps, desc=desc, unit="step", leave=False) as bar:
        while result.steps < limit_steps and time.perf_counter() - start < limit_seconds:
            elapsed = time.perf_counter() - start
            result.losses.append(step(max(result.steps / limit_steps, elapsed / limit_seconds)))
            result.steps += 1
            bar.update(1)
            if result.steps % 10 == 0:
                bar.set_postfix(loss=f"{result.recent_loss():.3f}")
    result.seconds = time.perf_counter() - start
    if model is not None:
        model.eval()
    return result


def update(optimizer, loss, parameters=None, max_norm: float | None = None, schedule=None) -> float:
    """One optimizer update from `loss` (zero the gradients, backward, clip `parameters` to `max_norm`
    when given, step, then `schedule`); returns the loss as a float."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    optimizer.step()
    if schedule is not None:
        schedule.step()
    return loss.item()


def write_metrics(folder: str | Path, metrics: dict) -> None:
    (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def read_metrics(folder: str | Path) -> dict:
    return json.loads((Path(folder) / METRICS_FILE).read_text(encoding="utf-8"))
