"""vlmforge: build, train, evaluate, serve and ship your own vision-language model.

    model, processor = vlmforge.load("my-vlm")

Imports are lazy so that `import vlmforge` (and `vlmforge --help`) does not import torch.
"""

__version__ = "0.1.0"


def load(path, dtype=None, device=None):
    """Load a VLM folder as (model, processor); see `vlmforge.model.load.load`."""
    from vlmforge.model.load import load as _load

    return _load(path, dtype=dtype, device=device)


def build_vlm(config):
    """Compose a VLM from a `vlmforge.model.build.BuildConfig`; returns (model, processor)."""
    from vlmforge.model.build import build_vlm as _build

    return _build(config)
