"""Load the two halves of a VLM from Hugging Face folders, with clear errors for the wrong folder.

A vision folder may hold a dual-tower model (`CLIPModel`, `SiglipModel`) or a vision-only one
(`CLIPVisionModel`, `SiglipVisionModel`, `Dinov2Model`, ...): only the vision tower is kept. Loading
goes through `from_pretrained`, so a hub id works wherever the hub is reachable.

How many tokens one image becomes is measured, not read from the config: the image processor runs
on a blank image and the tower on its output. A config's `image_size` can disagree with what the
processor makes (DINOv2 checkpoints say 518 and crop 224), and towers put 0 (SigLIP), 1 (CLIP, ViT,
DINOv2) or 1 + registers (DINOv2 with registers) tokens in front of their patches.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vlmforge.errors import ModelError

log = logging.getLogger(__name__)

# Why some towers cannot sit in a Llava model, with what to use instead (one line each).
_SIGLIP2_NAFLEX = ("SigLIP 2 NaFlex towers take variable-size patch sequences (spatial_shapes) that Llava cannot "
                   "pass; use a fixed-resolution SigLIP 2 checkpoint (model type 'siglip', e.g. "
                   "google/siglip2-so400m-patch14-384)")
_UNSUPPORTED_TOWERS = {"siglip2": _SIGLIP2_NAFLEX, "siglip2_vision_model": _SIGLIP2_NAFLEX}


@dataclass
class VisionPart:
    model: object  # a transformers vision model (CLIPVisionModel, SiglipVisionModel, Dinov2Model, ...)
    image_processor: object
    patch_size: int
    image_height: int  # the size the image processor makes, measured
    image_width: int
    num_prefix_tokens: int  # tokens the tower puts before its patches: CLS (+ registers), measured
    model_type: str

    @property
    def has_cls_token(self) -> bool:
        return self.num_prefix_tokens > 0

    @property
    def num_patches(self) -> int:
        return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)


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
        return AutoConfig.from_pretrained(path, trust_remote_code=False)  # never transformers' [y/N] prompt
    except (OSError, ValueError) as error:
        if not Path(path).exists():
            raise ModelError(f"{what} not found: {path} is no folder, and not a hub id that can be loaded (offline?)") from None
        if "custom code" in str(error):
            raise ModelError(remote_code_refusal(path)) from None
        raise ModelError(f"cannot read the {what} config at {path}: {str(error).splitlines()[0]}") from None


def remote_code_refusal(path: str) -> str:
    """One line for a folder that only loads by running its own Python files, which vlmforge never does."""
    return (f"{path} needs its own Python code to load (auto_map in config.json), and vlmforge never runs code from a "
            "model folder: use a model whose type transformers supports natively, or convert this one to such a type")


def read_vision_config(path: str):
    """The vision tower's config of a vision folder; `ModelError` if the folder holds no usable ViT-style tower."""
    config = _auto_config(path, "vision model")
    vision_config = getattr(config, "vision_config", None) or config
    for model_type in {config.model_type, vision_config.model_type}:
        if model_type in _UNSUPPORTED_TOWERS:
            raise ModelError(f"cannot use the '{model_type}' vision tower in {path}: {_UNSUPPORTED_TOWERS[model_type]}")
    if not isinstance(getattr(vision_config, "patch_size", None), int):
        raise ModelError(
            f"{path} is a '{config.model_type}' model, not a vision model with patches "
            "(expected CLIP, SigLIP, DINOv2, ViT or another ViT-style image backbone)"
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
    pixel_values = processed_blank_image(image_processor, vision_config.model_type)  # (1, 3, H, W)
    height, width = (int(side) for side in pixel_values.shape[2:])
    tokens = tower_sequence_length(model, pixel_values, vision_config.model_type)
    patches = (height // vision_config.patch_size) * (width // vision_config.patch_size)
    if tokens < patches:
        raise ModelError(f"cannot use the '{vision_config.model_type}' vision tower: it makes {tokens} tokens for "
                         f"{patches} patches of {vision_config.patch_size} pixels (Llava needs one token per patch)")
    return VisionPart(model=model, image_processor=image_processor, patch_size=vision_config.patch_size,
                      image_height=height, image_width=width, num_prefix_tokens=tokens - patches,
                      model_type=vision_config.model_type)


def processed_blank_image(image_processor, model_type: str):
    """The processor's pixel values for one blank image, (1, 3, H, W); `ModelError` unless every image gets that size.

    Llava turns each image into a fixed number of tokens, so the processor must resize/crop every
    image to one size. Two blank images of different shapes check that it does.
    """
    from PIL import Image

    outputs = []
    for size in ((640, 480), (300, 500)):
        try:
            outputs.append(image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["pixel_values"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"the '{model_type}' image processor cannot process an image: {first_line(error)}") from None
    shapes = {tuple(pixel_values.shape) for pixel_values in outputs}
    if len(shapes) > 1 or outputs[0].dim() != 4:
        raise ModelError(f"cannot use the '{model_type}' vision tower: its image processor does not make one fixed "
                         f"image size (pixel_values {sorted(shapes)}), and Llava needs a fixed number of tokens per image")
    return outputs[0]


def tower_sequence_length(model, pixel_values, model_type: str) -> int:
    """How many tokens the tower outputs for `pixel_values` (1, 3, H, W): one cheap forward."""
    import torch

    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            hidden_states = model(pixel_values=pixel_values.to(dtype), output_hidden_states=True).hidden_states
    except Exception as error:  # any failure here means the tower cannot run on what its processor makes
        height, width = pixel_values.shape[2:]
        raise ModelError(f"cannot use the '{model_type}' vision tower on the {height}x{width} images its "
                         f"image processor makes: {first_line(error)}") from None
    if not hidden_states or hidden_states[-1].dim() != 3:
        raise ModelError(f"cannot use the '{model_type}' vision tower: it returns no (batch, tokens, features) "
                         "hidden states")
    return int(hidden_states[-1].shape[1])


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
