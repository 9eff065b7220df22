"""The command surface: every subcommand's --help, no torch import for help, and the layer arrows."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from vlmforge.cli import COMMANDS, main

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlmforge"

# Lower layers never import upper ones.
LAYERS = {"errors": 0, "config": 0, "utils": 0, "data": 1, "model": 2, "train": 3, "infer": 4, "eval": 5,
          "bench": 6, "demo": 6, "commands": 7, "cli": 7, "__main__": 7, "__init__": 7}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize("argv", [["--help"], ["build", "--help"], ["train", "--help"], ["chat", "--help"]])
def test_help_does_not_import_torch(argv):
    code = ("import sys\nfrom vlmforge.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n" % argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "vlmforge", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "build" in result.stdout


def _layer(module_path: Path) -> int:
    relative = module_path.relative_to(PACKAGE)
    return LAYERS[relative.parts[0].removesuffix(".py")]


def _imported_layers(module_path: Path):
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vlmforge" and len(parts) > 1:
                yield name, LAYERS[parts[1]]


def test_lower_layers_never_import_upper_ones():
    violations = []
    for module_path in PACKAGE.rglob("*.py"):
        own = _layer(module_path)
        violations += [f"{module_path.relative_to(PACKAGE)} imports {name}"
                       for name, layer in _imported_layers(module_path) if layer > own]
    assert not violations, "\n".join(violations)
