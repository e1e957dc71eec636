"""DynamoDB's typed JSON (`{"N": "1"}`, `{"B": "..."}`) to Python values and back, exactly."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast


@functools.cache
def _codec() -> tuple[Any, Any, type]:
    """boto3's deserializer, serializer and `Binary`, imported on first use: importing
    `boto3.dynamodb.types` imports boto3 itself, which a handler pays for only when it
    converts an item (or makes a client)."""
    try:
        from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
    except ImportError as exc:  # pragma: no cover - the dev environment has boto3
        from onceflow.adapters.aws.sdk import MISSING

        raise ImportError(MISSING) from exc
    return TypeDeserializer(), TypeSerializer(), Binary


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


def _plain(value: Any, binary: type) -> Any:
    """boto3's `Binary` wrappers as plain bytes, inside any container."""
    if isinstance(value, binary):
        return bytes(cast(Any, value).value)  # the stubs omit Binary.value
    if isinstance(value, dict):
        return {k: _plain(v, binary) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, binary) for v in value]
    if isinstance(value, set) and value and isinstance(next(iter(value)), binary):
        return {bytes(cast(Any, v).value) for v in value}
    return value


def from_stream_image(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stream record's typed image (binaries base64) as Python: Decimal, bytes, sets."""
    if image is None:
        return None
    deserializer, _, binary = _codec()
    return {
        name: _plain(deserializer.deserialize(_unbase64(v)), binary) for name, v in image.items()
    }


def from_wire(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as boto3's low-level client returns it, as Python values."""
    deserializer, _, binary = _codec()
    return {name: _plain(deserializer.deserialize(v), binary) for name, v in item.items()}


def to_wire(value: Any) -> dict[str, Any]:
    """A Python value (floats allowed, as exact decimals) as a DynamoDB typed value."""
    wire: dict[str, Any] = dict(_codec()[1].serialize(_decimals(value)))
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
