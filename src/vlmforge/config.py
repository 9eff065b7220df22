"""Typed dataclass configs: strict YAML, dotted CLI flags generated from the fields, round-trips.

The dataclass is the single source of truth: `add_arguments` makes one flag per field
(`--train.lr.projector 1e-4`, nested dataclasses give dotted names), `from_dict` / `load_yaml`
reject unknown keys naming them, and `to_dict` gives the resolved config saved beside every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from vlmforge.errors import ConfigError


def option(default=None, help: str = "", factory=None, ge=None, gt=None, le=None, lt=None,
           flags: tuple[str, ...] = (), metavar: str | None = None, repeat: bool = False):
    """A dataclass field with a help text (shown by the generated CLI flag) and an optional range.

    `ge` / `gt` / `le` / `lt` bound a number (each item of a list of numbers); `from_dict` checks them,
    and every float must be finite, so a bad value is refused when the config is read, naming its key.
    `flags` replaces the flag names made from the field name (a command's established spelling:
    `--from`, which no field can be named, or an alias such as `--model.path`); `metavar` names the
    value in `--help`; `repeat` makes a list flag take one value per use (`--image-root A --image-root B`)
    rather than several after one flag.
    """
    bounds = {key: value for key, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None}
    metadata = {"help": help, "bounds": bounds, "flags": tuple(flags), "metavar": metavar, "repeat": repeat}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_BOUND_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _within(value, key: str, bound) -> bool:
    return {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[key]


def check_bounds(value, bounds: dict, where: str) -> None:
    """The one range check of every config: floats must be finite, numbers within the field's bounds."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where} must be a finite number, got {item}")
        if not all(_within(item, key, bound) for key, bound in bounds.items()):
            wanted = " and ".join(f"{_BOUND_SIGNS[key]} {bound}" for key, bound in bounds.items())
            raise ConfigError(f"{where} must be {wanted}, got {item}")


def check_config(config, where: str = "") -> None:
    """Every field's range in a config built in Python (`from_dict` checks the same while reading)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{where}.{field.name}" if where else field.name
        if dataclasses.is_dataclass(value):
            check_config(value, key)
        else:
            check_bounds(value, field.metadata.get("bounds", {}), key)


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
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
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
    for field in dataclasses.fields(cls):
        if field.name in data:
            key = f"{where}.{field.name}" if where else field.name
            values[field.name] = _coerce(data[field.name], types_by_name[field.name], key)
            check_bounds(values[field.name], field.metadata.get("bounds", {}), key)
    return cls(**values)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def load_yaml(cls, path: str | Path):
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_strict_loader())  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}:{error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        return from_dict(cls, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _strict_loader():
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (line named),
    instead of the last one silently winning."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise ConfigError(f"{key_node.start_mark.line + 1}: duplicate key '{key}'")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def save_yaml(config, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")


def _leaf_fields(cls, prefix: str = ""):
    """Yield (dotted name, type, default, dataclass field) for every leaf field, nested dataclasses flattened."""
    types_by_name = _field_types(cls)
    for f in dataclasses.fields(cls):
        kind = types_by_name[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(kind):
            yield from _leaf_fields(kind, f"{name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            yield name, kind, default, f


def iter_fields(cls, prefix: str = ""):
    """Yield (dotted name, type, default, help) for every leaf field, nested dataclasses flattened."""
    for name, kind, default, f in _leaf_fields(cls, prefix):
        yield name, kind, default, f.metadata.get("help", "")


def field_help(cls, name: str) -> str:
    """The help text of field `name` (dotted for nested ones): for a positional argument a command adds by hand."""
    return next(help_text for field, _, _, help_text in iter_fields(cls) if field == name)


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """One flag per leaf field (`--a.b`); unset flags stay absent (argparse.SUPPRESS) so YAML values win."""
    for name, kind, default, f in _leaf_fields(cls, prefix):
        if name not in skip:
            _add_flag(parser, name, kind, default, f.metadata)


def _add_flag(parser: argparse.ArgumentParser, name: str, kind, default, metadata) -> None:
    base, _ = _unwrap_optional(kind)
    help_text = metadata.get("help", "")
    text = (f"{help_text} (default: {default})" if help_text else f"default: {default}").replace("%", "%%")
    flags = list(metadata.get("flags") or [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else []))
    common = {"dest": name, "default": argparse.SUPPRESS, "help": text}
    if metadata.get("metavar"):
        common["metavar"] = metadata["metavar"]
    if base is bool:  # `--x` and `--x true|false|yes|no|1|0` and `--no-x`
        parser.add_argument(*flags, nargs="?", const=True, type=parse_bool, **{"metavar": "BOOL", **common})
        parser.add_argument(*[f"--no-{flag[2:]}" for flag in flags], dest=name, action="store_false",
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    elif typing.get_origin(base) in (list, tuple):
        parser.add_argument(*flags, **({"action": "append"} if metadata.get("repeat") else {"nargs": "+"}), **common)
    elif typing.get_origin(base) is typing.Literal:
        parser.add_argument(*flags, choices=typing.get_args(base), **common)
    else:
        parser.add_argument(*flags, **common)


def parse_bool(text: str) -> bool:
    """A boolean flag's value as people write it: true/false, yes/no, on/off, 1/0 (any case)."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (yes/no, 1/0), got {text!r}")


def overrides_from_args(args: argparse.Namespace, cls, prefix: str = "") -> dict[str, Any]:
    """The dotted-name → value pairs the user actually gave on the command line."""
    given = vars(args)
    return {name[len(prefix):]: given[name] for name, *_ in iter_fields(cls, prefix) if name in given}


def from_args(cls, args: argparse.Namespace, **given):
    """A command's config from its parsed flags (and `given` values, e.g. positional arguments): types and
    ranges checked by `from_dict`, then the config's own `validate()` (required flags, rules across fields)."""
    config = from_dict(cls, {**overrides_from_args(args, cls), **given})
    if hasattr(config, "validate"):
        config.validate()
    return config


def require(value, message: str) -> None:
    """A required setting left empty: `ConfigError(message)` (the message names the flag)."""
    if not value:
        raise ConfigError(message)


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
