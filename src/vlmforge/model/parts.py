"""Load the two halves of a VLM from Hugging Face folders, with clear errors for the wrong folder.

A vision folder may hold a dual-tower model (`CLIPModel`, `SiglipModel`) or a vision-only one
(`CLIPVisionModel`, `SiglipVisionModel`, `Dinov2Model`, ...): only the vision tower is kept. Loading
goes through `from_pretrained`, so a hub id works wherever the hub is reachable.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vlmforge.errors import ModelError

log = logging.getLogger(__name__)

# Vision towers that put one extra (CLS) token in front of the patch tokens.
_CLS_TOWERS = {"clip_vision_model", "dinov2"}


@dataclass
class VisionPart:
    model: object  # a transformers vision model (CLIPVisionModel, SiglipVisionModel, ...)
    image_processor: object
    has_cls_token: bool
    patch_size: int
    image_size: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _require_folder(path: str, what: str) -> None:
    if "/" in path and not Path(path).exists() and path.startswith((".", "/", "~")):
        raise ModelError(f"{what} folder not found: {path}")
    if Path(path).exists() and not (Path(path) / "config.json").exists():
        raise ModelError(f"{path} has no config.json: it is not a Hugging Face model folder ({what} expected)")


def _auto_config(path: str, what: str):
    from transformers import AutoConfig

    _require_folder(path, what)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        if not Path(path).exists():
            raise ModelError(f"{what} not found: {path} is no folder, and not a hub id that can be loaded (offline?)") from None
        raise ModelError(f"cannot read the {what} config at {path}: {str(error).splitlines()[0]}") from None


def read_vision_config(path: str):
    """The vision tower's config of a vision folder; `ModelError` if the folder holds no ViT-style tower."""
    config = _auto_config(path, "vision model")
    vision_config = getattr(config, "vision_config", None) or config
    if getattr(vision_config, "patch_size", None) is None or getattr(vision_config, "image_size", None) is None:
        raise ModelError(
            f"{path} is a '{config.model_type}' model, not a vision model with patches "
            "(expected CLIP, SigLIP or another ViT-style image backbone)"
        )
    return vision_config


def read_language_config(path: str):
    """The config of a causal LM folder; `ModelError` if the folder is not a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = _auto_config(path, "language model")
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{path} is a '{config.model_type}' model, not a causal language model")
    return config


def load_vision_part(path: str, dtype=None) -> VisionPart:
    """Load the vision tower of a CLIP / SigLIP / other image backbone folder and its image processor."""
    from transformers import AutoImageProcessor, AutoModel

    vision_config = read_vision_config(path)
    if hasattr(vision_config, "vision_use_head"):
        vision_config.vision_use_head = False  # the pooling head's output is never used by the VLM
    with _quiet_transformers():  # a dual-tower folder's text tower is dropped on purpose: no load report
        model = AutoModel.from_pretrained(path, config=vision_config, dtype=dtype)
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"{path} has no usable image processor (preprocessor_config.json): {error}") from None
    return VisionPart(
        model=model,
        image_processor=image_processor,
        has_cls_token=vision_config.model_type in _CLS_TOWERS,
        patch_size=vision_config.patch_size,
        image_size=vision_config.image_size,
    )


def load_language_part(path: str, dtype=None):
    """Load a causal LM folder and its tokenizer; the tokenizer must carry a chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    read_language_config(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise ModelError(f"{path} has no usable tokenizer: {error}") from None
    if not tokenizer.chat_template:
        raise ModelError(
            f"the tokenizer in {path} has no chat template; use an instruct/chat model or add a chat_template"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer
