"""The one default device of the commands that load a model: chat, eval, serve and bench.

    device = resolve_device(config.device)   # "" or None: cuda when torch sees a GPU, else cpu

Training follows the same rule through `train.device` (empty: cuda when available).
"""

from __future__ import annotations

from vlmforge.errors import ConfigError

DEVICE_HELP = "cpu, cuda, cuda:1, ...; empty: cuda when torch sees a GPU, else cpu"


def resolve_device(asked: str | None = None) -> str:
    """The device asked for, else cuda when available, else cpu; asking for cuda without a GPU is a `ConfigError`."""
    import torch

    name = asked or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but torch sees no CUDA GPU")
    return name
