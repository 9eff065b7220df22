"""What a training callback sees: a small read-only view of the run, not the `Trainer`.

    def my_callback(view: TrainingView, step: int) -> dict | None:
        if view.is_main and step % 100 == 0:
            return {"my_metric": measure(view.peft_model, view.processor)}   # merged into the log row

    train(recipe, callbacks=[my_callback])

Callbacks run after a logged step, on a forked random-number generator (whatever they draw never
changes training's stream), on every rank. What they return is their log: the dict goes into that
step's row of metrics.jsonl (and TensorBoard). The view holds what evaluation needs and nothing
that steers the loop (no optimizer, schedule or loader), so a callback cannot change the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainingView:
    """The run between two steps, as a callback sees it."""

    step: int  # optimizer steps done
    peft_model: object  # the model unwrapped from DDP / compile, LoRA adapters included (what checkpoints save)
    processor: object
    is_main: bool  # rank 0: the one that should write files and evaluate
    bf16: bool  # training autocasts to bf16: evaluate the same way
    output_dir: Path  # the run folder
