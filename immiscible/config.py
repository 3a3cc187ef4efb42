"""Config loading: plain dicts (from params.yaml or a notebook) into frozen, validated dataclasses.

Fields may declare their allowed values with ``field(metadata={"choices": (...)})``. Unknown keys, wrong types
and values outside ``choices`` raise a ValueError naming the key, the value and what is allowed, before any
compute starts.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def choices(*allowed: Any) -> dict:
    """Field metadata restricting a value to ``allowed``."""
    return {"choices": tuple(allowed)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against (and lightly converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(key, value, arg)
            except ValueError:
                continue
        raise ValueError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{key}={value!r} is not allowed; choose one of {args}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}={value!r} has the wrong type: expected a list of {_type_name(args[0])}")
        item = args[0] if args else Any
        out = [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r} has the wrong type: expected a mapping for {tp.__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} has the wrong type: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}={value!r} has the wrong type: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}={value!r} has the wrong type: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{key}={value!r} has the wrong type: expected a string")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ValueError(f"{key}={value!r} has the wrong type: expected {_type_name(tp)}")
    return value


def from_dict(cls: type[T], values: dict, prefix: str = "") -> T:
    """Build the (frozen) dataclass ``cls`` from ``values``; unknown keys, wrong types or values -> ValueError."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix or cls.__name__} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {[prefix + k for k in unknown]} for {cls.__name__}; "
                         f"allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        value = _convert(key, value, hints[name])
        allowed = fields[name].metadata.get("choices")
        if allowed is not None and value not in allowed:
            raise ValueError(f"{key}={value!r} is not allowed; choose one of {allowed}")
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """A dataclass as a plain dict (tuples become lists) for JSON/YAML."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


def validate(obj: Any) -> Any:
    """Re-check a dataclass instance built directly (not through ``from_dict``); returns it."""
    return from_dict(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})


def load_yaml_group(path: str | Path, group: str) -> dict:
    """The mapping ``group`` of the YAML file ``path`` ({} when the file or group is absent)."""
    import yaml
    path = Path(path)
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    group_values = data.get(group, {})
    if not isinstance(group_values, dict):
        raise ValueError(f"{path}: group {group!r} must be a mapping, got {type(group_values).__name__}")
    return group_values


def group_profile(path: str | Path, group: str, profile: str | None = None) -> str:
    """The profile to run: ``profile`` when given, else params.yaml's ``<group>.profile``. The one default that every
    command line and every ``setup``/``run_settings`` shares (none of them hides another)."""
    if profile:
        return profile
    values = load_yaml_group(path, group)
    if "profile" not in values:
        raise ValueError(f"{path}: {group}.profile is not set; pass a profile (--profile) or set {group}.profile")
    return values["profile"]


def group_values(path: str | Path, group: str, keys: tuple[str, ...]) -> dict:
    """params.yaml's group ``group``, with each of ``keys`` present (params.yaml is their only source): a ValueError
    naming the missing keys otherwise."""
    values = load_yaml_group(path, group)
    missing = [k for k in keys if k not in values]
    if missing:
        raise ValueError(f"{path}: {group} lacks {missing}; set them in params.yaml (the defaults live only there)")
    return values


def load_profile(path: str | Path, group: str, profile: str) -> tuple[dict, dict]:
    """(the group, its profile ``profile``) from params.yaml: ``<group>.profiles.<profile>``. The profile is the
    only source of its values (no defaults hidden in code beyond the dataclasses' documented ones)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"params file {path} not found: run from the project root or pass its path")
    values = load_yaml_group(path, group)
    profiles = values.get("profiles", {})
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r} for group {group!r} in {path}; choose one of "
                         f"{sorted(profiles)}")
    return values, profiles[profile] or {}


def parse_param(name: str, value: Any, kind: type = list) -> Any:
    """A notebook parameter as ``kind`` (list or dict). ``papermill -p batch_sizes "[32, 64]"`` passes a string: it
    is parsed as YAML; a string that is not a ``kind`` raises a ValueError that shows the ``-y`` form."""
    if isinstance(value, str):
        import yaml
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, kind):
            example = "[32, 64]" if kind is list else "{key: value}"
            raise ValueError(f"{name}={value!r} is not a {kind.__name__}; pass it as YAML: papermill IN OUT -y "
                             f"\"{name}: {example}\" (or -p {name} \"{example}\")")
        return parsed
    if value is not None and not isinstance(value, (kind, tuple) if kind is list else kind):
        raise ValueError(f"{name}={value!r} must be a {kind.__name__}")
    return value
