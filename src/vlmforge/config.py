"""Typed dataclass configs: strict YAML, dotted CLI flags generated from the fields, round-trips.

The dataclass is the single source of truth: `add_arguments` makes one flag per field
(`--train.lr.projector 1e-4`, nested dataclasses give dotted names), `from_dict` / `load_yaml`
reject unknown keys naming them, and `to_dict` gives the resolved config saved beside every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from vlmforge.errors import ConfigError



def option(default=None, help: str = "", factory=None):
    """A dataclass field with a help text (shown by the generated CLI flag)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(kind):
    """`int | None` → (int, True); `int` → (int, False)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return kind, False


def _coerce(value, kind, where: str):
    """Check / convert a YAML or CLI value to the field's declared type."""
    kind, optional = _unwrap_optional(kind)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be null")
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where)
    if origin in (list, tuple):
        (item_kind, *_) = typing.get_args(kind) or (str,)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(item, item_kind, f"{where}[{i}]") for i, item in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if kind is float else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are `ConfigError`s."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    types_by_name = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys here: {', '.join(names)})"
        )
    values = {}
    for name in names:
        if name in data:
            values[name] = _coerce(data[name], types_by_name[name], f"{where}.{name}" if where else name)
    return cls(**values)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def load_yaml(cls, path: str | Path):
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    try:
        return from_dict(cls, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def save_yaml(config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")


def iter_fields(cls, prefix: str = ""):
    """Yield (dotted name, type, default, help) for every leaf field, nested dataclasses flattened."""
    types_by_name = _field_types(cls)
    for f in dataclasses.fields(cls):
        kind = types_by_name[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            yield from iter_fields(kind, f"{name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            yield name, kind, default, f.metadata.get("help", "")


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One flag per leaf field (`--a.b`); unset flags stay absent (argparse.SUPPRESS) so YAML values win."""
    for name, kind, default, help_text in iter_fields(cls, prefix):
        if name in skip:
            continue
        base, _ = _unwrap_optional(kind)
        text = (f"{help_text} (default: {default})" if help_text else f"default: {default}").replace("%", "%%")
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        if base is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(base) in (list, tuple):
            parser.add_argument(*flags, dest=name, nargs="+", default=argparse.SUPPRESS, help=text)
        elif typing.get_origin(base) is typing.Literal:
            parser.add_argument(*flags, dest=name, choices=typing.get_args(base), default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, help=text)


def overrides_from_args(args: argparse.Namespace, cls, prefix: str = "") -> dict[str, Any]:
    """The dotted-name → value pairs the user actually gave on the command line."""
    given = vars(args)
    return {name[len(prefix):]: given[name] for name, *_ in iter_fields(cls, prefix) if name in given}


def apply_overrides(config, overrides: dict[str, Any]):
    """Return a copy of `config` with dotted overrides applied and type-checked."""
    data = to_dict(config)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise ConfigError(f"unknown config key '{dotted}'")
            node = node[key]
        if leaf not in node:
            raise ConfigError(f"unknown config key '{dotted}'")
        node[leaf] = value
    return from_dict(type(config), data)
