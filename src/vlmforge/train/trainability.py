"""Which parameters learn: vision / projector / LLM each frozen, LoRA (peft) or full, and their groups.

LoRA targets only the language model (a regex on its module names): a plain
`target_modules=["q_proj", ...]` would also wrap the vision tower's attention.
"""

from __future__ import annotations

import re

from vlmforge.errors import ConfigError

# Llava's module names, then Idefics3's (`vlmforge build --arch idefics3`): the connector is the projector.
LANGUAGE_PREFIX = ("model.language_model.", "model.text_model.")
PROJECTOR_PREFIX = ("model.multi_modal_projector.", "model.connector.")
VISION_PREFIX = ("model.vision_tower.", "model.vision_model.")


def language_model(model):
    """The decoder inside a Llava (`language_model`) or Idefics3 (`text_model`) model."""
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner.text_model


def language_linear_names(model) -> list[str]:
    """Leaf names of every nn.Linear inside the LLM (q_proj, k_proj, ..., down_proj, whatever the family)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in language_model(model).named_modules()
             if isinstance(module, torch.nn.Linear)}
    return sorted(names)


def lora_target_regex(model, target_modules: list[str]) -> str:
    names = target_modules or language_linear_names(model)
    if not names:
        raise ConfigError("the language model has no linear layers to put LoRA on")
    alternatives = "|".join(re.escape(name) for name in names)
    return rf"^model\.(language_model|text_model)\..*\.({alternatives})$"


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """Wrap `model` with peft LoRA adapters on the LLM only; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=lora_target_regex(model, target_modules))
    return get_peft_model(model, config)


def _strip_peft_prefix(name: str) -> str:
    return name.removeprefix("base_model.model.")


def part_of(name: str) -> str:
    """'vision', 'projector' or 'llm' for a parameter name (peft prefix and lm_head included)."""
    name = _strip_peft_prefix(name)
    if name.startswith(VISION_PREFIX):
        return "vision"
    if name.startswith(PROJECTOR_PREFIX):
        return "projector"
    return "llm"


def set_trainable(model, vision: str, projector: str, llm: str, lora=None):
    """Freeze / unfreeze each part; with llm == "lora" wrap with peft first. Returns the (maybe wrapped) model."""
    if llm == "lora":
        model = apply_lora(model, lora.rank, lora.alpha, lora.dropout, lora.target_modules)
    for name, parameter in model.named_parameters():
        part = part_of(name)
        if part == "vision":
            parameter.requires_grad_(vision == "full")
        elif part == "projector":
            parameter.requires_grad_(projector == "full")
        elif llm == "lora":
            parameter.requires_grad_("lora_" in name)
        else:
            parameter.requires_grad_(llm == "full")
    return model


def trainable_state(model) -> dict:
    """Name → tensor of every trainable parameter (what a checkpoint needs to store)."""
    return {name: parameter.detach() for name, parameter in model.named_parameters() if parameter.requires_grad}


def parameter_groups(model, lr_projector: float, lr_llm: float, lr_vision: float, weight_decay: float) -> list[dict]:
    """AdamW groups per part; weight decay only on matrices (never on biases, norms or scalars)."""
    rates = {"projector": lr_projector, "llm": lr_llm, "vision": lr_vision}
    buckets: dict[tuple[str, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            decay = parameter.ndim >= 2 and weight_decay > 0
            buckets.setdefault((part_of(name), decay), []).append(parameter)
    return [
        {"params": params, "lr": rates[part], "weight_decay": weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_no_decay'}"}
        for (part, decay), params in sorted(buckets.items())
    ]


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total
