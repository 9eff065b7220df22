"""Every `vlmforge ...` example in README.md and docs/ is a command the CLI accepts: its subcommand and
every flag parse (nothing runs). A renamed flag or a doc that drifted from the code fails here.

Commands are the lines of ```bash / sh / shell blocks, and the `$ ` lines of any block (the rest of
such a block is output).
`...` stands for arguments left out on purpose, so such a command is skipped.
"""

import re
import shlex
from pathlib import Path

import pytest

from vlmforge.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
_SHELL = ("bash", "sh", "shell")
_COMMAND = re.compile(r"^(?:\S*/)?vlmforge (.*)$")


def doc_commands() -> list[tuple[str, str]]:
    """(file name, command line after `vlmforge`) for every example command in the docs."""
    found = []
    for path in DOCS:
        for language, block in _FENCE.findall(path.read_text(encoding="utf-8")):
            lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
            prompted = language not in _SHELL or any(line.startswith("$ ") for line in lines)
            for line in lines:
                if prompted and not line.startswith("$ "):
                    continue
                match = _COMMAND.match(line.removeprefix("$ "))
                if match and "..." not in match.group(1).split():
                    found.append((path.name, re.sub(r"\s+(#.*|&)$", "", match.group(1))))  # no comment, no &
    return found


COMMANDS = doc_commands()


def test_the_docs_have_examples_to_check():
    assert len(COMMANDS) > 50
    assert {name for name, _ in COMMANDS} >= {"README.md", "training.md", "demo.md"}


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{doc}:{cmd[:40]}" for doc, cmd in COMMANDS])
def test_doc_command_parses(doc, command):
    argv = shlex.split(command)
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exit_:
        assert not exit_.code, f"{doc}: `vlmforge {command}` is refused by the CLI"
