"""Evaluation during training: the recipe's `eval` section, run as a trainer callback.

    train(recipe, callbacks=[make_eval_callback(recipe)])   # what `vlmforge train` does when eval.data is set

At every log step where `step % eval.every == 0` (every = 0: only the last step), and at the last
step, the callback measures the model being trained on the first `eval.max_samples` ids of
`eval.data`: `eval_loss` (teacher forcing, the training loss: summed over trained tokens / their
count) and the generation metrics (`eval_exact_match`, `eval_CIDEr-D`, ...). Predictions and the
report go to OUTPUT_DIR/eval/step-N/. Only the main process evaluates; the others wait for it at
the next collective step (fine under DDP; FSDP/DeepSpeed-sharded models are not supported here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlmforge.errors import ConfigError
from vlmforge.eval.evaluate import load_eval_set
from vlmforge.train.callbacks import TrainingView
from vlmforge.train.recipe import Recipe

logger = logging.getLogger(__name__)


def make_eval_callback(recipe: Recipe):
    """A `callback(view, step) -> dict | None` for `vlmforge.train.loop.train` (`view`: a `train.callbacks.TrainingView`);
    checks `eval.data` now."""
    return EvalCallback(recipe)


def is_due(step: int, every: int, max_steps: int) -> bool:
    """Evaluate at multiples of `every` (0: never before the end) and at the last step."""
    return step == max_steps or (every > 0 and step % every == 0)


class EvalCallback:
    """Runs the held-out evaluation at the due steps; returns `eval_*` metrics for the log row."""

    def __init__(self, recipe: Recipe):
        settings = recipe.eval
        if not settings.data:
            raise ConfigError("eval.data is empty: give a held-out JSONL file (--eval.data test.jsonl)")
        for key in ("max_samples", "max_new_tokens", "batch_size"):
            if getattr(settings, key) < 1:
                raise ConfigError(f"eval.{key} must be >= 1, got {getattr(settings, key)}")
        if settings.every < 0:
            raise ConfigError(f"eval.every must be >= 0, got {settings.every}")
        if settings.every % recipe.train.log_steps:
            logger.warning("eval.every=%d is not a multiple of train.log_steps=%d: evaluation runs only at steps "
                           "that are both (and at the end)", settings.every, recipe.train.log_steps)
        self.recipe = recipe
        self.eval_set = load_eval_set(settings.data, settings.max_samples)  # bad data fails now, not at step N
        self.image_roots = [*recipe.data.image_roots, str(Path(settings.data).parent)]
        self.dataset = None  # the eval file as a training dataset, made at the first evaluation

    def __call__(self, view: TrainingView, step: int) -> dict | None:
        if not is_due(step, self.recipe.eval.every, self.recipe.train.max_steps):
            return None
        if not view.is_main:
            return {}
        model = view.peft_model
        was_training = model.training
        model.eval()
        try:
            return self._evaluate(model, view, step)
        finally:
            model.train(was_training)

    def _evaluate(self, model, view: TrainingView, step: int) -> dict:
        import torch

        from vlmforge.eval.evaluate import evaluate_model

        settings = self.recipe.eval
        loss = held_out_loss(model, view.processor, self._samples(), settings.batch_size,
                             self.recipe.data.max_length, self.recipe.data.too_long, view.bf16)
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=view.bf16):  # as in training
            result = evaluate_model(model, view.processor, settings.data, self.output_dir(step),
                                    batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                                    max_samples=settings.max_samples, image_roots=self.image_roots,
                                    progress=False, java_metrics=False)
        row = {} if loss is None else {"eval_loss": loss}
        row.update({f"eval_{name}": value for name, value in result["metrics"].items()})
        return row

    def output_dir(self, step: int) -> Path:
        return Path(self.recipe.train.output_dir) / "eval" / f"step-{step}"

    def _samples(self) -> list:
        """The evaluated records as training samples (images decoded); bad ones are None and skipped."""
        import numpy as np

        from vlmforge.data.dataset import BadSampleBudget, ConversationDataset

        if self.dataset is None:
            self.dataset = ConversationDataset([self.eval_set.path], image_roots=self.image_roots,
                                               budget=BadSampleBudget(max_fraction=1.0))  # eval data never stops a run
        rows = np.searchsorted(self.dataset.indexes[0].line_numbers, self.eval_set.lines)  # line number → row
        return [self.dataset[int(row)] for row in rows]


def held_out_loss(model, processor, samples: list, batch_size: int, max_length: int, too_long: str = "drop",
                  bf16: bool = False) -> float | None:
    """Training loss over `samples` (teacher forcing): summed cross-entropy / trained tokens; None without any."""
    import torch

    from vlmforge.data.tokenize import image_tokens_per_image
    from vlmforge.train.batching import Collator
    from vlmforge.train.steps import summed_loss, trained_token_count

    collator = Collator(processor, image_tokens_per_image(processor), max_length, too_long)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(samples), batch_size):
        batch = collator(samples[start:start + batch_size])
        if batch is None:
            continue
        tokens += trained_token_count(batch)
        batch = {key: value.to(device) for key, value in batch.items()}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            total += float(summed_loss(model, batch))
    return total / tokens if tokens else None
