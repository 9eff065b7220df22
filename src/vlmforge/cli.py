"""The `vlmforge` command line: a thin dispatcher over small command modules.

Each subcommand lives in `vlmforge/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs (or its `--help` is asked
for), so `vlmforge --help` stays fast and never imports torch.

Run: `vlmforge --help`, `vlmforge build --help`, ...
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pickle
import re
import sys
import warnings

from vlmforge.errors import VlmforgeError

# name -> (module under vlmforge.commands, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("build", "join a vision model and an LLM into one VLM folder"),
    "convert-llm": ("convert_llm", "convert an LLM that needs remote code (first-generation Qwen) to a native folder"),
    "data": ("data", "convert, check and synthesise datasets (convert | check | synth)"),
    "train": ("train", "train a VLM from a YAML recipe (resumable, multi-GPU)"),
    "recipes": ("recipes", "list or copy the shipped training recipes"),
    "export": ("export", "merge a checkpoint into a standard transformers folder"),
    "chat": ("chat", "chat with a VLM: one prompt, interactive, or a batch file"),
    "eval": ("eval", "generate and score captions / VQA answers"),
    "serve": ("serve", "OpenAI-compatible API and chat web page"),
    "bench": ("bench", "benchmark training and inference speed side by side"),
    "demo": ("demo", "build and train a tiny VLM from scratch, offline, and prove it sees"),
}


def _load_command(name: str):
    module_name, _ = COMMANDS[name]
    return importlib.import_module(f"vlmforge.commands.{module_name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(prog="vlmforge", description="Build, train, evaluate, serve and ship your own VLM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            _load_command(name).add_arguments(sub_parser)
    return parser


def _set_up_output(verbose: bool) -> None:
    """A command's output is its own progress and results: vlmforge's log at INFO, other libraries'
    logs only from WARNING up. Unless `-v`, transformers' own progress bars ("Loading weights",
    "Writing model shards") and advice, and the libraries' FutureWarnings (deprecations the user of
    a command cannot act on) are silenced too; download progress bars stay."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("vlmforge").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # child processes (accelerate ranks) too
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging  # no torch import

    downloads_shown = not hub_utils.are_progress_bars_disabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # also turns off the hub's bars ...
    if downloads_shown:
        hub_utils.enable_progress_bars()  # ... which show downloads: those stay


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _set_up_output(args.verbose)
    try:
        return int(_load_command(args.command).run(args) or 0)
    except VlmforgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except pickle.UnpicklingError as error:  # torch's weights_only refusal: its own message is a page
        print(f"error: {_pickle_refusal(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # a full disk can meet any command's writes: one line, not a traceback
        from vlmforge.utils.atomic import disk_full_message

        if disk_full_message(error) is None:
            raise
        print(f"error: {disk_full_message(error)}", file=sys.stderr)
        return 2


def _pickle_refusal(error: Exception) -> str:
    """One line for a pickled weights file that weights_only loading refused (or could not read)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    what = f"it names {found.group(1)}" if found else str(error).splitlines()[0][:200]
    return (f"a .bin/.pt weights file holds pickled Python objects, which vlmforge never loads (weights_only=True; {what}): "
            "re-save it as safetensors where you trust its source (save_pretrained(out, safe_serialization=True))")


if __name__ == "__main__":
    raise SystemExit(main())
