"""Where an event's own payload sits inside what the platform delivered: envelopes.

An envelope is a function of an `Event` that returns its payload: JSON text (`bytes` or
`str`, parsed by the caller, so numbers keep every digit) or a Python value already
decoded. The platform decoders (`onceflow.adapters.aws.decode`) already unwrap what
they can (an EventBridge event's `detail`, an S3 notification reached through SQS, SNS
or EventBridge becomes the object's document); these functions unwrap the rest, over
the Event's own fields, with no cloud SDK:

- `sns`: an SNS notification delivered through SQS (no raw message delivery): `Message`;
- `eventbridge`: a whole EventBridge event delivered through SQS or a stream: `detail`;
- `dynamodb_new_image` / `dynamodb_old_image`: a DynamoDB Streams change's image as
  Python values (numbers as `Decimal`, binaries as `bytes`, sets as `set`);
- `auto` (what typed processors and business keys use by default) picks one of those
  by the event's `type` and, for SQS messages, by the body's shape; anything else is
  the event's data as it is.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from onceflow.errors import DecodeError
from onceflow.event import Event

__all__ = [
    "Envelope",
    "auto",
    "dynamodb_image",
    "dynamodb_new_image",
    "dynamodb_old_image",
    "eventbridge",
    "leading_traceparent",
    "payload_document",
    "raw",
    "sns",
    "trace_fields",
    "with_leading_traceparent",
]

Envelope = Callable[[Event], Any]
"""A function of an event giving its payload: JSON text (bytes or str) or a Python value."""

# The members an SNS notification and an EventBridge event always carry: a body is taken
# for one only when it has them all, so a user's own message is never mistaken for one.
_SNS_MEMBERS = ("Type", "MessageId", "TopicArn", "Message")
_EVENTBRIDGE_MEMBERS = ("id", "source", "detail-type", "detail")


def raw(event: Event) -> bytes:
    """The event's data as it is (JSON text)."""
    return event.data


def _document(event: Event) -> Any:
    try:
        return json.loads(event.data, parse_float=Decimal)
    except ValueError as exc:
        raise DecodeError(f"event {event.key}: data is not valid JSON ({exc})") from None


def sns(event: Event) -> str:
    """The `Message` of an SNS notification carried in the event's data (SNS to SQS)."""
    doc = _document(event)
    if not isinstance(doc, dict) or not isinstance(doc.get("Message"), str):
        raise DecodeError(f"event {event.key}: data is not an SNS notification with a Message")
    message: str = doc["Message"]
    return message


def eventbridge(event: Event) -> Any:
    """The `detail` of a whole EventBridge event carried in the event's data."""
    doc = _document(event)
    if not isinstance(doc, dict) or "detail" not in doc:
        raise DecodeError(f"event {event.key}: data is not an EventBridge event with a detail")
    return doc["detail"]


def dynamodb_image(event: Event, which: str) -> dict[str, Any]:
    """Image `which` (NewImage or OldImage) of a DynamoDB Streams change, as Python values."""
    doc = _document(event)
    body = doc.get("dynamodb") if isinstance(doc, dict) else None
    image = body.get(which) if isinstance(body, dict) else None
    if not isinstance(image, dict):
        raise DecodeError(f"event {event.key}: the DynamoDB Streams change has no {which}")
    try:
        return {name: _attribute(value) for name, value in image.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DecodeError(
            f"event {event.key}: undecodable {which} ({type(exc).__name__})"
        ) from None


def dynamodb_new_image(event: Event) -> dict[str, Any]:
    """The new image of a DynamoDB Streams change (the stream must carry new images)."""
    return dynamodb_image(event, "NewImage")


def dynamodb_old_image(event: Event) -> dict[str, Any]:
    """The old image of a DynamoDB Streams change (the stream must carry old images)."""
    return dynamodb_image(event, "OldImage")


def _dynamodb_auto(event: Event) -> dict[str, Any]:
    # A REMOVE has no new image: its payload is what was removed.
    removed = event.type == "aws.dynamodb.REMOVE"
    return dynamodb_image(event, "OldImage" if removed else "NewImage")


def _attribute(typed: Mapping[str, Any]) -> Any:
    """One DynamoDB typed attribute value (`{"N": "1.5"}`) as Python, exactly."""
    ((kind, value),) = typed.items()
    if kind == "S":
        return str(value)
    if kind == "N":
        return Decimal(value)
    if kind == "B":
        return base64.b64decode(value, validate=True)
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _attribute(v) for k, v in value.items()}
    if kind == "L":
        return [_attribute(v) for v in value]
    if kind == "SS":
        return {str(v) for v in value}
    if kind == "NS":
        return {Decimal(v) for v in value}
    if kind == "BS":
        return {base64.b64decode(v, validate=True) for v in value}
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def _sqs_auto(event: Event) -> Any:
    data = event.data
    if data[:1] != b"{":
        return data
    # Cheap looks before parsing: most bodies are neither.
    if b'"TopicArn"' in data:
        doc = _document(event)
        if isinstance(doc, dict) and all(m in doc for m in _SNS_MEMBERS):
            message = doc["Message"]
            return message if isinstance(message, str) else data
    elif b'"detail-type"' in data:
        doc = _document(event)
        if isinstance(doc, dict) and all(m in doc for m in _EVENTBRIDGE_MEMBERS):
            return doc["detail"]
    return data


def auto(event: Event) -> Any:
    """The payload by the event's kind: unwrapped where a known envelope wraps it."""
    kind = event.type
    if kind == "aws.sqs.message":
        return _sqs_auto(event)
    if kind.startswith("aws.dynamodb."):
        return _dynamodb_auto(event)
    return event.data


def payload_document(payload: Any) -> Any:
    """An envelope's result as a Python value: JSON text parsed with exact decimals."""
    if type(payload) is bytes or type(payload) is str:
        try:
            return json.loads(payload, parse_float=Decimal)
        except ValueError as exc:
            raise DecodeError(f"the payload is not valid JSON ({exc})") from None
    return payload


# -- trace context inside a body (transports without message attributes) ----------------
#
# Kinesis records and the Azure Queue envelope have no metadata of their own, so the W3C
# `traceparent` travels as the first member of the JSON object body:
# `{"traceparent":"00-<32 hex>-<16 hex>-<2 hex>",...}`. Being first, a decoder reads it
# with one prefix comparison and a slice, never parsing the body (decoders are hot).

_TRACE_PREFIX = b'{"traceparent":"'
_TRACEPARENT_LENGTH = 55
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_fields(attributes: Mapping[str, str] | None) -> dict[str, str]:
    """The W3C trace context (`traceparent`, `tracestate`) among `attributes`, if valid."""
    if not attributes:
        return {}
    parent = attributes.get("traceparent")
    if not isinstance(parent, str) or not _TRACEPARENT.fullmatch(parent):
        return {}
    found = {"traceparent": parent}
    state = attributes.get("tracestate")
    if isinstance(state, str) and state and state.isascii() and len(state) <= 512:
        found["tracestate"] = state
    return found


def with_leading_traceparent(body: str, attributes: Mapping[str, str] | None) -> str:
    """A JSON object body with the attributes' `traceparent` as its first member.

    Any other body (an array, a string, an object already naming `traceparent`, or no
    valid trace context) is returned as it is.
    """
    parent = trace_fields(attributes).get("traceparent")
    if parent is None or not body.startswith("{") or body.startswith('{"traceparent"'):
        return body
    rest = body[1:]
    return '{"traceparent":"' + parent + ('",' if rest != "}" else '"') + rest


def leading_traceparent(data: bytes) -> str | None:
    """The `traceparent` a body carries as its first member (`with_leading_traceparent`)."""
    if not data.startswith(_TRACE_PREFIX):
        return None
    end = len(_TRACE_PREFIX) + _TRACEPARENT_LENGTH
    if data[end : end + 1] != b'"':
        return None
    try:
        parent = data[len(_TRACE_PREFIX) : end].decode("ascii")
    except UnicodeDecodeError:
        return None
    return parent if _TRACEPARENT.fullmatch(parent) else None
