"""Configs: small dataclasses read from a diffusers/transformers ``config.json``, with one rule set for all.

A config entry is one of four kinds, and every other entry is an error:

* a **field** of the dataclass: read, type-checked against the field's annotation;
* **fixed**: a setting minisd implements at one (or a few) values only (``FIXED``): any other value would be
  a different network or sampler, so it is refused rather than silently run as something else;
* **ignored**: an entry with no effect on the numbers (``IGNORED``: dropout rates, bookkeeping);
* private: keys starting with ``_`` (``_class_name``, ``_diffusers_version``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be used: the message says what was wrong and what to do."""


class JsonConfig:
    """Mixin for the dataclass configs: ``from_dict`` / ``from_json`` apply the rules of the module docstring."""

    IGNORED: ClassVar[frozenset[str]] = frozenset()
    FIXED: ClassVar[dict[str, Any]] = {}  # entry -> the value minisd implements, or a tuple of accepted values
    ERROR: ClassVar[type[Exception]] = CheckpointError  # what a bad entry raises

    @classmethod
    def from_dict(cls, data: dict[str, Any], fixed: dict[str, Any] | None = None, owner: str = ""):
        """Build from a config dict; ``fixed`` replaces ``FIXED`` (a sampler passes its class's table, and its
        name as ``owner`` for the messages)."""
        fixed = cls.FIXED if fixed is None else fixed
        where = f" for {owner}" if owner else ""
        if not isinstance(data, dict):
            raise cls.ERROR(f"{cls.__name__}: a config must be a JSON object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        problems = [
            f"unknown entry {k!r}"
            for k in sorted(data)
            if k not in fields | cls.IGNORED | fixed.keys() and not k.startswith("_")
        ]
        for key, accepted in fixed.items():
            accepted = accepted if isinstance(accepted, tuple) else (accepted,)
            if key in data and not any(_same_value(data[key], a) for a in accepted):
                supported = " or ".join(map(repr, accepted))
                problems.append(f"{key}={data[key]!r} is not implemented{where}; minisd supports {supported}")
        problems += [
            f"{k}={data[k]!r} is invalid; {_type_advice(hints[k])}"
            for k in sorted(fields & data.keys())
            if not _type_ok(data[k], hints[k])
        ]
        if problems:
            raise cls.ERROR(f"{cls.__name__}: {'; '.join(problems)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in fields})
        except ValueError as e:  # a check across entries in the class's __post_init__
            raise cls.ERROR(f"{cls.__name__}: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: a diffusers component folder needs its config.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); re-download the model folder") from e
        return cls.from_dict(data)


def _same_value(value, expected) -> bool:
    """Equal, of the same kind (``true`` is not ``1``), or a per-level list of that one value
    (``only_cross_attention: [false, false, ...]``)."""
    if isinstance(value, list) and not isinstance(expected, list):
        return all(_same_value(v, expected) for v in value)
    if expected is None or isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    return value == expected


def _type_ok(value: Any, hint: Any) -> bool:
    """Does a JSON value fit a field's annotation (int, float, bool, str, None, list[...] and unions of them)?"""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is list:
        return isinstance(value, list | tuple) and all(_type_ok(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return hint is Any or isinstance(value, hint)


def _type_advice(hint: Any) -> str:
    """What to write instead, in JSON's words."""
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return "use " + " or ".join(words.get(a, "a list" if typing.get_origin(a) is list else str(a)) for a in args)


@dataclasses.dataclass
class GenerationDefaults(JsonConfig):
    """A model's own defaults for generating, from ``generation_defaults.json`` in its folder: minisd's file,
    which diffusers does not read (its users pass these values themselves). Without the file, SD's.

    A small model may want other settings than SD's: minisd-tiny's pictures fall apart at guidance 7.5 (its
    model card measures why), so its folder says 2.0.
    """

    guidance_scale: float = 7.5

    FILE: ClassVar[str] = "generation_defaults.json"

    @classmethod
    def of_folder(cls, folder: Path) -> GenerationDefaults:
        path = Path(folder) / cls.FILE
        return cls.from_json(path) if path.is_file() else cls()
