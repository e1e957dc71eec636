"""Turning what a processor returns into plain data every sink can store."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import math
import uuid
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

__all__ = ["UnstorableValue", "dumps", "to_plain"]

_SCALARS = frozenset({str, int, bool, type(None)})
_DECIMAL = Decimal


class UnstorableValue(TypeError):
    """A value no sink can store (an arbitrary object, NaN, a non-string key)."""


def to_plain(value: Any, _path: str = "$") -> Any:
    """`value` as dicts with string keys, lists, str, int, float, bool, None, Decimal and bytes.

    A dict or list that is already plain is returned as it is, not copied.

    Pydantic models, dataclasses, tuples, sets, enums, UUIDs and dates are converted;
    anything else raises `UnstorableValue` naming where in the value it sits.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise UnstorableValue(f"{_path} is {value}, which no sink can store")
        return value
    if kind is dict:
        scalars = _SCALARS
        for k, v in value.items():
            if type(k) is not str:
                break
            if type(v) in scalars:
                continue
            # Finite floats and decimals are plain too (`v - v` is 0 only when finite).
            t = type(v)
            if (t is float and v - v == 0.0) or (t is _DECIMAL and v.is_finite()):
                continue
            break
        else:
            # Already plain (string keys, scalar values): no copy, the common case.
            return value
        out: dict[str, Any] = {}
        for raw_key, v in value.items():
            k = raw_key
            if type(k) is not str:
                if isinstance(k, int | float | enum.Enum | uuid.UUID):
                    k = str(k.value if isinstance(k, enum.Enum) else k)
                else:
                    raise UnstorableValue(f"{_path} has a key of type {type(k).__name__}")
            # Scalars are copied as they are: the common case, kept off the recursive path.
            out[k] = v if type(v) in scalars else to_plain(v, f"{_path}.{k}")
        return out
    if kind is list or kind is tuple:
        scalars = _SCALARS
        for v in value:
            if type(v) in scalars:
                continue
            t = type(v)
            if (t is float and v - v == 0.0) or (t is _DECIMAL and v.is_finite()):
                continue
            break
        else:
            return value if kind is list else list(value)
        return [
            v if type(v) in scalars else to_plain(v, f"{_path}[{i}]") for i, v in enumerate(value)
        ]
    return _to_plain_slow(value, _path)


def _to_plain_slow(value: Any, path: str) -> Any:
    if isinstance(value, BaseModel):
        return to_plain(value.model_dump(mode="python"), path)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, path)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise UnstorableValue(f"{path} is {value}, which no sink can store")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value, path)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset):
        return [to_plain(v, f"{path}[]") for v in sorted(value, key=repr)]
    if isinstance(value, str | int | float | dict | list | tuple):
        # Subclasses of the builtins (IntEnum aside): store them as their base type.
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return to_plain(base(value), path)
        return to_plain(dict(value) if isinstance(value, dict) else list(value), path)  # type: ignore[arg-type]
    raise UnstorableValue(
        f"{path} is a {type(value).__name__}; return dicts, lists, scalars, "
        "dataclasses or pydantic models"
    )


class _NeedsExact(Exception):
    """A Decimal met by the C encoder: the value takes the exact path."""


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        raise _NeedsExact
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise UnstorableValue(f"{type(value).__name__} is not JSON serialisable")


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)
_STRING = json.encoder.encode_basestring  # the C implementation where there is one


def dumps(value: Any) -> str:
    """Plain data (see `to_plain`) as compact JSON; bytes become base64 strings.

    Decimals are written as exact JSON number text (`12345678901234567.89`, never a
    float's nearest 17 digits), so a reader that parses numbers as decimals gets every
    digit back; decimals without fraction digits are integers (`Decimal("2")` is `2`,
    `Decimal("2.0")` is `2.0`).
    """
    try:
        return _ENCODER.encode(value)
    except _NeedsExact:
        return "".join(_exact(value))


def _exact(value: Any) -> Any:
    """JSON text pieces of plain data with decimals as exact number text."""
    kind = type(value)
    if kind is str:
        yield _STRING(value)
    elif value is None or kind is bool or kind is int or kind is float:
        yield _ENCODER.encode(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise UnstorableValue(f"{value} is not a JSON number")
        yield _decimal_text(value)
    elif isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            if i:
                yield ","
            if not isinstance(k, str):
                raise UnstorableValue(f"a key of type {type(k).__name__} is not JSON")
            yield _STRING(k)
            yield ":"
            yield from _exact(v)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for i, v in enumerate(value):
            if i:
                yield ","
            yield from _exact(v)
        yield "]"
    else:
        yield _ENCODER.encode(value)


def _decimal_text(value: Decimal) -> str:
    """`value` as JSON number text with all its digits ("1E+2" stays exponent notation)."""
    _, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and exponent >= 0 and len(digits) + exponent <= 40:
        return str(int(value))  # "1E+3" as 1000, as an integer reads best
    return str(value)
