"""Business idempotency keys: a dotted path into the payload names what makes two events one.

`Pipeline(key="payment.id")` dedupes on the payment, not on the transport's message id,
so two messages carrying the same payment are applied once. The key is built by
`onceflow.identity.event_key` from the path and the value found there; an event whose
payload lacks the field cannot be keyed and is dead-lettered with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from onceflow.envelopes import Envelope, payload_document
from onceflow.errors import ConfigurationError, DecodeError
from onceflow.event import Event
from onceflow.identity import event_key

__all__ = ["MissingKeyField", "business_key", "field_at"]


class MissingKeyField(DecodeError):
    """An event's payload has no usable value at the pipeline's key field."""


def field_at(document: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` in a document of dicts and lists; KeyError when absent."""
    value = document
    for part in path:
        if isinstance(value, dict):
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            try:
                value = value[int(part)]
            except IndexError:
                raise KeyError(part) from None
        else:
            raise KeyError(part)
    return value


def business_key(field: str, envelope: Envelope | None = None) -> Callable[[Event], str]:
    """The key function for the dotted path `field` into each event's payload."""
    path = tuple(field.split("."))
    if not field or not all(path):
        raise ConfigurationError(f"key field {field!r} must be a dotted path like 'payment.id'")

    def key(event: Event) -> str:
        payload = event.data if envelope is None else envelope(event)
        document = payload_document(payload)
        try:
            value = field_at(document, path)
        except KeyError:
            raise MissingKeyField(
                f"event {event.key}: the payload has no key field {field!r}"
            ) from None
        kind = type(value)
        if kind is str:
            if not value:
                raise MissingKeyField(f"event {event.key}: key field {field!r} is empty")
            return event_key(field, value)
        if kind is int:
            return event_key(field, str(value))
        if kind is Decimal and value.is_finite() and value == value.to_integral_value():
            return event_key(field, str(int(value)))  # 7 and 7.0 are one payment
        # Floats, booleans, nulls and objects make poor identities; say which it was.
        raise MissingKeyField(
            f"event {event.key}: key field {field!r} holds a {_json_kind(value)}, "
            "not a string or an integer"
        )

    return key


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "number with a fraction" if isinstance(value, float | Decimal) else "value"
