"""`vlmforge build --vision DIR --llm DIR --out DIR`: compose a VLM folder that transformers loads natively."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.model.build import BuildConfig

    add_config_arguments(parser, BuildConfig)


def run(args) -> int:
    from vlmforge.config import from_dict, overrides_from_args
    from vlmforge.errors import ModelError
    from vlmforge.model.build import BuildConfig, build_vlm, save_vlm

    config = from_dict(BuildConfig, overrides_from_args(args, BuildConfig))
    if not config.out:
        raise ModelError("--out is required: the folder to write the VLM to")
    model, processor = build_vlm(config)
    save_vlm(model, processor, config.out)
    parameters = sum(p.numel() for p in model.parameters())
    per_image = (f"{model.config.image_seq_length} image tokens per image" if hasattr(model.config, "image_seq_length")
                 else f"{processor.image_seq_len} image tokens per tile")  # idefics3: tiles + a global view
    print(f"wrote {config.out}: {parameters / 1e6:.2f}M parameters, {per_image}")
    return 0
