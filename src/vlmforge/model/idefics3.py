"""`--arch idefics3`: a SigLIP tower + any causal LM composed as transformers' Idefics3 family.

Idefics3 reads a large image as square tiles of `tile_size` pixels plus a downscaled global view
(the native `Idefics3ImageProcessor`, `do_image_splitting`), and its connector merges each s×s block
of patch features into one token (pixel shuffle, `scale_factor` s) before one linear map into the
LM: a tile of (T/P)² patches becomes (T/P)²/s² tokens. `Idefics3Model` builds its text model from
`text_config` with `AutoModel`, so any causal LM transformers knows (Qwen2/3, Llama, ...) fits; its
weights live under `model.text_model`, the LM head at the top level.

Why Idefics3 and not SmolVLM's own model type: both are the same modules (SmolVLM's differ only by
video support and a chat template that assumes SmolVLM's tokenizer); Idefics3 is the family with no
assumptions about the tokenizer, and vLLM serves both.

The SigLIP tower's weights map one to one onto `Idefics3VisionTransformer` (same module names);
when `tile_size` differs from the tower's own image size the position-embedding grid is resized
(bicubic), as fine-tuning at another resolution does.
"""

from __future__ import annotations

import logging

from vlmforge.data.chat_templates import IMAGE_PLACEHOLDER, multimodal_chat_template
from vlmforge.errors import ModelError
from vlmforge.model.parts import VisionPart, first_line

log = logging.getLogger(__name__)

FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
MAX_GRID = 6  # the processor names tiles <row_1_col_1> ... <row_6_col_6>
SIGLIP_TOWERS = ("siglip_vision_model", "siglip")
PIXEL_SHUFFLE_SCALES = (1, 2, 3, 4)


def idefics3_tokens() -> list[str]:
    """Every token the Idefics3 processor writes around images; each must be one token of the vocabulary."""
    grid = [f"<row_{row}_col_{col}>" for row in range(1, MAX_GRID + 1) for col in range(1, MAX_GRID + 1)]
    return [FAKE_IMAGE_TOKEN, IMAGE_PLACEHOLDER, END_OF_UTTERANCE, GLOBAL_IMAGE_TOKEN, *grid]


def add_idefics3_tokens(tokenizer) -> int:
    """Add the image-layout tokens as special tokens (those missing); returns the `<image>` id."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in idefics3_tokens() if token not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.image_token = IMAGE_PLACEHOLDER
    return tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)


def tile_geometry(vision: VisionPart, tile_size: int | None, scale: int) -> tuple[int, int]:
    """(tile size in pixels, image tokens per tile); `ModelError` for a combination the connector cannot shuffle."""
    if vision.model_type not in SIGLIP_TOWERS:
        raise ModelError(f"--arch idefics3 needs a SigLIP vision tower (its weights map onto Idefics3's vision model); "
                         f"got '{vision.model_type}'")
    if scale not in PIXEL_SHUFFLE_SCALES:
        raise ModelError(f"--pixel-shuffle must be one of {', '.join(map(str, PIXEL_SHUFFLE_SCALES))}; got {scale}")
    tile = tile_size or vision.image_height
    side = tile // vision.patch_size  # patches per tile side
    if tile <= 0 or tile % vision.patch_size or side % scale:
        raise ModelError(f"--tile-size {tile} must be a multiple of patch size x pixel shuffle = "
                         f"{vision.patch_size} x {scale} = {vision.patch_size * scale} (e.g. "
                         f"{max(1, round(tile / (vision.patch_size * scale))) * vision.patch_size * scale})")
    return tile, (side // scale) ** 2


def idefics3_vision_model(vision: VisionPart, tile: int):
    """An `Idefics3VisionTransformer` holding the SigLIP tower's weights, for tiles of `tile` pixels."""
    from transformers import Idefics3VisionConfig, Idefics3VisionTransformer

    source = vision.model.config
    config = Idefics3VisionConfig(
        hidden_size=source.hidden_size, intermediate_size=source.intermediate_size,
        num_hidden_layers=source.num_hidden_layers, num_attention_heads=source.num_attention_heads,
        num_channels=source.num_channels, image_size=tile, patch_size=source.patch_size,
        hidden_act=source.hidden_act, layer_norm_eps=source.layer_norm_eps, attention_dropout=source.attention_dropout,
    )
    tower = Idefics3VisionTransformer(config).to(vision.model.dtype)
    state = {key: value for key, value in _siglip_transformer(vision.model).state_dict().items()
             if not key.startswith("head.")}
    state["embeddings.position_embedding.weight"] = _resized_positions(
        state["embeddings.position_embedding.weight"], tile // source.patch_size)
    state.pop("embeddings.position_ids", None)
    missing, unexpected = tower.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"the SigLIP tower's weights do not map onto Idefics3's vision model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return tower


def _siglip_transformer(model):
    """The `SiglipVisionTransformer` inside a `SiglipVisionModel` / `SiglipModel`."""
    return getattr(model, "vision_model", model)


def _resized_positions(weight, side: int):
    """(side², D) position embeddings from a square (n², D) grid, resized bicubically when n != side."""
    import torch

    count, dim = weight.shape
    old = int(round(count ** 0.5))
    if old * old != count:
        raise ModelError(f"the SigLIP tower has {count} position embeddings, not a square grid")
    if old == side:
        return weight
    grid = weight.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, n, n)
    grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(side * side, dim).to(weight.dtype)


def make_idefics3_config(vision_model, llm_config, image_token_id: int, scale: int):
    from transformers import Idefics3Config

    config = Idefics3Config(
        vision_config=vision_model.config, text_config=llm_config, image_token_id=image_token_id,
        scale_factor=scale, tie_word_embeddings=bool(getattr(llm_config, "tie_word_embeddings", False)),
        pad_token_id=llm_config.pad_token_id,
    )
    return config


def make_idefics3_processor(vision: VisionPart, tokenizer, tile: int, longest_edge: int, tokens_per_tile: int,
                            images_after_text: bool = False):
    """The native Idefics3 processor: tiles of `tile` pixels after resizing the longest side to `longest_edge`."""
    from transformers import Idefics3Processor

    source = vision.image_processor
    image_processor = _image_processor_class()(
        do_image_splitting=True, size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile},
        image_mean=list(source.image_mean), image_std=list(source.image_std),
        do_convert_rgb=True, do_pad=True,
    )
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens_per_tile,
        chat_template=multimodal_chat_template(tokenizer.chat_template, images_after_text),
    )


def _image_processor_class():
    """The Idefics3 image processor class `AutoImageProcessor` picks on this machine (PIL without torchvision)."""
    import transformers

    try:
        import torchvision  # noqa: F401
        return transformers.Idefics3ImageProcessor
    except ImportError:
        return transformers.Idefics3ImageProcessorPil


def assemble_idefics3(tower, llm, config):
    """An Idefics3 model whose text model IS the loaded LM's decoder (no weight copies)."""
    import torch
    from transformers import Idefics3ForConditionalGeneration
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    from vlmforge.model.build import compose_vlm, decoder_of

    connector = Idefics3Connector(config).to(llm.dtype)
    torch.nn.init.normal_(connector.modality_projection.proj.weight, std=0.02)
    return compose_vlm(Idefics3ForConditionalGeneration, config, llm, vision_model=tower,
                       text_model=decoder_of(llm), connector=connector)


def build_idefics3(cfg, llm, tokenizer, vision: VisionPart):
    """Compose the Idefics3 VLM of `cfg` from a loaded LM + tokenizer and SigLIP tower; (model, processor)."""
    from vlmforge.model.build import check_forward, eos_ids

    tile, tokens_per_tile = tile_geometry(vision, cfg.tile_size, cfg.pixel_shuffle)
    longest_edge = cfg.longest_edge or 2 * tile
    if longest_edge < tile:
        raise ModelError(f"--longest-edge {longest_edge} is smaller than one tile ({tile})")
    if longest_edge > MAX_GRID * tile:
        raise ModelError(f"--longest-edge {longest_edge} makes more than {MAX_GRID} tiles a side "
                         f"(the processor names at most {MAX_GRID}); use at most {MAX_GRID * tile}")
    image_token_id = add_idefics3_tokens(tokenizer)
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    llm.config.vocab_size = llm.get_input_embeddings().weight.shape[0]
    tower = idefics3_vision_model(vision, tile)
    config = make_idefics3_config(tower, llm.config, image_token_id, cfg.pixel_shuffle)
    vlm = assemble_idefics3(tower, llm, config)
    vlm.generation_config.pad_token_id = tokenizer.pad_token_id
    vlm.generation_config.eos_token_id = eos_ids(tokenizer, llm)
    processor = make_idefics3_processor(vision, tokenizer, tile, longest_edge, tokens_per_tile, cfg.images_after_text)
    check_forward(vlm.eval(), processor, "the composed Idefics3 model", image_size=(96, 48))  # tiles + global view
    log.info("built idefics3: %s + %s, tiles of %d px (%d tokens each, pixel shuffle %d), longest edge %d",
             vision.model_type, llm.config.model_type, tile, tokens_per_tile, cfg.pixel_shuffle, longest_edge)
    return vlm, processor


def image_token_summary(config, preprocessor: dict | None = None) -> str:
    """One line saying how many image tokens an image becomes, for a Llava or an Idefics3 config (no weights).

    `preprocessor`: the folder's preprocessor_config.json (Idefics3: `size.longest_edge`, the tile size).
    """
    if getattr(config, "model_type", "") != "idefics3":
        return f"{config.image_seq_length} image tokens per image (llava: every image alike)"
    vision = config.vision_config
    tile = vision.image_size
    per_tile = (tile // vision.patch_size) ** 2 // config.scale_factor ** 2
    longest = int(((preprocessor or {}).get("size") or {}).get("longest_edge") or tile)
    grid = -(-longest // tile)  # tiles a side at most
    most = (grid * grid + (1 if grid > 1 else 0)) * per_tile
    return (f"{per_tile} image tokens per {tile}-pixel tile (idefics3, pixel shuffle {config.scale_factor}); an image "
            f"resized to a {longest}-pixel longest side is at most {grid}x{grid} tiles + a global view: "
            f"up to {most} image tokens (+ about {2 * grid * grid + grid + 4} layout tokens)")
