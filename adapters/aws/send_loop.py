"""The send loop the message sinks (SQS, Kinesis, EventBridge) share: re-send only failures.

Messages are at-least-once by nature: a batch that is written again after a crash is
sent again. Every message carries the output's `output_id` so consumers can drop
repeats (a FIFO queue does so itself, through the deduplication id).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onceflow.adapters.aws.sdk import ClientOnFirstUse
from onceflow.errors import OutputRejected
from onceflow.records import Output
from onceflow.retry import Backoff, RetryPolicy
from onceflow.serialization import dumps

__all__ = ["Entry", "MessageSink", "SendFailed", "batches", "encode", "send_all"]


class SendFailed(RuntimeError):
    """Some entries were still refused after every retry (throttling, service errors)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One output and its encoded body."""

    output: Output
    body: bytes


def encode(
    outputs: Sequence[Output],
    limit: int,
    what: str,
    overhead: Callable[[Output], int] | None = None,
) -> list[Entry]:
    """Each output's JSON; outputs over `limit` bytes are rejected before anything is sent.

    `overhead` is what else of the message counts towards the limit (attributes, keys).
    """
    entries = [Entry(o, dumps(o.value).encode()) for o in outputs]
    too_big = {
        e.output.output_id: f"{size} bytes is over the {limit}-byte {what} limit"
        for e in entries
        if (size := len(e.body) + (overhead(e.output) if overhead else 0)) > limit
    }
    if too_big:
        raise OutputRejected(too_big)
    return entries


def batches(entries: Sequence[Entry], count: int, size: int) -> list[list[Entry]]:
    """Consecutive batches of at most `count` entries and `size` bytes."""
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    total = 0
    for entry in entries:
        weight = len(entry.body) + 256  # attributes and keys count towards the limit too
        if current and (len(current) >= count or total + weight > size):
            batches.append(current)
            current, total = [], 0
        current.append(entry)
        total += weight
    if current:
        batches.append(current)
    return batches


def send_all(
    batch: list[Entry],
    send: Callable[[list[Entry]], tuple[list[Entry], dict[str, str]]],
    retry: RetryPolicy,
    what: str,
) -> None:
    """Send a batch; re-send only the entries the service refused as transient."""
    pending = batch
    attempt = 0
    while True:
        attempt += 1
        pending, permanent = send(pending)
        if permanent:
            raise OutputRejected(permanent)
        if not pending:
            return
        if retry.exhausted(attempt):
            raise SendFailed(f"{what}: {len(pending)} entries still refused after {attempt} tries")
        time.sleep(retry.delay(attempt))


def default_retry() -> RetryPolicy:
    """Re-sends of refused entries (throttling, service errors)."""
    return RetryPolicy(attempts=8, backoff=Backoff(base=0.05, cap=2.0))


class MessageSink:
    """What the message sinks share: a client made on first use and a retry policy."""

    service = ""
    client = ClientOnFirstUse()  # made for `service` on first use
    max_message_bytes = 0
    """The longest message body (JSON) the service takes, with room for the rest of the
    message; the pipeline fits dead letters to it (`onceflow.dead_letters.fit_letter`)."""

    def __init__(self, client: Any, retry: RetryPolicy | None) -> None:
        self._client = client
        self.retry = retry or default_retry()
        """Re-sends of the entries the service refused as transient."""
