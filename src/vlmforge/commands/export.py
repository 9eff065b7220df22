"""`vlmforge export CHECKPOINT --out DIR`: LoRA merged, a standard transformers folder."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (e.g. runs/my/checkpoint-latest)")
    parser.add_argument("--out", required=True, help="folder to write the merged model to")


def run(args) -> int:
    from vlmforge.train.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out}")
    return 0
