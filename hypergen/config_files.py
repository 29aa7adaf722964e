"""YAML experiment configs with ``key=value`` overrides, read into a dataclass.

One loader for every runnable (training recipes, evaluation): the file is a mapping of the
dataclass's fields, overrides are parsed as YAML values, and an unknown key is an error
(a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hypergen.atomic import atomic_write_text
from hypergen.config import check_keys

C = TypeVar("C")


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["steps=50", "objective=both"]`` -> ``{"steps": 50, "objective": "both"}`` (values as YAML)."""
    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def read_config(
    cls: type, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """The merged, checked and type-coerced field values for ``cls`` (file, then overrides)."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping of config keys")
        data.update(loaded or {})
    data.update(parse_overrides(overrides))
    known = [f.name for f in dataclasses.fields(cls)]
    check_keys(data, known, f"{cls.__name__} (from {path or 'overrides'})")
    return _coerce(cls, data)


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> C:
    """Build ``cls`` from a YAML file and ``key=value`` overrides; unknown keys raise ValueError."""
    return cls(**read_config(cls, path, overrides or ()))


def _coerce(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Numbers YAML reads as strings (``1e-3``: YAML 1.1 wants ``1.0e-3``) -> the field's type."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        hint = hints[key]
        allowed = set(typing.get_args(hint)) or {hint}
        for kind in (float, int):
            if kind in allowed and isinstance(value, (str, int)) and not isinstance(value, bool):
                try:
                    out[key] = kind(value)
                except ValueError as err:
                    raise ValueError(
                        f"{cls.__name__}.{key} must be a number, got {value!r}"
                    ) from err
                break
    return out


def save_config(config: Any, path: str | Path, header: str = "") -> Path:
    """Write ``config`` as YAML (the exact values a run used), with an optional comment header."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    return atomic_write_text(path, comment + body)
