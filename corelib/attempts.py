"""Running the processor on one event: one attempt, its outputs, and what a failure means."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from onceflow.batch import Item, State, describe, log_extra
from onceflow.breaker import CircuitBreaker, RateLimit
from onceflow.errors import DecodeError, PermanentError
from onceflow.event import FIELDS_IN_DICT, Event
from onceflow.failures import FailureKind, safe_text, safe_traceback
from onceflow.identity import first_output_id, output_id
from onceflow.interfaces import Clock, Metrics
from onceflow.records import InvalidRecord, Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import UnstorableValue, to_plain

__all__ = ["Attempts", "summary"]

log = logging.getLogger("onceflow")

_tuple = tuple.__new__
_DONE = State.DONE
_FIELDED: type | None = Event if FIELDS_IN_DICT else None
"""The record type whose fields are read from its `__dict__` (None: read by name)."""


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
        max_deliveries: int,
        permanent: tuple[type[BaseException], ...],
        clock: Clock,
        metrics: Metrics,
        breaker: CircuitBreaker | None,
        rate: RateLimit | None = None,
        platform_counts: bool = True,
    ) -> None:
        self.process = process
        self.is_async = inspect.iscoroutinefunction(process)
        self.retry = retry
        self.max_deliveries = max_deliveries
        self.permanent = permanent
        self.clock = clock
        self.metrics = metrics
        self.breaker = breaker
        self.held_back = 0
        """Events the open circuit handed back in the current batch."""
        self.rate = rate
        """Paces processor calls (a token bucket), when set."""
        self.platform_counts = platform_counts
        """Whether a platform's delivery count (SQS ApproximateReceiveCount) may raise the
        store's: only for a store that misses deliveries (see `deliveries`)."""

    def attempt(self, item: Item, now: float) -> Awaitable[None] | None:
        """Run one attempt; for an async processor, the awaitable that completes it."""
        record = item.record
        breaker = self.breaker
        alert = breaker is not None and breaker.alert
        if alert and breaker is not None and not breaker.allow(now):
            self.hold_back(item)
            return None
        item.attempts += 1
        if item.first_attempt_at is None:
            item.first_attempt_at = now
        # An Event's every attribute read goes through pydantic's __getattr__ hook, and so
        # does isinstance's __class__ fallback: the exact type is checked first, for free.
        kind = type(record)
        try:
            if kind is not Event and isinstance(record, InvalidRecord):
                raise DecodeError(record.reason)
            event: Event = record  # type: ignore[assignment]  # no InvalidRecord gets here
            produced = self.process(event)
            if type(produced) is dict:
                # The common case, one dict, without the general `outputs_of`. The output
                # is built as the tuple it is: a named tuple's own __new__ is one more
                # Python call per event (tests/test_pipeline.py holds it equal to Output(...)).
                try:
                    plain = to_plain(produced)
                except UnstorableValue as exc:
                    raise UnstorableValue(f"output 0 cannot be stored: {exc}") from None
                key = item.key
                if kind is _FIELDED:
                    # The fields from the instance dict: one hooked lookup, not four.
                    f = event.__dict__
                    output = _tuple(Output, (
                        first_output_id(key), key, f["id"], 0, plain, f["partition_key"],
                        f["time"], f["sequence"], None,
                    ))  # fmt: skip
                else:
                    output = _tuple(Output, (
                        first_output_id(key), key, event.id, 0, plain, event.partition_key,
                        event.time, event.sequence, None,
                    ))  # fmt: skip
                # A one-tuple, not a list: smaller, and made from the interpreter's free list.
                item.outputs = (output,)
            elif inspect.isawaitable(produced):
                if self.is_async:
                    return self._finish(item, produced)
                raise PermanentError(
                    "process() returned an awaitable but is not declared `async def`; "
                    "declare it async so the pipeline awaits it"
                )
            else:
                item.outputs = outputs_of(item, produced)
        except Exception as exc:
            self.failed(item, exc)
        else:
            item.state = _DONE
            if alert and breaker is not None:
                breaker.succeeded()
        return None

    async def _finish(self, item: Item, pending: Awaitable[Any]) -> None:
        try:
            item.outputs = outputs_of(item, await pending)
        except Exception as exc:
            self.failed(item, exc)
        else:
            item.state = State.DONE
            if self.breaker is not None and self.breaker.alert:
                self.breaker.succeeded()

    def start_batch(self) -> None:
        """Reset the per-batch counts (events held back, the breaker's ratio)."""
        self.held_back = 0
        if self.breaker is not None:
            self.breaker.start_batch()

    def hold_back(self, item: Item) -> None:
        """Hand the item back unprocessed because the circuit is open."""
        self.held_back += 1
        breaker = self.breaker
        cause = f" ({breaker.cause})" if breaker is not None and breaker.cause else ""
        item.fail(
            FailureKind.CIRCUIT_OPEN,
            f"{describe(item)}: held back while the circuit is open after an outage{cause}",
        )

    def failed(self, item: Item, exc: Exception) -> None:
        """Dead-letter the item on a permanent error or its last attempt; else schedule a retry."""
        item.error = exc
        item.error_tb = safe_traceback(exc)
        text = summary(exc)
        if isinstance(exc, self.permanent):
            if self.breaker is not None and self.breaker.alert:
                self.breaker.succeeded()  # a poison pill: the downstream did answer
            kind = (
                FailureKind.INVALID_RECORD
                if isinstance(item.record, InvalidRecord)
                else FailureKind.PERMANENT_ERROR
            )
            item.dead(kind, f"{describe(item)}: {text} (permanent error)")
            return
        breaker = self.breaker
        if breaker is not None:
            if breaker.probing and item.key not in breaker.probed:
                # A failed probe says the outage goes on; it is no fault of this event, the
                # first time. A key whose probe failed before is charged: it may be the
                # poison pill, and the next probe tries another key.
                item.probe_failed = True
            if breaker.failed(item.key, text, self.clock.now()):
                self.metrics.count("circuit_open")
        if self.retry.exhausted(item.attempts):
            deliveries = self.deliveries(item)
            if deliveries >= self.max_deliveries:
                item.dead(
                    FailureKind.DELIVERIES_EXHAUSTED,
                    f"{describe(item)}: {text} (failed {deliveries} deliveries of "
                    f"{item.attempts} attempts each)",
                )
            else:
                # An outage, not a poison pill: the event comes again later.
                item.fail(
                    FailureKind.TRANSIENT,
                    f"{describe(item)}: {text} (delivery {deliveries} of at most "
                    f"{self.max_deliveries}; it comes again)",
                )
                log.warning("%s", item.reason, extra=log_extra(item))
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

    def deliveries(self, item: Item) -> int:
        """How many times the item's event has been delivered, for `max_deliveries`.

        The one rule: a store that counts every delivery (`counts_every_delivery`: crashed
        ones too) is authoritative, since it also refunds what the circuit breaker handed
        back, which a platform's count (SQS receive count, Queue dequeue count) includes;
        for any other store the higher of the two counts decides.
        """
        counted = item.claim.deliveries if item.claim is not None else 1
        if not self.platform_counts:
            return counted
        return max(counted, getattr(item.record, "delivery_count", 1))


def outputs_of(item: Item, produced: Any) -> list[Output]:
    """What the processor returned for the item, as outputs with their identities."""
    if produced is None:
        return []
    record = item.record
    key = item.key
    time = getattr(record, "time", None)
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
    """One line for an error, never a payload value (see `failures.safe_text`)."""
    return safe_text(exc)
