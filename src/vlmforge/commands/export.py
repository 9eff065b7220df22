"""`vlmforge export CHECKPOINT --out DIR`: LoRA merged, a standard transformers folder."""

from __future__ import annotations

from dataclasses import dataclass

from vlmforge.config import option, require


@dataclass
class ExportConfig:
    checkpoint: str = option("", "a checkpoint folder (e.g. runs/my/checkpoint-latest)")
    out: str = option("", "folder to write the merged model to (required)", metavar="DIR")

    def validate(self) -> None:
        require(self.out, "vlmforge export needs --out DIR (the folder to write the merged model to)")


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.config import field_help

    parser.add_argument("checkpoint", help=field_help(ExportConfig, "checkpoint"))
    add_config_arguments(parser, ExportConfig, skip=("checkpoint",))


def run(args) -> int:
    from vlmforge.config import from_args
    from vlmforge.train.export import export_checkpoint

    config = from_args(ExportConfig, args)
    out = export_checkpoint(config.checkpoint, config.out)
    print(f"wrote {out}")
    return 0
