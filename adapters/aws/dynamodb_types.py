"""DynamoDB's typed JSON (`{"N": "1"}`, `{"B": "..."}`) to Python values and back, exactly."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

try:
    from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
except ImportError as exc:  # pragma: no cover - the dev environment has boto3
    from onceflow.adapters.aws.sdk import MISSING

    raise ImportError(MISSING) from exc

__all__ = ["from_stream_image", "from_wire", "to_wire"]

_DESERIALIZER = TypeDeserializer()
_SERIALIZER = TypeSerializer()


def _unbase64(typed: Any) -> Any:
    """Stream JSON carries binaries as base64 text; boto3's deserializer wants bytes."""
    if not isinstance(typed, Mapping) or len(typed) != 1:
        raise ValueError(f"not a DynamoDB typed value: {typed!r:.80}")
    [(tag, value)] = typed.items()
    if tag == "B":
        return {"B": base64.b64decode(value, validate=True)}
    if tag == "BS":
        return {"BS": [base64.b64decode(v, validate=True) for v in value]}
    if tag == "M":
        return {"M": {k: _unbase64(v) for k, v in value.items()}}
    if tag == "L":
        return {"L": [_unbase64(v) for v in value]}
    return {tag: value}


def _plain(value: Any) -> Any:
    """boto3's `Binary` wrappers as plain bytes, inside any container."""
    if isinstance(value, Binary):
        return bytes(cast(Any, value).value)  # the stubs omit Binary.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, set) and value and isinstance(next(iter(value)), Binary):
        return {bytes(cast(Any, v).value) for v in value}
    return value


def from_stream_image(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stream record's typed image (binaries base64) as Python: Decimal, bytes, sets."""
    if image is None:
        return None
    return {name: _plain(_DESERIALIZER.deserialize(_unbase64(v))) for name, v in image.items()}


def from_wire(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as boto3's low-level client returns it, as Python values."""
    return {name: _plain(_DESERIALIZER.deserialize(v)) for name, v in item.items()}


def to_wire(value: Any) -> dict[str, Any]:
    """A Python value (floats allowed, as exact decimals) as a DynamoDB typed value."""
    wire: dict[str, Any] = dict(_SERIALIZER.serialize(_decimals(value)))
    return wire


def _decimals(value: Any) -> Any:
    # DynamoDB numbers are decimals; a float goes through its shortest repr to stay exact.
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(v) for v in value]
    return value
