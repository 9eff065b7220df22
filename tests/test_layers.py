"""The package's layers, checked on the source (AST, no imports run): see docs/architecture.md.

    errors, config, utils → data → model → train → infer → eval → demo, bench → commands, cli

A package imports only from its own layer or below (imports inside functions count too). demo/
and bench/ are users of the core: they import public names only, and call no `_private` method
of a core object. No package imports a `_private` name from another package.
"""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "vlmforge"

# Lower number = lower layer. Entries of one layer may import each other, except where LOWER_ONLY says.
LAYERS = {"errors": 0, "config": 0, "utils": 0, "data": 1, "model": 2, "train": 3, "infer": 4, "eval": 5,
          "demo": 6, "bench": 6, "commands": 7, "cli": 7, "__main__": 7}
PEERS_APART = {("demo", "bench"), ("bench", "demo")}  # two users on top: neither builds on the other
USERS = ("demo", "bench")


def _package_of(path: Path) -> str:
    relative = path.relative_to(SOURCE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _modules() -> list[tuple[str, Path, ast.Module]]:
    return [(_package_of(path), path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
            for path in sorted(SOURCE.rglob("*.py"))]


def _vlmforge_imports(tree: ast.Module):
    """(line, imported package, module, names) of every `vlmforge.*` import, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("vlmforge"):
            parts = node.module.split(".")
            target = parts[1] if len(parts) > 1 else None
            for alias in node.names:
                yield node.lineno, target or alias.name, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "vlmforge" and len(parts) > 1:
                    yield node.lineno, parts[1], alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, None, "." * node.level + (node.module or ""), None  # relative: refused below


def test_every_package_has_a_layer():
    packages = {_package_of(path) for path in SOURCE.rglob("*.py")} - {"__init__"}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS and docs/architecture.md"


def _against_layers(package: str, target: str) -> bool:
    return target in LAYERS and (LAYERS[target] > LAYERS[package] or (package, target) in PEERS_APART)


def test_imports_point_down_the_layers():
    wrong = []
    for package, path, tree in _modules():
        if package == "__init__":  # the lazy public facade (vlmforge.load, vlmforge.build_vlm)
            continue
        for line, target, module, _ in _vlmforge_imports(tree):
            where = f"{path.relative_to(SOURCE)}:{line} imports {module}"
            if target is None:
                wrong.append(f"{where} (relative import: write vlmforge.…)")
            elif _against_layers(package, target):
                wrong.append(where)
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_private_name_is_imported_from_another_package():
    wrong = []
    for package, path, tree in _modules():
        for line, target, module, name in _vlmforge_imports(tree):
            if target is None or target == package:
                continue
            private_module = any(part.startswith("_") and part != "__init__" for part in module.split(".")[1:])
            if private_module or (name or "").startswith("_"):
                wrong.append(f"{path.relative_to(SOURCE)}:{line} from {module} import {name}")
    assert not wrong, "private names used across packages:\n" + "\n".join(wrong)


def _third_party_names(tree: ast.Module) -> set[str]:
    """Names bound by importing modules outside vlmforge (torch, transformers...): not core objects."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names
                      if not alias.name.startswith("vlmforge")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("vlmforge"):
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("user", USERS)
def test_demo_and_bench_touch_no_private_attribute_of_a_core_object(user):
    """`trainer._step(...)`, `model._cache`: a user of the core goes through its public API only."""
    wrong = []
    for package, path, tree in _modules():
        if package != user:
            continue
        outside = _third_party_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue  # its own object's private parts
            if _root_name(node.value) in outside:
                continue  # a third-party module's (torch.cpu._is_amx_tile_supported): not the core's API
            wrong.append(f"{path.relative_to(SOURCE)}:{node.lineno} {ast.unparse(node)}")
    assert not wrong, f"{user}/ reaches into private attributes:\n" + "\n".join(wrong)


def test_no_module_outside_train_calls_a_private_trainer_method():
    """The issue-14 rule in its own words, for every package (`trainer._setup()`, `self.trainer._step(...)`)."""
    wrong = []
    for package, path, tree in _modules():
        if package == "train":
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and ast.unparse(node.value).lower().endswith("trainer")):
                wrong.append(f"{path.relative_to(SOURCE)}:{node.lineno} {ast.unparse(node)}")
    assert not wrong, "private Trainer methods called outside train/:\n" + "\n".join(wrong)


def test_the_checks_see_a_violation():
    """The scanners themselves: upward and sideways imports, a private import, a private call are found."""
    assert _against_layers("data", "train") and _against_layers("bench", "demo") and _against_layers("eval", "commands")
    assert not _against_layers("commands", "bench") and not _against_layers("infer", "data")
    tree = ast.parse("from vlmforge.train.loop import _Window\nimport torch\ntrainer._step(1)\ntorch.cpu._x()\n")
    assert [name for *_, name in _vlmforge_imports(tree)] == ["_Window"]
    attributes = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr.startswith("_")]
    assert {ast.unparse(node): _root_name(node.value) for node in attributes} == {"trainer._step": "trainer",
                                                                                   "torch.cpu._x": "torch"}
    assert "torch" in _third_party_names(tree) and "trainer" not in _third_party_names(tree)


def test_architecture_page_names_every_module_and_only_existing_tests():
    """docs/architecture.md stays true: each module is in its table, each test file it cites exists."""
    import re

    page = (SOURCE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {match[1]: match[0] for match in re.finditer(r"^\| `(\w+)/` \|.*$", page, re.MULTILINE)}
    missing = [str(path.relative_to(SOURCE)) for path in sorted(SOURCE.rglob("*.py")) if path.name != "__init__.py"
               and path.name not in rows.get(_package_of(path), page if path.parent == SOURCE else "")]
    assert not missing, f"docs/architecture.md does not mention {missing}"
    cited = set(re.findall(r"tests/[\w/]+\.py", page))
    assert cited and all((SOURCE.parents[1] / name).is_file() for name in cited), cited
