"""Running the processor on one event: one attempt, its outputs, and what a failure means."""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from pydantic import ValidationError

from onceflow.batch import Item, State, describe, log_extra
from onceflow.errors import DecodeError, PermanentError
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.identity import output_id
from onceflow.interfaces import Clock, Metrics
from onceflow.records import InvalidRecord, Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import UnstorableValue, to_plain

__all__ = ["Attempts", "summary"]

log = logging.getLogger("onceflow")


class Attempts:
    """Calls the processor for an item and settles the item by what happened.

    Sync and async processors share this one path: `attempt` starts the call and, for
    an `async def` processor, returns what finishes it, for the caller to await.
    """

    def __init__(
        self,
        process: Callable[[Event], Any],
        *,
        retry: RetryPolicy,
        permanent: tuple[type[BaseException], ...],
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.process = process
        self.is_async = inspect.iscoroutinefunction(process)
        self.retry = retry
        self.permanent = permanent
        self.clock = clock
        self.metrics = metrics

    def attempt(self, item: Item, now: float) -> Awaitable[None] | None:
        """Run one attempt; for an async processor, the awaitable that completes it."""
        record = item.record
        item.attempts += 1
        if item.first_attempt_at is None:
            item.first_attempt_at = now
        try:
            if isinstance(record, InvalidRecord):
                raise DecodeError(record.reason)
            produced = self.process(record)
            if self.is_async:
                return self._finish(item, produced)
            if type(produced) is not dict and inspect.isawaitable(produced):
                raise PermanentError(
                    "process() returned an awaitable but is not declared `async def`; "
                    "declare it async so the pipeline awaits it"
                )
            item.outputs = outputs_of(item, produced)
        except Exception as exc:
            self.failed(item, exc)
        else:
            item.state = State.DONE
        return None

    async def _finish(self, item: Item, pending: Awaitable[Any]) -> None:
        try:
            item.outputs = outputs_of(item, await pending)
        except Exception as exc:
            self.failed(item, exc)
        else:
            item.state = State.DONE

    def failed(self, item: Item, exc: Exception) -> None:
        """Dead-letter the item on a permanent error or its last attempt; else schedule a retry."""
        item.error = exc
        item.error_tb = traceback.format_exc()
        permanent = isinstance(exc, self.permanent)
        text = summary(exc)
        if permanent or self.retry.exhausted(item.attempts):
            why = "permanent error" if permanent else f"failed {item.attempts} attempts"
            if isinstance(item.record, InvalidRecord):
                kind = FailureKind.INVALID_RECORD
            elif permanent:
                kind = FailureKind.PERMANENT_ERROR
            else:
                kind = FailureKind.ATTEMPTS_EXHAUSTED
            item.dead(kind, f"{describe(item)}: {text} ({why})")
            return
        self.metrics.count("retries")
        item.ready_at = self.clock.now() + self.retry.delay(item.attempts)
        log.info(
            "%s: attempt %d failed, retrying: %s",
            describe(item),
            item.attempts,
            text,
            extra=log_extra(item),
        )


def outputs_of(item: Item, produced: Any) -> list[Output]:
    """What the processor returned for the item, as outputs with their identities."""
    if produced is None:
        return []
    record = item.record
    key = item.key
    time = getattr(record, "time", None)
    if type(produced) is dict:
        # The common case, one dict, skips the general loop below.
        try:
            plain = to_plain(produced)
        except UnstorableValue as exc:
            raise UnstorableValue(f"output 0 cannot be stored: {exc}") from None
        return [
            Output(
                output_id(key, 0), key, record.id, 0, plain, record.partition_key, time,
                record.sequence,
            )
        ]  # fmt: skip
    values = list(produced) if isinstance(produced, list | tuple | Iterator) else [produced]
    outputs = []
    for index, value in enumerate(values):
        try:
            plain = to_plain(value)
        except UnstorableValue as exc:
            raise UnstorableValue(f"output {index} cannot be stored: {exc}") from None
        outputs.append(
            Output(
                output_id=output_id(key, index),
                event_key=key,
                event_id=record.id,
                index=index,
                value=plain,
                partition_key=record.partition_key,
                time=time,
                sequence=record.sequence,
            )
        )
    return outputs


def summary(exc: BaseException) -> str:
    """One line for an error; validation errors list fields and causes, never the input."""
    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:10]
        )
        return f"ValidationError: {exc.error_count()} invalid field(s) in {exc.title}: {fields}"
    return f"{type(exc).__name__}: {exc}"
