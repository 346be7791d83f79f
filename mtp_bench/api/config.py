"""Configuration: one override grammar for every `KEY=VALUE` a user types.

    mtp-bench run --config humaneval.protocol=standard     an evaluator's Config field
    mtp-bench run --config backend.tensor_parallel_size=2  the vLLM engine's BackendConfig field
    mtp-bench train --set lr=6e-4 --set head_weights=1,0.5 a TrainConfig field

Every value is typed by the dataclass field it sets (`parse_value`):

    int, float, str          as written (surrounding whitespace dropped)
    bool                     true/false, 1/0, yes/no, on/off (any case)
    X | None                 none or null -> None ("" too when X is not str); else as X
    tuple[X, ...], list[X]   comma-separated, optionally in ( ) or [ ]: 0.2,0.8 or (0.9, 0.95)
    Literal["a", "b"]        one of the listed values
    anything else (dict)     JSON, else the plain string

Configs are flat dataclasses whose fields all have defaults; `config_from_dict` builds one and
fails on an unknown key with the list of valid ones. Precedence, lowest first, is in
docs/configuration.md (defaults < preset < file < flags).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from mtp_bench.api.errors import ConfigError, UserError, did_you_mean

_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def parse_value(raw: str, typ: Any) -> Any:
    """Convert a command-line string to a Config field's type; ValueError says why not.

    >>> parse_value("0.2,0.8", tuple[float, ...])
    (0.2, 0.8)
    >>> parse_value("(0.9, 0.95)", tuple[float, ...])
    (0.9, 0.95)
    >>> parse_value("none", int | None) is None
    True
    >>> parse_value("on", bool)
    True
    """
    raw = raw.strip()
    if isinstance(typ, str):  # unresolved annotation: its name is all we have
        typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, Any)
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (raw.lower() in ("none", "null") or (raw == "" and str not in args)):
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, a)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for a in args:
            if str(a) == raw:
                return a
        raise ValueError(f"{raw!r} is not one of {', '.join(map(str, args))}")
    if origin in (tuple, list):
        if raw[:1] + raw[-1:] in ("()", "[]"):
            raw = raw[1:-1]
        parts = [s for s in raw.split(",") if s.strip() != ""] if raw else []
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(parts) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {len(parts)}")
            return tuple(parse_value(s, a) for s, a in zip(parts, args))
        elem = args[0] if args else str
        vals = [parse_value(s, elem) for s in parts]
        return tuple(vals) if origin is tuple else vals
    if typ is bool:
        if raw.lower() not in _BOOLS:
            raise ValueError(f"{raw!r} is not a boolean (true/false)")
        return _BOOLS[raw.lower()]
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if typ is str:
        return raw
    try:  # anything else (dicts, Any): JSON, else the plain string
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def field_types(cls: type) -> dict[str, Any]:
    """name -> type of every field of a Config dataclass (annotations resolved where possible)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: fall back to the raw field type
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def _typed(cls: type, name: str, raw: str, where: str) -> Any:
    """`raw` parsed as the type of field `name` of `cls`; a bad value is a ConfigError led by `where`."""
    try:
        return parse_value(raw, field_types(cls)[name])
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_overrides(items: list[str], evaluators: list[type]) -> dict[str, dict[str, Any]]:
    """`--config EVAL.FIELD=VALUE` items -> {"humaneval": {"protocol": "standard"}}, each value typed
    by its evaluator's Config field. An evaluator not in the run or an unknown field is a
    ConfigError listing the valid ones."""
    by_name = {cls.name: cls for cls in evaluators}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        name, dot, fname = key.strip().partition(".")
        if not eq or not dot or not name or not fname:
            raise ConfigError(f"--config expects EVALUATOR.FIELD=VALUE, got {item!r}")
        if name not in by_name:
            raise ConfigError(f"--config {item!r}: {name!r} is not in this run{did_you_mean(name, by_name)}; "
                              f"evaluators in this run: {', '.join(by_name)}")
        fields = [f.name for f in dataclasses.fields(by_name[name].Config)]
        if fname not in fields:
            raise ConfigError(f"--config {item!r}: {name} has no field {fname!r}{did_you_mean(fname, fields)}; "
                              f"valid fields: {', '.join(fields) or 'none'}")
        out.setdefault(name, {})[fname] = _typed(by_name[name].Config, fname, raw, f"--config {item!r}")
    return out


def parse_section(items: list[str], prefix: str, cls: type, what: str) -> dict[str, Any]:
    """`--config PREFIX.FIELD=VALUE` items of one section (e.g. `backend.`) -> {field: value}, typed
    by `cls`'s fields; `what` names the section in errors ("the vllm backend")."""
    fields = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.strip().partition("=")
        name = key.strip()[len(prefix):]
        if not eq or not name:
            raise ConfigError(f"--config expects {prefix}FIELD=VALUE, got {item!r}")
        if name not in fields:
            raise ConfigError(f"--config {item!r}: {what} has no field {name!r}{did_you_mean(name, fields)}; "
                              f"valid fields: {', '.join(fields)}")
        values[name] = _typed(cls, name, raw, f"--config {item!r}")
    return values


def parse_set(items: list[str], cls: type) -> dict[str, Any]:
    """`--set KEY=VALUE` items (the trainer's) -> {key: value}, typed by `cls`'s fields."""
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in types_:
            raise ConfigError(f"unknown train config key {key!r}{did_you_mean(key, types_)}; "
                              f"valid keys: {', '.join(types_)}")
        try:
            out[key] = parse_value(raw, types_[key])
        except ValueError:
            raise ConfigError(f"--set {key}={raw.strip()}: not a valid {_type_name(types_[key])}") from None
    return out


def _type_name(typ: Any) -> str:
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and len(args) == 1:
        typ = args[0]
    return getattr(typ, "__name__", str(typ))


def config_from_dict(cls: type, d: dict[str, Any], owner: str = "") -> Any:
    """Build a Config dataclass from a dict; an unknown key fails with the list of valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    where = f"{owner}: " if owner else ""
    if unknown:
        raise ConfigError(f"{where}unknown config field(s) {unknown}; valid fields: {valid or 'none'}")
    try:
        return cls(**d)
    except UserError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}bad config: {e}") from None
