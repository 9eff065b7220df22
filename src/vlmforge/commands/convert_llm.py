"""`vlmforge convert-llm qwen1 SRC --out DST`: an LLM that only loads with remote code → a native folder.

Today one kind: `qwen1`, the first-generation Qwen-7B / Qwen-7B-Chat (model type `qwen`), written
as a transformers Qwen2 folder that `AutoModelForCausalLM` / `AutoTokenizer` load alone. Nothing in
the source folder is imported; `vlmforge build --llm SRC` does the same conversion on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlmforge.config import option, require

KINDS = {"qwen1": "first-generation Qwen (Qwen-7B, Qwen-7B-Chat: model type 'qwen', qwen.tiktoken)"}
KIND_NAMES = tuple(KINDS)


@dataclass
class ConvertLlmConfig:
    kind: Literal[KIND_NAMES] = option("qwen1", "; ".join(f"{k}: {v}" for k, v in KINDS.items()))
    source: str = option("", "the original model folder (config.json, qwen.tiktoken, weight shards)")
    out: str = option("", "folder to write the native model to (replaced atomically; required)", metavar="DIR")

    def validate(self) -> None:
        require(self.out, "vlmforge convert-llm needs --out DIR (the folder to write the native model to)")


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments
    from vlmforge.config import field_help

    parser.add_argument("kind", choices=KIND_NAMES, help=field_help(ConvertLlmConfig, "kind"))
    parser.add_argument("source", help=field_help(ConvertLlmConfig, "source"))
    add_config_arguments(parser, ConvertLlmConfig, skip=("kind", "source"))


def run(args) -> int:
    from vlmforge.config import from_args
    from vlmforge.model.qwen1 import convert_qwen1

    config = from_args(ConvertLlmConfig, args)
    report = convert_qwen1(config.source, config.out)
    kind = "chat" if report.chat else "base"
    dropped = f"; {len(report.dropped)} dropped feature(s) in conversion_report.json" if report.dropped else ""
    print(f"wrote {config.out}: Qwen2 ({kind} model, ChatML template), {report.tensors} tensors in "
          f"{report.shards} shard(s){dropped}")
    return 0
