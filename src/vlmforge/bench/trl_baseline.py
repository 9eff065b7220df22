"""The TRL baseline: Hugging Face TRL's `SFTTrainer`, the peer a user would pick for VLM LoRA SFT.

    side = TrlSide(model, processor, data_path, indices, settings, device, warmup_indices, work_dir)

Configured the way TRL's docs set up vision-language LoRA SFT (docs/performance.md lists each
setting and why):
- a conversational dataset with an `images` column (`datasets.Image`, decoded on access) and
  `messages` whose first user turn gets the image block; TRL's own `DataCollatorForVisionLanguageModeling`
  renders it with the processor's chat template, tokenises, processes the images and pads;
- `assistant_only_loss=True` with a training chat template carrying `{% generation %}` markers
  (TRL's way for a template it does not ship: the same ChatML, the answer and its `<|im_end|>` marked);
- peft LoRA through `peft_config` (rank, alpha, dropout and target modules as vlmforge's), the
  projector trained in full through `modules_to_save`;
- no gradient checkpointing (TRL's default is on; vlmforge's step does not checkpoint either), the
  same precision as vlmforge's side (`bf16`), TRL's fused LM head (its default), its random sampler.

An Idefics3 model (`vlmforge bench --config small-idefics3`) goes through the same path, with one
transformers bug worked around: `Idefics3Processor` turns the `text_replacement_offsets` that
`apply_chat_template` asks for (to place the assistant masks past expanded images) into tensors and
fails; the processor here keeps them as lists, as every other processor does (`keep_offsets_as_lists`).

Each optimizer step is TRL's own code path, driven one step at a time the way `Trainer._run_epoch`
does: `get_batch_samples` (the collator runs here), `training_step` per micro-batch (forward
through TRL's `compute_loss`, backward through accelerate), gradient clipping, `optimizer.step`,
the scheduler, `zero_grad`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vlmforge.bench.flops import ModelShape
from vlmforge.bench.machine import resident_bytes
from vlmforge.bench.training_run import TrainingRun, TrainingSide
from vlmforge.errors import ConfigError

# The ChatML turn of the chat template `vlmforge build` writes; the training variant marks the answer.
CHATML_TURN = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
CHATML_TRAINING_TURN = (
    "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\\n' }}{%- generation -%}"
    "{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}" + CHATML_TURN + "{%- endif -%}"
)
IMAGE_MARKER = re.compile(r"<image>\n?")


@dataclass
class PeerSettings:
    """What both sides share: batch, LoRA, learning rates, schedule, clipping, precision."""

    batch_size: int
    grad_accum: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lr_projector: float
    lr_llm: float
    warmup_ratio: float
    max_grad_norm: float
    max_length: int
    bf16: bool
    steps: int
    seed: int = 0


def projector_name(model) -> str:
    """The projector's module name (Llava's `multi_modal_projector`, Idefics3's `connector`), for `modules_to_save`."""
    from vlmforge.train.trainability import PROJECTOR_PREFIX

    names = {name for name, _ in model.named_modules()}
    return next(prefix.removeprefix("model.").rstrip(".") for prefix in PROJECTOR_PREFIX if prefix.rstrip(".") in names)


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def training_chat_template(chat_template: str) -> str:
    """The processor's ChatML template with `{% generation %}` around each answer and its `<|im_end|>`."""
    if CHATML_TURN not in chat_template:
        raise ConfigError("the TRL baseline needs the ChatML chat template `vlmforge build` writes "
                          "(to mark the answers for assistant_only_loss)")
    return chat_template.replace(CHATML_TURN, CHATML_TRAINING_TURN)


def trl_messages(messages: list[dict]) -> list[dict]:
    """vlmforge messages → TRL's: the `<image>` marker removed from the text (TRL puts the image block first
    in the first user turn, and the template renders it as `<image>` + newline: the same text)."""
    return [{**message, "content": IMAGE_MARKER.sub("", message["content"])} if message["role"] == "user" else dict(message)
            for message in messages]


def trl_dataset(data_path: str | Path):
    """The bench JSONL as the `datasets.Dataset` TRL's VLM docs use: `messages` and `images` (decoded on access)."""
    import datasets

    bars_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the library does not print; the command draws its own bars
    try:
        return _dataset(datasets, data_path)
    finally:
        if bars_on:
            datasets.enable_progress_bars()


def _dataset(datasets, data_path: str | Path):
    root = Path(data_path).parent
    with open(data_path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    columns = {"messages": [trl_messages(record["messages"]) for record in records],
               "images": [[str(root / path) for path in record.get("images", [])] for record in records]}
    sequence = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Dataset.from_dict(columns).cast_column("images", sequence(datasets.Image()))


def sft_config(settings: PeerSettings, output_dir: str | Path, use_cpu: bool):
    """TRL's `SFTConfig` for this run (each choice: docs/performance.md)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir), per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, max_steps=settings.steps + 1,
        learning_rate=settings.lr_llm, lr_scheduler_type="cosine", warmup_steps=settings.warmup_ratio,
        weight_decay=0.0, max_grad_norm=settings.max_grad_norm, bf16=settings.bf16, fp16=False,
        gradient_checkpointing=False, assistant_only_loss=True, max_length=settings.max_length,
        dataloader_num_workers=0, report_to="none", logging_strategy="no", save_strategy="no",
        seed=settings.seed, use_cpu=use_cpu, remove_unused_columns=False,
    )


def keep_offsets_as_lists(processor) -> None:
    """Make `processor` leave `text_replacement_offsets` unconverted, as `ProcessorMixin.__call__` does.

    transformers 5.24's `Idefics3Processor.__call__` converts every output to tensors, these offsets
    (a list of dicts per sample) included, so `apply_chat_template(..., return_assistant_tokens_mask=True)`
    (TRL's `assistant_only_loss`) raises. The call is run without tensors, then converted skipping them.
    """
    from transformers import ProcessorMixin

    original = type(processor)
    if original.__call__ is ProcessorMixin.__call__:  # Llava's: the generic call already skips them
        return

    class ListOffsetsProcessor(original):
        def __call__(self, *args, return_tensors=None, **kwargs):
            output = original.__call__(self, *args, **kwargs)
            output.convert_to_tensors(tensor_type=return_tensors, skip_tensor_conversion=self.skip_tensor_conversion)
            return output

    processor.__class__ = ListOffsetsProcessor


class TrlSide(TrainingSide):
    """`SFTTrainer` set up as its docs recommend for VLM LoRA, stepped one optimizer step at a time."""

    def __init__(self, model, processor, data_path: str | Path, indices: list[int], settings: PeerSettings, device,
                 warmup_indices: list[int], output_dir: str | Path):
        from peft import LoraConfig
        from trl import SFTTrainer

        from vlmforge.train.trainability import lora_target_regex

        processor.chat_template = training_chat_template(processor.chat_template)
        keep_offsets_as_lists(processor)
        self.settings, self.device = settings, device
        self.dataset = trl_dataset(data_path)
        lora = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          bias="none", target_modules=lora_target_regex(model, []),
                          modules_to_save=[projector_name(model)], task_type="CAUSAL_LM")
        self.trainer = SFTTrainer(model=model, args=sft_config(settings, output_dir, device.type == "cpu"),
                                  train_dataset=self.dataset.select(indices), processing_class=processor,
                                  peft_config=lora)
        self._prepare()
        size, collate = settings.batch_size, self.trainer.data_collator
        self.warmup_batches = [collate([self.dataset[i] for i in warmup_indices[start:start + size]])
                               for start in range(0, len(warmup_indices), size)]
        self.run = TrainingRun("trl", "bf16" if settings.bf16 else "fp32",
                               ModelShape.from_model(model, settings.lora_rank),
                               logits_on_all=device.type != "cuda")  # TRL's fused head scores only trained positions with Triton
        self.run.trainable_params = sum(p.numel() for p in self.trainer.model.parameters() if p.requires_grad)

    def _prepare(self) -> None:
        """What `Trainer.train` does before its first step: the optimizer (AdamW of TRL's default kind, with
        vlmforge's per-part learning rates), accelerate's `prepare`, the scheduler, the loader."""
        from transformers import Trainer

        from vlmforge.train.trainability import parameter_groups

        trainer, settings = self.trainer, self.settings
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
        optimizer_kwargs.pop("lr", None)
        groups = parameter_groups(trainer.model, settings.lr_projector, settings.lr_llm, settings.lr_llm, 0.0)
        for group in groups:
            group.pop("name")
        trainer.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        self.model, trainer.optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
        trainer.model_wrapped = self.model
        trainer.create_scheduler(num_training_steps=settings.steps + 1)
        self.batches = iter(trainer.get_train_dataloader())
        self.model.train()

    def warmup(self) -> float:
        # the trained tokens of the whole step, as `get_batch_samples` counts them
        self.num_items = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in self.warmup_batches)
        return self.step(self.warmup_batches)

    def load(self) -> list:
        """The collator runs here (TRL tokenises and processes images per batch): timed with the step."""
        batches, self.num_items = self.trainer.get_batch_samples(self.batches, self.settings.grad_accum, self.device)
        return batches

    def step(self, micro_batches: list) -> float:
        import torch

        trainer = self.trainer
        trainer.current_gradient_accumulation_steps = len(micro_batches)
        total = torch.zeros(())
        for batch in micro_batches:
            total += trainer.training_step(self.model, batch, self.num_items).detach().float().cpu()
        if trainer.args.max_grad_norm > 0:
            trainer.accelerator.clip_grad_norm_(self.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        self.model.zero_grad()
        trainer.state.global_step += 1
        return float(total)

    def resident_bytes(self) -> int:
        return resident_bytes(self.model, self.trainer.optimizer)
