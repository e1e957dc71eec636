"""The exactly-once runner: claim, process, commit, retry, dead-letter."""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
from pydantic import ValidationError

from onceflow.clock import SystemClock
from onceflow.errors import ConfigurationError, DecodeError, OutputRejected, PermanentError
from onceflow.event import Event
from onceflow.failures import Failure, FailureKind
from onceflow.interfaces import AtomicSink, Clock, IdempotencyStore, Metrics, Processor, Sink
from onceflow.metrics import NoopMetrics
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    InvalidRecord,
    Outcome,
    OutcomeStatus,
    Output,
)
from onceflow.retry import RetryPolicy
from onceflow.serialization import UnstorableValue, to_plain

__all__ = [
    "DEFAULT_PERMANENT",
    "BatchResult",
    "Pipeline",
    "Step",
    "StepHook",
    "built_once",
]

log = logging.getLogger("onceflow")

Record = Event | InvalidRecord

DEFAULT_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    ValidationError,
    UnicodeDecodeError,
    json.JSONDecodeError,
    UnstorableValue,
)


# Failures worth a log line even when an error was already logged for the event.
_ALWAYS_LOGGED = frozenset(
    {FailureKind.LEASE_LOST, FailureKind.LEASED_ELSEWHERE, FailureKind.OUT_OF_TIME}
)

_SUCCEEDED = tuple(Outcome(OutcomeStatus.SUCCEEDED, n) for n in range(8))


class Step(enum.Enum):
    """Points in a batch's life where a test may inject a crash."""

    AFTER_CLAIM = "after_claim"
    AFTER_PROCESS = "after_process"
    AFTER_SINK_WRITE = "after_sink_write"
    BEFORE_COMPLETE = "before_complete"
    AFTER_COMPLETE = "after_complete"


StepHook = Callable[[Step, Sequence[str]], None]
"""Called with the step and the keys it concerns; raising from it models a crash there."""


@dataclass
class BatchResult:
    """What happened to each record of a batch, by event id."""

    processed: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Ids to deliver again: leased elsewhere, out of time, lease lost, or no dead-letter sink."""
    dead_lettered: list[str] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    """Why each failed or dead-lettered id ended that way: a kind and a sentence."""

    @property
    def reasons(self) -> dict[str, str]:
        """The sentence of each failure, by id (for people: logs, messages, reports)."""
        return {event_id: failure.text for event_id, failure in self.failures.items()}

    @property
    def ok(self) -> bool:
        """True when nothing needs delivering again."""
        return not self.failed

    def absorb(self, other: BatchResult) -> None:
        """Add another result's ids and reasons to this one, in place."""
        self.processed.extend(other.processed)
        self.duplicates.extend(other.duplicates)
        self.failed.extend(other.failed)
        self.dead_lettered.extend(other.dead_lettered)
        self.failures.update(other.failures)

    def merge(self, other: BatchResult) -> BatchResult:
        """The two results together (for totals over many batches)."""
        return BatchResult(
            processed=self.processed + other.processed,
            duplicates=self.duplicates + other.duplicates,
            failed=self.failed + other.failed,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            failures={**self.failures, **other.failures},
        )


class _State(enum.Enum):
    PENDING = 0
    DONE = 1
    DEAD = 2
    FAILED = 3
    DUPLICATE = 4


@dataclass(slots=True, eq=False)
class _Item:
    record: Record
    key: str
    claim: Claim | None = None
    state: _State = _State.PENDING
    attempts: int = 0
    ready_at: float = 0.0
    outputs: Sequence[Output] = ()
    error: BaseException | None = None
    error_tb: str = ""
    reason: str = ""
    kind: FailureKind = FailureKind.NOT_PROCESSED
    first_attempt_at: float | None = None
    first: _Item | None = None  # for an in-batch duplicate: the occurrence that counts


class Pipeline:
    """Runs a processor over batches of events so each event's effect is committed exactly once."""

    def __init__(
        self,
        processor: Processor | Callable[[Event], Any],
        sink: Sink,
        store: IdempotencyStore,
        dead_letter: Sink | None = None,
        *,
        ordered: bool = False,
        retry: RetryPolicy | None = None,
        backend_retry: RetryPolicy | None = None,
        key: Callable[[Event], str] | None = None,
        lease_seconds: float = 300.0,
        time_budget: float | None = None,
        concurrency: int = 64,
        permanent_errors: tuple[type[BaseException], ...] = DEFAULT_PERMANENT,
        check_payload: bool = False,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        on_step: StepHook | None = None,
        name: str = "onceflow",
    ) -> None:
        process = getattr(processor, "process", None)
        if process is None and callable(processor):
            process = processor
        if not callable(process):
            raise ConfigurationError(
                f"{type(processor).__name__} has no process(event) method; "
                "give the pipeline an object with one, or a function"
            )
        self.processor = processor
        self.sink = sink
        self.store = store
        self.dead_letter = dead_letter
        self.ordered = ordered
        self.retry = retry or RetryPolicy()
        """Attempts and backoff for an event whose processing failed transiently."""
        self.backend_retry = backend_retry or RetryPolicy()
        """Attempts and backoff for a store or sink call that failed transiently."""
        self.key = key
        self.lease_seconds = lease_seconds
        self.time_budget = time_budget
        self.permanent_errors = permanent_errors
        self.check_payload = check_payload
        self.clock: Clock = clock or SystemClock()
        self.metrics: Metrics = metrics or NoopMetrics()
        self.on_step = on_step
        self.name = name
        self._process: Callable[[Event], Any] = process
        self._is_async = inspect.iscoroutinefunction(process)
        self._limiter = anyio.CapacityLimiter(max(1, concurrency))
        self._setup_done = False

    # -- public entry points -------------------------------------------------------------

    def run_batch(self, records: Iterable[Record], *, deadline: float | None = None) -> BatchResult:
        """Process one batch from synchronous code (scripts, Lambda handlers)."""
        batch = list(records)
        return anyio.run(lambda: self.process_batch(batch, deadline=deadline))

    async def process_batch(
        self, records: Iterable[Record], *, deadline: float | None = None
    ) -> BatchResult:
        """Process one batch; `deadline` (in the pipeline's clock) stops new work before it."""
        started = time.perf_counter()
        await self.setup()
        if self.time_budget is not None:
            budget_end = self.clock.now() + self.time_budget
            deadline = budget_end if deadline is None else min(deadline, budget_end)
        items, order = self._items(records)
        self.metrics.count("received", len(order))
        fresh = [item for item in items if item.first is None]
        if fresh:
            claimed = await self._claim(fresh)
            if claimed:
                self._hook(Step.AFTER_CLAIM, fresh)
                await self._run_lanes(fresh, deadline)
                self._hook(Step.AFTER_PROCESS, fresh)
                await self._commit(fresh)
                await self._release([i for i in fresh if i.state is _State.FAILED])
        result = self._result(order)
        self.metrics.timing("batch_seconds", time.perf_counter() - started)
        return result

    async def redeliver(
        self,
        records: Iterable[Record],
        *,
        rounds: int | None = None,
        deadline: float | None = None,
    ) -> BatchResult:
        """Process a batch, then deliver its failed records again until they settle.

        For adapters whose platform will not deliver a failure again soon (an Event Hubs
        checkpoint, a file read once): after each round the failed records wait the event
        retry policy's backoff and come again, counted as another delivery, up to `rounds`
        more times or until `deadline` (in the pipeline's clock). The result holds every
        record once, in its last state; what is still failed is the caller's to settle.
        """
        batch = list(records)
        result = await self.process_batch(batch, deadline=deadline)
        settled = BatchResult(
            processed=result.processed,
            duplicates=result.duplicates,
            dead_lettered=result.dead_lettered,
            failures={i: f for i, f in result.failures.items() if not f.kind.redelivers},
        )
        failed, failures = result.failed, result.failures
        round_ = 0
        clock = self.clock
        while failed and (rounds is None or round_ < rounds):
            round_ += 1
            wait = self.retry.delay(round_)
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - clock.now()))
            await clock.sleep(wait)
            if deadline is not None and clock.now() >= deadline:
                break
            wanted = set(failed)
            again = await self.process_batch(
                [_delivered_again(r, round_) for r in batch if r.id in wanted], deadline=deadline
            )
            settled.processed += again.processed
            settled.duplicates += again.duplicates
            settled.dead_lettered += again.dead_lettered
            failed, failures = again.failed, again.failures
            settled.failures.update({i: f for i, f in failures.items() if not f.kind.redelivers})
        settled.failed = list(failed)
        settled.failures.update({i: failures[i] for i in failed if i in failures})
        return settled

    async def setup(self) -> None:
        """Run the processor's optional `setup()` once for this worker."""
        if self._setup_done:
            return
        hook = getattr(self.processor, "setup", None)
        if callable(hook):
            outcome = hook()
            if inspect.isawaitable(outcome):
                await outcome
        self._setup_done = True

    # -- 1. keys and claims --------------------------------------------------------------

    def _items(self, records: Iterable[Record]) -> tuple[list[_Item], list[_Item]]:
        """Every record as an item (in delivery order) and the distinct-key items."""
        by_key: dict[str, _Item] = {}
        order: list[_Item] = []
        custom_key = self.key
        for record in records:
            if custom_key is None or isinstance(record, InvalidRecord):
                key = record.key
            else:
                try:
                    key = custom_key(record)
                except Exception as exc:
                    # The key function cannot read this event: it can never be processed.
                    invalid = InvalidRecord(
                        id=record.id,
                        source=record.source,
                        reason=f"the pipeline's key function failed: {exc!r}",
                        raw=record.data,
                        partition_key=record.partition_key,
                        sequence=record.sequence,
                    )
                    item = _Item(invalid, invalid.key)
                    item.first = by_key.setdefault(item.key, item)
                    if item.first is item:
                        item.first = None
                    order.append(item)
                    continue
            item = _Item(record, key)
            earlier = by_key.get(key)
            if earlier is not None:
                item.first = earlier
            else:
                by_key[key] = item
            order.append(item)
        return list(by_key.values()), order

    async def _claim(self, items: list[_Item]) -> bool:
        keys = [item.key for item in items]
        try:
            claims = await self._retrying(
                "claim", lambda: self.store.claim(keys, self.lease_seconds)
            )
        except Exception as exc:
            reason = f"idempotency store unavailable: {type(exc).__name__}: {exc}"
            log.error("claim failed for %d keys: %s", len(keys), reason)
            for item in items:
                self._fail(item, FailureKind.STORE_FAILED, reason)
            return False
        if len(claims) != len(items):
            raise ConfigurationError(
                f"{type(self.store).__name__}.claim returned {len(claims)} claims for "
                f"{len(items)} keys"
            )
        new, completed = ClaimStatus.NEW, ClaimStatus.COMPLETED
        for item, claim in zip(items, claims, strict=True):
            item.claim = claim
            status = claim.status
            if status is new:
                continue
            if status is completed:
                item.state = _State.DUPLICATE
                self._check_reuse(item)
            else:
                self._fail(
                    item, FailureKind.LEASED_ELSEWHERE, "another worker holds this key's lease"
                )
        return True

    def _check_reuse(self, item: _Item) -> None:
        stored = item.claim.outcome.fingerprint if item.claim and item.claim.outcome else None
        if stored is None or not self.check_payload or isinstance(item.record, InvalidRecord):
            return
        if stored != _fingerprint(item.record.data):
            self.metrics.count("key_reused")
            log.warning(
                "key %s was completed earlier for a different payload; the new one is skipped",
                item.key,
                extra=_log_extra(item),
            )

    # -- 2. processing, in lanes ----------------------------------------------------------

    async def _run_lanes(self, items: list[_Item], deadline: float | None) -> None:
        pending = [item for item in items if item.state is _State.PENDING]
        if not self.ordered and not self._is_async and pending:
            # Fast path: every first attempt in one plain loop; only retries need lanes.
            now = self.clock.now()
            for item in pending:
                if deadline is not None and self.clock.now() >= deadline:
                    break  # the rest are failed below, with the reason
                self._attempt_sync(item, now)
            pending = [item for item in pending if item.state is _State.PENDING]
        # Ordered lanes keep settled items too: a failed one must hold back its successors.
        lanes = self._lanes(items if self.ordered else pending)
        while lanes:
            now = self.clock.now()
            if deadline is not None and now >= deadline:
                for lane in lanes:
                    for item in lane:
                        self._fail(
                            item,
                            FailureKind.OUT_OF_TIME,
                            "time budget ran out before this event was processed",
                        )
                return
            ready = [lane for lane in lanes if lane[0].ready_at <= now]
            if not ready:
                wake = min(lane[0].ready_at for lane in lanes)
                if deadline is not None and wake >= deadline:
                    await self.clock.sleep(max(0.0, deadline - now))
                else:
                    await self.clock.sleep(wake - now)
                continue
            if self._is_async and len(ready) > 1:
                async with anyio.create_task_group() as group:
                    for lane in ready:
                        group.start_soon(self._advance_limited, lane, now, deadline)
            else:
                for lane in ready:
                    await self._advance(lane, now, deadline)
            lanes = [lane for lane in lanes if lane]

    def _lanes(self, items: list[_Item]) -> list[deque[_Item]]:
        if not self.ordered:
            return [deque([item]) for item in items]
        lanes: dict[object, list[_Item]] = {}
        for item in items:
            lane_key = item.record.partition_key
            # Events without a partition key promise no order: each is a lane of its own.
            lanes.setdefault(lane_key if lane_key is not None else item, []).append(item)
        return [deque(_in_sequence(lane)) for lane in lanes.values()]

    async def _advance_limited(
        self, lane: deque[_Item], now: float, deadline: float | None
    ) -> None:
        async with self._limiter:
            await self._advance(lane, now, deadline)

    async def _advance(self, lane: deque[_Item], now: float, deadline: float | None) -> None:
        """Run the lane from its head until it empties, its head must wait, or time runs out."""
        while lane:
            item = lane[0]
            if item.state is _State.PENDING:
                if item.ready_at > now:
                    return
                if deadline is not None and self.clock.now() >= deadline:
                    return  # the caller fails what is left once it sees the deadline
                if self._is_async:
                    await self._attempt(item, now)
                else:
                    self._attempt_sync(item, now)
                if item.state is _State.PENDING:
                    return  # waiting for a retry; in ordered mode the lane waits with it
            if item.state is _State.FAILED and self.ordered:
                lane.popleft()
                for later in lane:
                    self._fail(
                        later,
                        FailureKind.HELD_FOR_ORDER,
                        f"an earlier event of partition {item.record.partition_key!r} "
                        "failed, so this one waits to keep order",
                    )
                lane.clear()
                return
            lane.popleft()

    async def _attempt(self, item: _Item, now: float) -> None:
        record = item.record
        item.attempts += 1
        if item.first_attempt_at is None:
            item.first_attempt_at = now
        try:
            if isinstance(record, InvalidRecord):
                raise DecodeError(record.reason)
            item.outputs = self._outputs(item, await self._process(record))
        except Exception as exc:
            self._failed_attempt(item, exc)
        else:
            item.state = _State.DONE

    def _attempt_sync(self, item: _Item, now: float) -> None:
        record = item.record
        item.attempts += 1
        if item.first_attempt_at is None:
            item.first_attempt_at = now
        try:
            if isinstance(record, InvalidRecord):
                raise DecodeError(record.reason)
            produced = self._process(record)
            if type(produced) is not dict and inspect.isawaitable(produced):
                raise PermanentError(
                    "process() returned an awaitable but is not declared `async def`; "
                    "declare it async so the pipeline awaits it"
                )
            item.outputs = self._outputs(item, produced)
        except Exception as exc:
            self._failed_attempt(item, exc)
        else:
            item.state = _State.DONE

    def _outputs(self, item: _Item, produced: Any) -> list[Output]:
        if produced is None:
            return []
        record = item.record
        if type(produced) is dict:
            # The common case, one dict, skips the general loop below.
            try:
                plain = to_plain(produced)
            except UnstorableValue as exc:
                raise UnstorableValue(f"output 0 cannot be stored: {exc}") from None
            key = item.key
            return [
                Output(
                    key + "#0",
                    key,
                    record.id,
                    0,
                    plain,
                    record.partition_key,
                    getattr(record, "time", None),
                    record.sequence,
                )
            ]
        values = list(produced) if isinstance(produced, list | tuple | Iterator) else [produced]
        outputs = []
        for index, value in enumerate(values):
            try:
                plain = to_plain(value)
            except UnstorableValue as exc:
                raise UnstorableValue(f"output {index} cannot be stored: {exc}") from None
            outputs.append(
                Output(
                    output_id=f"{item.key}#{index}",
                    event_key=item.key,
                    event_id=record.id,
                    index=index,
                    value=plain,
                    partition_key=record.partition_key,
                    time=getattr(record, "time", None),
                    sequence=record.sequence,
                )
            )
        return outputs

    def _failed_attempt(self, item: _Item, exc: Exception) -> None:
        item.error = exc
        item.error_tb = traceback.format_exc()
        permanent = isinstance(exc, self.permanent_errors)
        summary = _summary(exc)
        if permanent or self.retry.exhausted(item.attempts):
            why = "permanent error" if permanent else f"failed {item.attempts} attempts"
            item.reason = f"{_describe(item)}: {summary} ({why})"
            if isinstance(item.record, InvalidRecord):
                item.kind = FailureKind.INVALID_RECORD
            else:
                item.kind = (
                    FailureKind.PERMANENT_ERROR if permanent else FailureKind.ATTEMPTS_EXHAUSTED
                )
            log.warning("%s; dead-lettering", item.reason, extra=_log_extra(item))
            item.state = _State.DEAD
            return
        self.metrics.count("retries")
        item.ready_at = self.clock.now() + self.retry.delay(item.attempts)
        log.info(
            "%s: attempt %d failed, retrying: %s",
            _describe(item),
            item.attempts,
            summary,
            extra=_log_extra(item),
        )

    # -- 3. commit -----------------------------------------------------------------------

    async def _commit(self, items: list[_Item]) -> None:
        """Write outputs and dead letters, then complete their keys (atomically where possible)."""
        main_atomic = self._atomic(self.sink)
        letters_atomic = self._atomic(self.dead_letter)
        done = self._in_state(items, _State.DONE)
        if not main_atomic:
            await self._write(self.sink, done, self._success)
        self._hook(Step.AFTER_SINK_WRITE, done)
        if not letters_atomic:
            await self._write(self.dead_letter, self._dead(items), self._dead_letter_output)
        done = self._in_state(items, _State.DONE)
        if self.on_step is not None:
            self._hook(Step.BEFORE_COMPLETE, done + self._in_state(items, _State.DEAD))
        if main_atomic:
            written = set(self._in_state(items, _State.DEAD))
            await self._write(self.sink, done, self._success, atomic=True)
            # Outputs the sink refused inside the transaction are dead letters now.
            late = [i for i in self._dead(items) if i not in written]
            if late and not letters_atomic:
                await self._write(self.dead_letter, late, self._dead_letter_output)
        dead = self._dead(items)
        if letters_atomic:
            await self._write(self.dead_letter, dead, self._dead_letter_output, atomic=True)
        plain = [] if main_atomic else self._in_state(items, _State.DONE)
        if not letters_atomic:
            plain += self._in_state(items, _State.DEAD)
        if plain:
            completions = [self._completion(item) for item in plain]
            try:
                accepted = await self._retrying(
                    "complete", lambda: self.store.complete(completions)
                )
            except Exception as exc:
                for item in plain:
                    self._fail(
                        item,
                        FailureKind.STORE_FAILED,
                        f"completion failed: {type(exc).__name__}: {exc}",
                    )
            else:
                self._settle(plain, accepted)
        if self.on_step is not None:
            self._hook(Step.AFTER_COMPLETE, self._in_state(items, _State.DONE, _State.DEAD))

    def _atomic(self, sink: Sink | None) -> bool:
        return isinstance(sink, AtomicSink) and sink.commits_with(self.store)

    @staticmethod
    def _in_state(items: list[_Item], *states: _State) -> list[_Item]:
        return [i for i in items if i.state in states]

    def _dead(self, items: list[_Item]) -> list[_Item]:
        """Dead-lettered items; without a dead-letter sink they fail for redelivery instead."""
        dead = self._in_state(items, _State.DEAD)
        if dead and self.dead_letter is None:
            for item in dead:
                self._fail(
                    item,
                    FailureKind.NO_DEAD_LETTER_SINK,
                    f"{item.reason}; no dead-letter sink is configured",
                )
            return []
        return dead

    def _success(self, item: _Item) -> Sequence[Output]:
        return item.outputs

    async def _write(
        self,
        sink: Sink | None,
        items: list[_Item],
        to_outputs: Callable[[_Item], Sequence[Output]],
        *,
        atomic: bool = False,
    ) -> None:
        """Write the items' outputs (and, when atomic, their completions) until all settle."""
        live = items
        while sink is not None and live:
            outputs = [o for item in live for o in to_outputs(item)]
            try:
                if atomic:
                    assert isinstance(sink, AtomicSink)
                    completions = [self._completion(item) for item in live]
                    accepted = await self._retrying(
                        "commit", partial(sink.write_and_complete, self.store, outputs, completions)
                    )
                    self._settle(live, accepted)
                elif outputs:
                    await self._retrying("sink write", partial(sink.write, outputs))
                return
            except OutputRejected as exc:
                live = self._reject(live, exc, letters=sink is self.dead_letter)
            except Exception as exc:
                for item in live:
                    self._fail(
                        item,
                        FailureKind.DEAD_LETTER_REFUSED
                        if sink is self.dead_letter
                        else FailureKind.SINK_FAILED,
                        f"{'commit' if atomic else 'sink write'} failed: "
                        f"{type(exc).__name__}: {exc}",
                    )
                return

    def _reject(self, items: list[_Item], exc: OutputRejected, *, letters: bool) -> list[_Item]:
        """Settle the items whose outputs a sink refused; the others are written again."""
        refused: dict[str, str] = {}
        for output_id, why in exc.rejected.items():
            refused.setdefault(output_id.rsplit("#", 1)[0], why)
        keep: list[_Item] = []
        for item in items:
            reason = refused.get(item.key)
            if reason is None:
                keep.append(item)
            elif letters:
                self._fail(
                    item,
                    FailureKind.DEAD_LETTER_REFUSED,
                    f"the dead-letter sink refused the record: {reason}",
                )
            else:
                item.state = _State.DEAD
                item.kind = FailureKind.OUTPUT_REJECTED
                item.error = exc
                item.error_tb = ""
                item.reason = f"{_describe(item)}: the sink cannot store its output: {reason}"
                log.warning("%s; dead-lettering", item.reason, extra=_log_extra(item))
        if len(keep) == len(items):
            raise ConfigurationError(
                f"{type(exc).__name__} named no output of this batch: {list(exc.rejected)[:3]}"
            )
        return keep

    def _settle(self, items: list[_Item], accepted: Sequence[bool]) -> None:
        for item, ok in zip(items, accepted, strict=True):
            if not ok:
                self._fail(
                    item,
                    FailureKind.LEASE_LOST,
                    "lease lost to another worker before commit; it commits instead",
                )
                self.metrics.count("lease_lost")

    def _completion(self, item: _Item) -> Completion:
        assert item.claim is not None
        record = item.record
        fingerprint = None
        if self.check_payload:
            fingerprint = _fingerprint(
                record.raw if isinstance(record, InvalidRecord) else record.data
            )
        if item.state is _State.DONE:
            count = len(item.outputs)
            if fingerprint is None and count < len(_SUCCEEDED):
                # Outcomes are immutable: share the common ones instead of building each.
                return Completion(item.claim, _SUCCEEDED[count])
            outcome = Outcome(OutcomeStatus.SUCCEEDED, count, fingerprint)
        else:
            outcome = Outcome(OutcomeStatus.DEAD_LETTERED, 0, fingerprint, detail=item.reason[:500])
        return Completion(item.claim, outcome)

    def _dead_letter_output(self, item: _Item) -> list[Output]:
        exc = item.error
        letter = self.dead_letter_for(
            item.record,
            item.reason,
            error_type=type(exc).__name__ if exc else "Error",
            traceback=item.error_tb,
            attempts=item.attempts,
            first_attempt_at=item.first_attempt_at,
            key=item.key,
        )
        return [letter]

    def key_of(self, record: Record) -> str:
        """The idempotency key this pipeline uses for `record`."""
        if isinstance(record, InvalidRecord) or self.key is None:
            return record.key
        return self.key(record)

    def dead_letter_for(
        self,
        record: Record,
        message: str,
        *,
        error_type: str = "Error",
        traceback: str = "",
        attempts: int = 0,
        first_attempt_at: float | None = None,
        key: str | None = None,
    ) -> Output:
        """A dead-letter output in the runner's own shape, for adapters that settle records."""
        if key is None:
            key = self.key_of(record)
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
        now = self.clock.now()
        letter = {
            "key": key,
            "event": original,
            "error_type": error_type,
            "message": message,
            "traceback": traceback,
            "attempts": attempts,
            "first_attempt_at": _iso(first_attempt_at or now),
            "failed_at": _iso(now),
            "pipeline": self.name,
        }
        return Output(
            output_id=f"{key}#dead-letter",
            event_key=key,
            event_id=record.id,
            index=0,
            value=to_plain(letter),
            partition_key=record.partition_key,
        )

    # -- 4. release and result -------------------------------------------------------------

    async def _release(self, items: list[_Item]) -> None:
        held = [i.claim for i in items if i.claim and i.claim.status is ClaimStatus.NEW]
        if not held:
            return
        try:
            await self.store.release(held)
        except Exception as exc:
            # The leases run out on their own; redelivery only waits longer.
            log.warning("releasing %d leases failed: %r", len(held), exc)

    def _fail(self, item: _Item, kind: FailureKind, reason: str) -> None:
        item.state = _State.FAILED
        item.kind = kind
        item.reason = reason
        if item.error is None or kind in _ALWAYS_LOGGED:
            log.warning("%s: %s", _describe(item), reason, extra=_log_extra(item))

    def _result(self, order: list[_Item]) -> BatchResult:
        result = BatchResult()
        for item in order:
            state = item.state
            if item.first is not None:
                # A second delivery inside one batch shares the fate of the first: a
                # duplicate when that one is settled, failed when it must come again.
                state = _State.FAILED if item.first.state is _State.FAILED else _State.DUPLICATE
                item.reason = item.first.reason
                item.kind = item.first.kind
            event_id = item.record.id
            if state is _State.DONE:
                result.processed.append(event_id)
            elif state is _State.DUPLICATE:
                result.duplicates.append(event_id)
            elif state is _State.DEAD:
                result.dead_lettered.append(event_id)
                result.failures[event_id] = Failure(item.kind, item.reason)
            else:
                result.failed.append(event_id)
                result.failures[event_id] = Failure(item.kind, item.reason or "not processed")
        counts = self.metrics
        counts.count("processed", len(result.processed))
        counts.count("duplicates", len(result.duplicates))
        counts.count("failed", len(result.failed))
        counts.count("dead_lettered", len(result.dead_lettered))
        return result

    # -- plumbing ----------------------------------------------------------------------------

    def _hook(self, step: Step, items: list[_Item]) -> None:
        if self.on_step is not None:
            self.on_step(step, [i.key for i in items])

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run a backend call, retrying transient errors with backoff; the last error escapes."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except OutputRejected:
                raise
            except Exception as exc:
                if self.backend_retry.exhausted(attempt) or isinstance(exc, self.permanent_errors):
                    raise
                log.info("%s failed (attempt %d), retrying: %r", what, attempt, exc)
                self.metrics.count("backend_retries")
                await self.clock.sleep(self.backend_retry.delay(attempt))


def _delivered_again(record: Record, round_: int) -> Record:
    if isinstance(record, Event):
        return record.model_copy(update={"delivery_count": record.delivery_count + round_})
    return record


def _in_sequence(lane: list[_Item]) -> list[_Item]:
    """The lane in sequence-number order when every event has a numeric one; else as given."""
    sequences = [item.record.sequence for item in lane]
    if len(lane) > 1 and all(s is not None and s.isdigit() for s in sequences):
        return sorted(lane, key=lambda item: int(item.record.sequence or 0))
    return lane


def _fingerprint(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _summary(exc: BaseException) -> str:
    """One line for an error; validation errors list fields and causes, never the input."""
    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:10]
        )
        return f"ValidationError: {exc.error_count()} invalid field(s) in {exc.title}: {fields}"
    return f"{type(exc).__name__}: {exc}"


def _describe(item: _Item) -> str:
    record = item.record
    where = f" at {record.locator}" if isinstance(record, InvalidRecord) and record.locator else ""
    seq = f" sequence {record.sequence}" if record.sequence else ""
    return f"event {record.id} from {record.source}{seq}{where}"


def _log_extra(item: _Item) -> dict[str, Any]:
    # Never the payload: it may hold personal data.
    return {
        "event_key": item.key,
        "event_id": item.record.id,
        "event_source": item.record.source,
        "attempt": item.attempts,
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def built_once(
    pipeline: Pipeline | Callable[[], Pipeline],
    check: Callable[[Pipeline], None] | None = None,
) -> Callable[[], Pipeline]:
    """A getter for a pipeline given as is, or made by a factory on first use (a cold start).

    Platform entry points take either; `check` vets the pipeline as soon as it exists.
    """
    if isinstance(pipeline, Pipeline):
        if check is not None:
            check(pipeline)
        ready = pipeline
        return lambda: ready
    factory = pipeline
    built: list[Pipeline] = []

    def get() -> Pipeline:
        if not built:
            made = factory()
            if not isinstance(made, Pipeline):
                raise TypeError(
                    f"the pipeline factory returned {type(made).__name__}, not a Pipeline"
                )
            if check is not None:
                check(made)
            built.append(made)
        return built[0]

    return get
