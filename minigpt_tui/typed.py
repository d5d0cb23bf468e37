"""Checked conversion between JSON-like dicts and the dataclasses of the run folder.

Every typed record (config sections, metrics records, checkpoint state) is read through
``from_fields``: a missing field, a field of the wrong type or an unknown field is a MiniGPTError
naming the field, never a KeyError or a TypeError from deep inside the program.
"""

from __future__ import annotations

import dataclasses

from minigpt_tui.errors import MiniGPTError

SCALARS = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}


def scalar_type(cls: type, name: str) -> type | None:
    """The Python type of a scalar field (annotations are strings under ``from __future__ import annotations``)."""
    annotation = cls.__dataclass_fields__[name].type
    if isinstance(annotation, str):
        return SCALARS.get(annotation)
    return annotation if annotation in SCALARS.values() else None


def checked_value(expected: type | None, value, where: str):
    """``value`` as the field type, or MiniGPTError naming ``where``. An int is a valid float; a bool is no int."""
    if expected is None:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
        raise MiniGPTError(f"{where} must be a{'n' if expected is int else ''} {expected.__name__}, got {value!r}")
    return value


def from_fields(cls: type, data, where: str):
    """Construct ``cls`` from ``data`` with every field checked; ``where`` names the file in messages."""
    if not isinstance(data, dict):
        raise MiniGPTError(f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MiniGPTError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name in names:
        if name not in data:
            field = cls.__dataclass_fields__[name]
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue  # a field added later: older files take its default
            raise MiniGPTError(f"{where}: field {name} is missing")
        values[name] = checked_value(scalar_type(cls, name), data[name], f"{where}: {name}")
    try:
        return cls(**values)
    except ValueError as exc:
        raise MiniGPTError(f"{where}: {exc}") from None
