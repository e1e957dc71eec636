"""The dead-letter record: the original event, the error, the attempts, the timestamps.

A letter fits its sink: a dead-letter sink that declares `max_message_bytes` (an SQS
queue's 256 KiB, a Kinesis record's 1 MiB, an EventBridge entry's 256 KB) gets letters
whose JSON is at most that long. A letter over the limit keeps everything but the
payload (the event's `data`/`data_base64`, an invalid record's `raw`), which is cut to
the prefix that fits and described under `truncated`: the field, the payload's original
size in bytes and its SHA-256, so the full payload can be found and checked in the
source. Without that, a poison event of 200 KB would make a letter the dead-letter queue
refuses, and the event would fail on every delivery.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

from onceflow.event import Event
from onceflow.identity import dead_letter_id
from onceflow.records import InvalidRecord, Output
from onceflow.serialization import dumps, to_plain

__all__ = ["dead_letter", "fit_letter"]

_PAYLOAD_FIELDS = ("data", "data_base64", "raw")


def dead_letter(
    record: Event | InvalidRecord,
    message: str,
    *,
    key: str,
    now: float,
    pipeline: str,
    error_type: str = "Error",
    traceback: str = "",
    attempts: int = 0,
    first_attempt_at: float | None = None,
    max_bytes: int | None = None,
) -> Output:
    """The dead-letter output for `record` (whose idempotency key is `key`).

    With `max_bytes`, the letter is fitted to that many bytes of JSON (see `fit_letter`).
    """
    if isinstance(record, InvalidRecord):
        original: dict[str, Any] = {
            "id": record.id,
            "source": record.source,
            "raw": record.raw,
            "locator": record.locator,
            "partition_key": record.partition_key,
            "sequence": record.sequence,
            "attributes": dict(record.attributes),
        }
    else:
        original = record.to_cloudevent()
    letter = {
        "key": key,
        "event": original,
        "error_type": error_type,
        "message": message,
        "traceback": traceback,
        "attempts": attempts,
        "first_attempt_at": _iso(first_attempt_at or now),
        "failed_at": _iso(now),
        "pipeline": pipeline,
    }
    value = to_plain(letter)
    if max_bytes is not None:
        payload = record.raw if isinstance(record, InvalidRecord) else record.data
        value = fit_letter(value, payload, max_bytes)
    return Output(
        output_id=dead_letter_id(key),
        event_key=key,
        event_id=record.id,
        index=0,
        value=value,
        partition_key=record.partition_key,
    )


def fit_letter(letter: dict[str, Any], payload: bytes, max_bytes: int) -> dict[str, Any]:
    """`letter` as it is when its JSON fits in `max_bytes`, else with its payload truncated.

    `payload` is the event's data (an invalid record's raw bytes). The letter's payload
    field gives way to `truncated`: {"field", "size", "sha256", "prefix_base64"}, the
    prefix as long as fits. A letter still too long without any payload also has its
    traceback and message cut to fit (`truncated.cut` names them).
    """
    if _size(letter) <= max_bytes:
        return letter
    event = {k: v for k, v in letter["event"].items() if k not in _PAYLOAD_FIELDS}
    field = next((name for name in _PAYLOAD_FIELDS if name in letter["event"]), "data")
    truncated: dict[str, Any] = {
        "field": field,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "prefix_base64": "",
        "limit": max_bytes,
    }
    fitted = {**letter, "event": event, "truncated": truncated}
    room = max_bytes - _size(fitted)
    cut: list[str] = []
    for name in ("traceback", "message"):
        if room >= 0:
            break
        text = str(fitted[name])
        keep = max(0, len(text.encode()) + room - 64)
        fitted[name] = text.encode()[:keep].decode("utf-8", "ignore") + " [cut]"
        cut.append(name)
        room = max_bytes - _size({**fitted, "truncated": {**truncated, "cut": cut}})
    if cut:
        truncated["cut"] = cut
    if room > 0:
        # Base64 takes 4 characters for 3 bytes.
        prefix = payload[: room // 4 * 3]
        truncated["prefix_base64"] = base64.b64encode(prefix).decode("ascii")
        while _size(fitted) > max_bytes and prefix:
            prefix = prefix[: len(prefix) * 9 // 10]
            truncated["prefix_base64"] = base64.b64encode(prefix).decode("ascii")
    return fitted


def _size(value: Any) -> int:
    return len(dumps(value).encode("utf-8", "backslashreplace"))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
