"""`vlmforge chat MODEL`: one question, an interactive session, or a batch file of requests.

    vlmforge chat my-vlm --image cat.jpg --prompt "What is in this picture?"
    vlmforge chat my-vlm                       # interactive; /image PATH, /reset, /quit
    vlmforge chat my-vlm --batch requests.jsonl --out answers.jsonl
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from vlmforge.config import option
from vlmforge.utils.device import DEVICE_HELP

REPL_HELP = "commands: /image PATH (attach an image to the next question), /reset, /quit"


@dataclass
class ChatConfig:
    model: str = option("", "model folder (made by vlmforge build / export)")
    image: list[str] = option(help="image file(s) for the prompt", factory=list)
    prompt: str = option("", "ask this one question and exit")
    system: str = option("", "system message")
    batch: str = option("", "JSONL file of requests (records with messages + images) to answer")
    out: str = option("", "where --batch writes its answers (JSONL)")
    image_root: list[str] = option(help="folders that relative image paths of --batch are joined to", factory=list)
    batch_size: int = option(8, "requests per generation batch", ge=1)
    max_new_tokens: int = option(256, "maximum tokens per answer", ge=1)
    temperature: float = option(0.0, "sampling temperature; 0 is greedy", ge=0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0, le=1)
    seed: int | None = option(None, "random seed for sampling", ge=0, le=2**64 - 1)
    dtype: str = option("", "load the model in this dtype (float32, bfloat16); default: as saved")
    device: str = option("", DEVICE_HELP)


def add_arguments(parser) -> None:
    from vlmforge.config import add_arguments as add_config_arguments

    parser.add_argument("model", help="model folder")
    add_config_arguments(parser, ChatConfig, skip=("model",))


def run(args) -> int:
    from vlmforge.config import from_args

    config = from_args(ChatConfig, args, model=args.model)
    images = _check_inputs(config)  # every mistake in the question shows before the model loads
    model, processor, options = _load(config)
    if config.batch:
        return _run_batch(config, model, processor, options)
    if config.prompt:
        return _run_once(config, model, processor, options, images)
    return _run_repl(config, model, processor, options, images)


def _check_inputs(config: ChatConfig) -> list:
    """The --image files, decoded; a missing or broken one, or `<image>` typed in the prompt, is one line."""
    from vlmforge.data.images import load_image
    from vlmforge.infer.chat import check_question

    if config.prompt:
        check_question(config.prompt)
    return [load_image(path) for path in config.image]


def _load(config: ChatConfig):
    from vlmforge.infer.chat import sampling_temperature
    from vlmforge.infer.generate import GenerationOptions
    from vlmforge.model.load import load
    from vlmforge.utils.device import resolve_device

    model, processor = load(config.model, dtype=config.dtype or None, device=resolve_device(config.device))
    options = GenerationOptions(max_new_tokens=config.max_new_tokens, top_p=config.top_p, seed=config.seed,
                                temperature=sampling_temperature(config.temperature))
    return model, processor, options


def _session(config, model, processor, options, images):
    from vlmforge.infer.chat import ChatSession

    session = ChatSession(model, processor, options, system=config.system or None)
    for image in images:
        session.attach(image)
    return session


def _run_once(config, model, processor, options, images) -> int:
    session = _session(config, model, processor, options, images)
    for piece in session.ask(config.prompt):
        print(piece, end="", flush=True)
    print()
    return 0


def _run_repl(config, model, processor, options, images) -> int:
    from vlmforge.data.images import load_image
    from vlmforge.errors import DataError
    from vlmforge.infer.chat import check_question

    session = _session(config, model, processor, options, images)
    print(f"chatting with {config.model}. {REPL_HELP}")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            session.reset()
            print("(history cleared)")
            continue
        if line.startswith("/image"):
            try:
                session.attach(load_image(line[len("/image"):].strip()))
                print("(image attached to your next question)")
            except DataError as error:
                print(f"error: {error}", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(REPL_HELP)
            continue
        try:
            check_question(line)
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            continue
        print("vlm> ", end="", flush=True)
        for piece in session.ask(line):
            print(piece, end="", flush=True)
        print()


def _run_batch(config, model, processor, options) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from vlmforge.data.records import read_records, write_records
    from vlmforge.errors import DataError
    from vlmforge.infer.chat import answer_records

    if not config.out:
        raise DataError("--batch needs --out: the JSONL file to write answers to")
    if not Path(config.batch).is_file():
        raise DataError(f"request file not found: {config.batch}")
    records = read_records(config.batch)
    roots = config.image_root or [str(Path(config.batch).parent)]
    with tqdm(total=len(records), desc="answering", unit="req") as progress:
        answers = answer_records(model, processor, records, options, config.batch_size, roots, progress=progress)
    write_records(config.out, answers)
    print(f"wrote {len(answers)} answers to {config.out}")
    return 0
