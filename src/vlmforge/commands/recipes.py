"""`vlmforge recipes list | copy NAME DEST`: the shipped training recipes."""

from __future__ import annotations


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="one line per shipped recipe")
    copy = sub.add_parser("copy", help="copy a shipped recipe to edit")
    copy.add_argument("name")
    copy.add_argument("dest")


def _summary(path) -> str:
    """The first comment line of a recipe file."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def run(args) -> int:
    import shutil
    from pathlib import Path

    from vlmforge.errors import ConfigError
    from vlmforge.train.recipe import shipped_recipes

    recipes = shipped_recipes()
    if args.action == "list":
        width = max(map(len, recipes))
        for name, path in recipes.items():
            print(f"{name:<{width}}  {_summary(path)}")
        return 0
    if args.name not in recipes:
        raise ConfigError(f"no shipped recipe '{args.name}' (have: {', '.join(recipes)})")
    dest = Path(args.dest)
    if dest.exists():
        raise ConfigError(f"{dest} exists already; choose another name")
    shutil.copyfile(recipes[args.name], dest)
    print(f"wrote {dest}: edit it, then `vlmforge train {dest}`")
    return 0
