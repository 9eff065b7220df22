"""The naive baseline: LoRA fine-tuning the way older VLM repos do it, in plain transformers + peft.

What it does differently from vlmforge, on purpose (each is common in those repos):
- random batches (no length grouping), each padded to its longest sample;
- fp32 throughout;
- the vision tower keeps `requires_grad=True` although it is not in the optimizer, so autograd
  records it and back-propagates through it every step;
- LoRA dropout 0.05;
- the loss through `labels=`: logits for every position (padding included), then a mean.
What it shares with vlmforge, so the comparison is fair: the model, LoRA rank / alpha / targets
(the LLM's linear layers only), the tokens (the data layer's `encode_conversation`), the images,
the global batch size, AdamW and gradient clipping, SDPA attention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlmforge.bench.flops import ModelShape
from vlmforge.bench.machine import resident_bytes
from vlmforge.bench.training_run import TrainingRun, TrainingSide
from vlmforge.data.tokenize import IGNORE_INDEX, encode_conversation
from vlmforge.errors import DataError


@dataclass
class BaselineSettings:
    batch_size: int
    grad_accum: int
    lora_rank: int
    lora_alpha: float
    lora_dropout: float = 0.05
    max_length: int = 2048
    lr: float = 1e-4
    seed: int = 0


class NaiveDataset:
    """All records read into memory; each item tokenised and its images opened and preprocessed on access."""

    def __init__(self, jsonl_path: str | Path, processor, num_image_tokens: int, max_length: int):
        self.root = Path(jsonl_path).parent
        with open(jsonl_path, encoding="utf-8") as handle:
            self.records = [json.loads(line) for line in handle if line.strip()]
        self.processor = processor
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        import torch
        from PIL import Image

        record = self.records[index]
        encoded = encode_conversation(record["messages"], self.processor.tokenizer, self.processor.image_token,
                                      self.num_image_tokens, self.max_length)
        if encoded is None:
            raise DataError(f"record {index} is longer than {self.max_length} tokens")
        item = {"input_ids": torch.tensor(encoded.input_ids), "labels": torch.tensor(encoded.labels)}
        if record.get("images"):
            images = [Image.open(self.root / path).convert("RGB") for path in record["images"]]
            item["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return item


def pad_to_longest(items: list[dict], pad_id: int) -> dict:
    """Right-pad a batch to its longest item; images concatenated in item order."""
    import torch

    longest = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)  # (B, T)
    for row, item in enumerate(items):
        length = len(item["input_ids"])
        input_ids[row, :length], labels[row, :length], attention_mask[row, :length] = item["input_ids"], item["labels"], 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    pixels = [item["pixel_values"] for item in items if "pixel_values" in item]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)  # (images, C, H, W)
    return batch


def naive_model(model, settings: BaselineSettings):
    """peft LoRA on the LLM's linear layers, projector trainable, vision left with autograd on; (model, optimizer)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from vlmforge.train.trainability import lora_target_regex

    model = model.float()
    lora = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      bias="none", target_modules=lora_target_regex(model, []))
    model = get_peft_model(model, lora)
    for name, parameter in model.named_parameters():
        if "multi_modal_projector" in name or "vision_tower" in name:
            parameter.requires_grad_(True)
    trained = [p for name, p in model.named_parameters() if p.requires_grad and "vision_tower" not in name]
    model.train()
    return model, torch.optim.AdamW(trained, lr=settings.lr)


def _loader(dataset, settings: BaselineSettings, pad_id: int):
    import torch

    generator = torch.Generator().manual_seed(settings.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=generator,
                                       drop_last=True, collate_fn=lambda items: pad_to_longest(items, pad_id))


class BaselineSide(TrainingSide):
    """The naive loop: a shuffled DataLoader over the given records, `labels=` loss, clip, AdamW step."""

    def __init__(self, model, processor, data_path: str | Path, indices: list[int], settings: BaselineSettings, device,
                 warmup_indices: list[int]):
        import torch

        self.model, self.optimizer = naive_model(model, settings)
        self.model.to(device)
        self.device, self.settings = device, settings
        config = self.model.get_base_model().config
        self.run = TrainingRun("baseline", "fp32", ModelShape.from_model(self.model, settings.lora_rank),
                               vision_trained=True, logits_on_all=True)
        self.run.trainable_params = sum(p.numel() for group in self.optimizer.param_groups for p in group["params"])
        records = NaiveDataset(data_path, processor, config.image_seq_length, settings.max_length)
        self.records, self.warmup_indices = records, warmup_indices
        self.pad_id = processor.tokenizer.pad_token_id or 0
        self.batches = iter(_loader(torch.utils.data.Subset(records, indices), settings, self.pad_id))

    def warmup(self) -> float:
        size = self.settings.batch_size
        items = [self.records[index] for index in self.warmup_indices]
        return self.step([pad_to_longest(items[i:i + size], self.pad_id) for i in range(0, len(items), size)])

    def load(self) -> list:
        return [next(self.batches) for _ in range(self.settings.grad_accum)]

    def step(self, micro_batches: list) -> float:
        import torch

        total = 0.0
        for batch in micro_batches:
            batch = {key: value.to(self.device) for key, value in batch.items()}
            loss = self.model(**batch).loss / len(micro_batches)  # `labels` in the batch: full logits, mean CE
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups for p in group["params"]], 1.0)
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)  # the vision tower's gradients too
        return total

    def resident_bytes(self) -> int:
        return resident_bytes(self.model, self.optimizer)
