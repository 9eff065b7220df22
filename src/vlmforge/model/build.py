"""`build_vlm`: join a vision folder and an LLM folder into one transformers Llava folder.

The result is exactly transformers' Llava family (vision tower → 2-layer GELU MLP → causal LM), so
`AutoModelForImageTextToText` / `AutoProcessor` load it natively, without vlmforge and without
`trust_remote_code`. The LLM's tokenizer gains an `<image>` token (embeddings resized) and keeps its
own chat template; the processor expands each `<image>` into as many tokens as the projector emits.
That count is measured on the tower (see `parts.py`), and one forward of the composed model on a
blank image runs before anything is returned, so a folder that cannot run is never written.

`save_vlm` writes the checkpoint key layout of the Llava checkpoints published on the Hub
(`language_model.model.*`, `language_model.lm_head.*`, `multi_modal_projector.*`,
`vision_tower.vision_model.*` for CLIP / SigLIP towers): transformers 5 converts it on load, and
engines that follow the published layout (vLLM, older transformers) read it as it is.

Run: `vlmforge build --vision VISION_DIR --llm LLM_DIR --out my-vlm`
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from vlmforge.config import option
from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER, multimodal_chat_template
from vlmforge.errors import ModelError
from vlmforge.model.parts import (VisionPart, first_line, load_language_part, load_vision_part,
                                  read_language_config, read_vision_config)
from vlmforge.model.qwen1 import native_llm_path

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """How to compose the VLM; every field is a `vlmforge build` flag."""

    vision: str = option("", "vision model folder or hub id (CLIP, SigLIP, DINOv2, ViT)")
    llm: str = option("", "causal LM folder or hub id (Qwen2/2.5/3, Llama, ...)")
    out: str = option("", "output folder")
    projector: str = option("mlp", "mlp (Linear → GELU → Linear) or linear")
    feature_layer: int | None = option(None, "vision hidden layer fed to the projector; default -2 for CLIP, -1 otherwise")
    keep_cls: bool = option(False, "keep the CLS token of towers that have one (CLIP, DINOv2, ViT; dropped by default, "
                                   "as LLaVA does)")
    dtype: str = option("auto", "auto keeps the LLM's dtype; or float32 / bfloat16 / float16")
    seed: int = option(0, "seed for the projector's initialisation")
    images_after_text: bool = option(False, "chat template puts a user turn's images after its text (for data "
                                            "with the question before the image); default: parts in the order given")
    arch: str = option("llava", "llava (one fixed-size image, one token per patch) or idefics3 (tiles + global view, "
                                "pixel-shuffle connector; SigLIP towers)")
    pixel_shuffle: int = option(2, "idefics3: s x s patches become one token (1, 2, 3 or 4)")
    tile_size: int | None = option(None, "idefics3: tile side in pixels; default the tower's image size")
    longest_edge: int | None = option(None, "idefics3: images are resized so their longest side is this, then tiled; "
                                             "default 2 x tile size")


def _resolve_dtype(name: str, llm_dtype):
    import torch

    if name == "auto":
        return llm_dtype
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelError(f"unknown dtype '{name}' (use auto, float32, bfloat16 or float16)") from None


def add_image_token(tokenizer) -> int:
    """Make `<image>` a special token of the tokenizer; returns its id."""
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    tokenizer.image_token = IMAGE_PLACEHOLDER
    return tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)


def image_tokens_per_image(vision: VisionPart, keep_cls: bool) -> int:
    """How many features (= `<image>` tokens) one image yields after feature selection.

    Llava's "default" selection drops only the first token (CLS); registers stay as image tokens.
    """
    return vision.num_patches + vision.num_prefix_tokens - (1 if vision.has_cls_token and not keep_cls else 0)


def make_llava_config(vision: VisionPart, llm_config, cfg: BuildConfig, image_token_id: int):
    from transformers import LlavaConfig

    feature_layer = cfg.feature_layer
    if feature_layer is None:
        feature_layer = -2 if vision.has_cls_token else -1
    drop_cls = vision.has_cls_token and not cfg.keep_cls
    if cfg.projector not in ("mlp", "linear"):
        raise ModelError(f"unknown projector '{cfg.projector}' (use mlp or linear)")
    return LlavaConfig(
        vision_config=vision.model.config,
        text_config=llm_config,
        image_token_index=image_token_id,
        image_seq_length=image_tokens_per_image(vision, cfg.keep_cls),
        # "linear" keeps Llava's two Linear layers with no activation between them: one linear map.
        projector_hidden_act="gelu" if cfg.projector == "mlp" else "linear",
        vision_feature_select_strategy="default" if drop_cls else "full",
        vision_feature_layer=feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(llm_config, "tie_word_embeddings", False)),
    )


def make_processor(vision: VisionPart, tokenizer, cfg: BuildConfig):
    from transformers import LlavaProcessor

    drop_cls = vision.has_cls_token and not cfg.keep_cls
    return LlavaProcessor(
        image_processor=vision.image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default" if drop_cls else "full",
        chat_template=multimodal_chat_template(tokenizer.chat_template, cfg.images_after_text),
        image_token=IMAGE_PLACEHOLDER,
        num_additional_image_tokens=vision.num_prefix_tokens,
    )


def assemble_llava(vision_model, llm, llava_config):
    """A Llava model whose vision tower and language model ARE the loaded modules (no weight copies)."""
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    projector = LlavaMultiModalProjector(llava_config).to(llm.dtype)
    return compose_vlm(LlavaForConditionalGeneration, llava_config, llm, vision_tower=vision_model,
                       language_model=decoder_of(llm), multi_modal_projector=projector)


def compose_vlm(model_class, config, llm, **parts):
    """A `model_class` VLM made on the meta device whose `model.<name>` parts ARE the given modules and
    whose head is the LM's (tied to the input embeddings when the config says so): nothing is copied."""
    import torch

    with torch.device("meta"):
        vlm = model_class(config)
    for name, module in parts.items():
        setattr(vlm.model, name, module)
    vlm.lm_head = llm.get_output_embeddings()
    if config.tie_word_embeddings:
        vlm.lm_head.weight = vlm.get_input_embeddings().weight
    return vlm


def decoder_of(llm):
    """The causal LM's decoder stack (what a VLM's language model is), without its head."""
    return llm.get_decoder() if hasattr(llm, "get_decoder") else llm.base_model


def build_vlm(cfg: BuildConfig):
    """Compose the VLM described by `cfg`; returns (model, processor), not yet saved."""
    import torch

    if not cfg.vision or not cfg.llm:
        raise ModelError("both a vision model (--vision) and a language model (--llm) are needed")
    if cfg.arch not in ("llava", "idefics3"):
        raise ModelError(f"unknown --arch '{cfg.arch}' (use llava or idefics3)")
    read_vision_config(cfg.vision)  # fail fast on a wrong folder, before loading any weights
    cfg = replace(cfg, llm=native_llm_path(cfg.llm))  # first-generation Qwen: converted to Qwen2 (cached)
    read_language_config(cfg.llm)
    torch.manual_seed(cfg.seed)
    llm, tokenizer = load_language_part(cfg.llm)
    dtype = _resolve_dtype(cfg.dtype, llm.dtype)
    llm = llm.to(dtype)
    vision = load_vision_part(cfg.vision, dtype=dtype)
    if cfg.arch == "idefics3":
        from vlmforge.model.idefics3 import build_idefics3

        return build_idefics3(cfg, llm, tokenizer, vision)
    image_token_id = add_image_token(tokenizer)
    if image_token_id >= llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    llm_config = llm.config
    llm_config.vocab_size = llm.get_input_embeddings().weight.shape[0]
    llava_config = make_llava_config(vision, llm_config, cfg, image_token_id)
    vlm = assemble_llava(vision.model, llm, llava_config)
    vlm.config.pad_token_id = tokenizer.pad_token_id
    vlm.generation_config.pad_token_id = tokenizer.pad_token_id
    vlm.generation_config.eos_token_id = eos_ids(tokenizer, llm)
    processor = make_processor(vision, tokenizer, cfg)
    check_forward(vlm.eval(), processor, f"a Llava model with the '{vision.model_type}' vision tower",
                  planned_tokens=llava_config.image_seq_length)
    log.info(
        "built %s + %s: %d image tokens per image, projector %s, %s",
        vision.model_type, llm_config.model_type, llava_config.image_seq_length, cfg.projector, dtype,
    )
    return vlm, processor


def check_forward(vlm, processor, what: str, image_size=(64, 48), planned_tokens: int | None = None) -> None:
    """One forward of the composed model on a blank image with a templated prompt; `ModelError` if it fails.

    `what` names the model in the error ("a Llava model with the 'vit' vision tower"). `planned_tokens`:
    the image-token count training plans with (Llava's `image_seq_length`), which the processor must write
    and the tower + projector must fill (what the fusion checks).
    """
    import torch
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    try:
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=text, images=[Image.new("RGB", image_size)], return_tensors="pt")
        tokens = int((inputs["input_ids"] == vlm.config.image_token_id).sum())
        if planned_tokens is not None and tokens != planned_tokens:
            raise ValueError(f"the processor writes {tokens} image tokens, the config plans {planned_tokens}")
        inputs["pixel_values"] = inputs["pixel_values"].to(vlm.dtype)
        with torch.no_grad():
            logits = vlm(**inputs).logits  # (1, T, V)
    except Exception as error:  # whatever breaks here would break the saved folder's first use
        raise ModelError(f"{what} cannot run: {first_line(error)}") from None
    if tuple(logits.shape[:2]) != tuple(inputs["input_ids"].shape):
        raise ModelError(f"{what} cannot run: logits {tuple(logits.shape)} for input ids {tuple(inputs['input_ids'].shape)}")


def eos_ids(tokenizer, llm) -> list[int]:
    """End-of-turn ids: the LLM's own generation eos plus the tokenizer's eos."""
    ids = getattr(llm.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def save_vlm(model, processor, out: str | Path) -> Path:
    """Save model + processor into `out` in the published Llava layout, atomically.

    Written to a temporary folder and renamed when complete. Every folder vlmforge writes (build,
    export, the demo) goes through here, so all of them share one layout.
    """
    from vlmforge.utils.atomic import atomic_directory

    with atomic_directory(out) as tmp, _published_layout(model):
        model.save_pretrained(tmp)
        save_processor(processor, Path(tmp))
    return Path(out)


def save_processor(processor, folder: Path) -> None:
    """The processor as the published Llava folders hold it, which transformers 4.x reads too.

    transformers 5 nests the image processor in `processor_config.json`, keeps the chat template in
    `chat_template.jinja` only, names a plain fast tokenizer `TokenizersBackend` and lists added
    special tokens as `extra_special_tokens`; transformers 4.x looks for `preprocessor_config.json`
    and `chat_template.json`, refuses a nested image processor, knows that tokenizer as
    `PreTrainedTokenizerFast` and those tokens as `additional_special_tokens` (4.57 fails on a list
    under the other name). 5.x reads the 4.x names too, so both read this layout.
    """
    import json

    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)  # preprocessor_config.json
    _edit_json(folder / "processor_config.json", lambda config: config.pop("image_processor", None))
    _edit_json(folder / "tokenizer_config.json", _portable_tokenizer_config)
    if isinstance(processor.chat_template, str):
        template = json.dumps({"chat_template": processor.chat_template}, indent=2, ensure_ascii=False)
        (folder / "chat_template.json").write_text(template + "\n", encoding="utf-8")


def _edit_json(path: Path, edit) -> None:
    import json

    if not path.exists():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    edit(config)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _portable_tokenizer_config(config: dict) -> None:
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if isinstance(config.get("extra_special_tokens"), list):
        extra = config.pop("extra_special_tokens")
        config["additional_special_tokens"] = config.get("additional_special_tokens", []) + [
            token for token in extra if token not in config.get("additional_special_tokens", [])]


@contextmanager
def _published_layout(model):
    """Make `save_pretrained` write the key layout of the Llava checkpoints on the Hub.

    `save_pretrained` reverts the load-time key conversions it knows the model went through; a model
    composed in memory (or loaded from a folder in the new layout) has none recorded, so the
    towers' `vision_model.` prefix would be left out. Recording transformers' full conversion
    mapping for the model's classes makes the revert complete; loading converts it back.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping

    missing = object()
    recorded = getattr(model, "_weight_conversions", missing)
    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    try:
        yield
    finally:
        if recorded is missing:
            del model._weight_conversions
        else:
            model._weight_conversions = recorded
