"""`vlmforge convert-llm qwen1 SRC --out DST`: an LLM that only loads with remote code → a native folder.

Today one kind: `qwen1`, the first-generation Qwen-7B / Qwen-7B-Chat (model type `qwen`), written
as a transformers Qwen2 folder that `AutoModelForCausalLM` / `AutoTokenizer` load alone. Nothing in
the source folder is imported; `vlmforge build --llm SRC` does the same conversion on the way.
"""

from __future__ import annotations

KINDS = {"qwen1": "first-generation Qwen (Qwen-7B, Qwen-7B-Chat: model type 'qwen', qwen.tiktoken)"}


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=list(KINDS), help="; ".join(f"{k}: {v}" for k, v in KINDS.items()))
    parser.add_argument("source", help="the original model folder (config.json, qwen.tiktoken, weight shards)")
    parser.add_argument("--out", required=True, help="folder to write the native model to (replaced atomically)")


def run(args) -> int:
    from vlmforge.model.qwen1 import convert_qwen1

    report = convert_qwen1(args.source, args.out)
    kind = "chat" if report.chat else "base"
    dropped = f"; {len(report.dropped)} dropped feature(s) in conversion_report.json" if report.dropped else ""
    print(f"wrote {args.out}: Qwen2 ({kind} model, ChatML template), {report.tensors} tensors in "
          f"{report.shards} shard(s){dropped}")
    return 0
