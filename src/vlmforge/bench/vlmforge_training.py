"""vlmforge's side of the training benchmark: the trainer's own set-up, data plan and step.

Nothing is re-implemented: a `Trainer` is set up from a recipe exactly as `vlmforge train` does
(frozen vision under the LoRA wrapper, projector + LoRA trainable, length-grouped global batches
from exact token lengths, bf16 autocast where the hardware has it, the token-sum loss computing
the LM head only on trained positions), then its `batches` go through `step` +
`optimizer_step`, the public calls `Trainer.run` makes.
"""

from __future__ import annotations

from pathlib import Path

from vlmforge.bench.configs import BenchConfig
from vlmforge.bench.flops import ModelShape
from vlmforge.bench.machine import resident_bytes
from vlmforge.bench.training_run import TrainingRun, TrainingSide
from vlmforge.train.recipe import Recipe


def bench_recipe(config: BenchConfig, model_dir: str | Path, data_path: str | Path, output_dir: str | Path,
                 cuda: bool, precision: str = "auto") -> Recipe:
    """The recipe the benchmark trains with: instruct-lora's parts, the config's shapes, LoRA dropout 0 on CPU."""
    recipe = Recipe()
    recipe.model.path = str(model_dir)
    recipe.data.paths = [str(data_path)]
    recipe.data.max_length = config.max_length
    recipe.trainable.vision, recipe.trainable.projector, recipe.trainable.llm = "frozen", "full", "lora"
    recipe.lora.rank, recipe.lora.alpha = config.lora_rank, config.lora_alpha
    recipe.lora.dropout = 0.05 if cuda else 0.0  # dropout's RNG costs ~16 % of a CPU step
    train = recipe.train
    train.output_dir = str(output_dir)
    train.max_steps, train.batch_size, train.grad_accum = config.steps, config.batch_size, config.grad_accum
    train.precision, train.export = precision, False
    train.save_steps = train.log_steps = config.steps
    train.device = "cuda" if cuda else "cpu"
    return recipe


class VlmforgeSide(TrainingSide):
    """A set-up `Trainer`, stepped one optimizer step at a time through its own loader."""

    def __init__(self, recipe: Recipe, base_model=None):
        from vlmforge.train.loop import Trainer

        self.trainer = Trainer(recipe, loaded=base_model)
        self.trainer.setup()
        self.device = self.trainer.accelerator.device
        shape = ModelShape.from_model(self.trainer.base_model, recipe.lora.rank, recipe.lora.target_modules)
        self.run = TrainingRun("vlmforge", "bf16" if self.trainer.bf16 else "fp32", shape)
        self.run.trainable_params = sum(p.numel() for p in self.trainer.model.parameters() if p.requires_grad)
        self.batches = iter(self.trainer.batches(0))

    def warmup(self) -> float:
        return self.step(self.trainer.step_batches[0])  # the plan puts the longest global batch first

    def load(self) -> list:
        return next(self.batches)

    def step(self, micro_batches: list) -> float:
        stats = self.trainer.step(micro_batches)
        self.trainer.optimizer_step(stats)
        return stats["loss"]

    def resident_bytes(self) -> int:
        return resident_bytes(self.trainer.model, self.trainer.optimizer)

    def trained_sample_indices(self) -> list[int]:
        """Dataset indices of the samples the timed steps train on (the baseline trains on the same ones)."""
        plan = self.trainer.plan
        return [int(index) for step in range(self.trainer.recipe.train.max_steps) for index in plan.batch_for_step(step)]
