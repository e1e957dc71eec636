"""The dead-letter record: the original event, the error, the attempts, the timestamps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from onceflow.event import Event
from onceflow.identity import dead_letter_id
from onceflow.records import InvalidRecord, Output
from onceflow.serialization import to_plain

__all__ = ["dead_letter"]


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
) -> Output:
    """The dead-letter output for `record` (whose idempotency key is `key`)."""
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
    return Output(
        output_id=dead_letter_id(key),
        event_key=key,
        event_id=record.id,
        index=0,
        value=to_plain(letter),
        partition_key=record.partition_key,
    )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
