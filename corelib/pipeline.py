"""The exactly-once runner: claim, process, commit, retry, dead-letter.

The parts live in modules named for what they hold: `batch` (an item per record and the
result), `attempts` (running the processor), `lanes` (concurrency and order), `commit`
(the commit strategy, chosen here once), `dead_letters` (the letter's shape).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from onceflow.attempts import Attempts
from onceflow.batch import Item, Record, State, items_of, log_extra, result_of
from onceflow.breaker import CircuitBreaker, RateLimit
from onceflow.clock import SystemClock
from onceflow.commit import (
    AtomicLaneCommit,
    Committer,
    Completions,
    NoDeadLetters,
    WriteThenComplete,
    fingerprint,
    strategy_for,
)
from onceflow.dead_letters import dead_letter
from onceflow.envelopes import Envelope, auto
from onceflow.errors import ConfigurationError, OutputRejected, PermanentError
from onceflow.event import Event
from onceflow.failures import Failure, FailureKind, safe_text
from onceflow.interfaces import Clock, IdempotencyStore, LaneStore, Metrics, Processor, Sink
from onceflow.keys import business_key
from onceflow.lanes import Lanes
from onceflow.loops import run_on_thread_loop
from onceflow.metrics import NoopMetrics
from onceflow.processing import chain
from onceflow.records import Claim, ClaimStatus, InvalidRecord, Outcome, OutcomeStatus, Output
from onceflow.results import BatchResult
from onceflow.retry import RetryPolicy, deadline_in
from onceflow.routing import routed_sink
from onceflow.serialization import UnstorableValue
from onceflow.steps import Step, StepHook
from onceflow.watermarks import LaneBatch, deliveries, lane_of, position_of, settles

if TYPE_CHECKING:
    from onceflow.filters import Filter
    from onceflow.masking import Mask
    from onceflow.tracing import Tracing

__all__ = [
    "DEFAULT_PERMANENT",
    "BatchResult",
    "Pipeline",
    "Step",
    "StepHook",
    "built_once",
]

log = logging.getLogger("onceflow")

DEFAULT_PERMANENT: tuple[type[BaseException], ...] = (
    PermanentError,
    ValidationError,
    UnicodeDecodeError,
    json.JSONDecodeError,
    UnstorableValue,
)
"""Errors that dead-letter an event at once: retrying cannot fix them."""


class Pipeline:
    """Runs a processor over batches of events so each event's effect is committed exactly once."""

    def __init__(
        self,
        processor: Processor | Callable[..., Any],
        sink: Sink | None = None,
        store: IdempotencyStore | None = None,
        dead_letter: Sink | None = None,
        *,
        ordered: bool = False,
        retry: RetryPolicy | None = None,
        backend_retry: RetryPolicy | None = None,
        max_deliveries: int = 5,
        breaker: CircuitBreaker | Literal[False] | None = None,
        rate_limit: RateLimit | None = None,
        write_rate_limit: RateLimit | None = None,
        key: Callable[[Event], str] | str | None = None,
        lease_seconds: float = 300.0,
        time_budget: float | None = None,
        concurrency: int = 64,
        permanent_errors: tuple[type[BaseException], ...] = DEFAULT_PERMANENT,
        check_payload: bool = False,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        on_step: StepHook | None = None,
        name: str = "onceflow",
        envelope: Envelope | None = auto,
        sinks: Mapping[str, Sink] | None = None,
        routes: Mapping[type, str] | None = None,
        filter: Filter | None = None,
        mask: Mask | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """See the class docstring; `docs/toolkit.md` describes `key` given as a dotted
        path, `envelope`, `sinks` and `routes`, `filter` and `mask`; `docs/operations.md`
        describes `tracing`."""
        if max_deliveries < 1:
            raise ConfigurationError(f"max_deliveries={max_deliveries}: at least 1 delivery")
        process = getattr(processor, "process", None)
        if process is None and callable(processor):
            process = processor
        if not callable(process):
            raise ConfigurationError(
                f"{type(processor).__name__} has no process(event) method; "
                "give the pipeline an object with one, or a function"
            )
        if store is None:
            raise ConfigurationError("the pipeline needs an idempotency store: pass store=...")
        sink, routed = routed_sink(sink, sinks, routes)
        if isinstance(key, str):
            key = business_key(key, envelope)
        self.processor = processor
        self.sink = sink
        self.store = store
        self.dead_letter = dead_letter
        # A dead-letter sink may declare the longest message it stores: letters fit it.
        self._letter_bytes: int | None = getattr(dead_letter, "max_message_bytes", None)
        self.ordered = ordered
        self.retry = retry or RetryPolicy()
        """Attempts and backoff for an event whose processing failed transiently."""
        self.backend_retry = backend_retry or RetryPolicy()
        """Attempts and backoff for a store or sink call that failed transiently."""
        self.max_deliveries = max_deliveries
        """Deliveries after which an event still failing transiently is dead-lettered."""
        self.breaker: CircuitBreaker | None = (
            None if breaker is False else breaker if breaker is not None else CircuitBreaker()
        )
        """This worker's circuit breaker (None when turned off with `breaker=False`)."""
        self.rate_limit = rate_limit
        self.write_rate_limit = write_rate_limit
        self.key = key
        self.lease_seconds = lease_seconds
        self.time_budget = time_budget
        self.permanent_errors = permanent_errors
        self.check_payload = check_payload
        self.clock: Clock = clock or SystemClock()
        self.metrics: Metrics = metrics or NoopMetrics()
        self.on_step = on_step
        self.name = name
        # Typed payloads, filters, masked and routed outputs: wrapped around the
        # processor once, here; a feature not asked for adds nothing per event.
        process = chain(
            process,
            envelope=envelope,
            metrics=self.metrics,
            filter=filter,
            mask=mask,
            routes=routes,
            routed=routed,
            permanent=permanent_errors,
            tracing=tracing,
            pipeline=name,
        )
        self._attempts = Attempts(
            process,
            retry=self.retry,
            max_deliveries=max_deliveries,
            permanent=permanent_errors,
            clock=self.clock,
            metrics=self.metrics,
            breaker=self.breaker,
            rate=rate_limit,
            # The platform's count is for stores that miss deliveries (Attempts.deliveries).
            platform_counts=not getattr(self.store, "counts_every_delivery", False),
        )
        self._lanes = Lanes(
            self._attempts, ordered=ordered, clock=self.clock, concurrency=concurrency
        )
        self._setup_done = False
        if tracing is not None:
            # A span per batch, only when asked for: untraced batches take no extra call.
            self.process_batch = tracing.batched(self.process_batch, name)  # type: ignore[method-assign]
        # The commit strategy is chosen here, once: atomic where a sink commits with the
        # store, write-then-complete elsewhere, redelivery when there is no dead-letter sink.
        completions = Completions(check_payload)
        common: dict[str, Any] = {
            "call": self._backend,
            "completions": completions,
            "metrics": self.metrics,
            # In ordered mode the commit holds a lane at an event that will come again.
            "hold": self._lanes.hold if ordered else None,
        }
        outputs = strategy_for(
            sink,
            store,
            to_outputs=_outputs if tracing is None else tracing.outputs,
            letters=False,
            pace=self._pace,
            **common,
        )
        letters = strategy_for(dead_letter, store, to_outputs=self._letters, letters=True, **common)
        # Lane watermarks: for the default key, on a store that keeps lanes, where every
        # write lands before the lane's commit or inside it (an atomic sink that carries
        # lane commits); another atomic sink keeps per-key markers.
        lane_ready = (WriteThenComplete, NoDeadLetters, AtomicLaneCommit)
        self.watermarks = (
            key is None
            and isinstance(store, LaneStore)
            and isinstance(outputs, lane_ready)
            and isinstance(letters, lane_ready)
        )
        """Whether events on a lane are settled by their lane's watermark record."""
        self._committer = Committer(
            outputs,
            letters,
            store,
            hook=self._step,
            hooked=lambda: self.on_step is not None,
            **common,
        )

    # -- public entry points -------------------------------------------------------------

    def run_batch(self, records: Iterable[Record], *, deadline: float | None = None) -> BatchResult:
        """Process one batch from synchronous code (scripts, Lambda handlers), on this
        thread's own event loop (made on the first call, reused by later ones)."""
        return run_on_thread_loop(self.process_batch(list(records), deadline=deadline))

    async def process_batch(
        self, records: Iterable[Record], *, deadline: float | None = None
    ) -> BatchResult:
        """Process one batch; `deadline` (in the pipeline's clock) stops new work before it."""
        started = time.perf_counter()
        await self.setup()
        if self.time_budget is not None:
            budget_end = self.clock.now() + self.time_budget
            deadline = budget_end if deadline is None else min(deadline, budget_end)
        if deadline is None:
            return await self._process(records, None, started)
        # Store and sink retry loops read the deadline from the context: none sleeps past it.
        with deadline_in(deadline - self.clock.now()):
            return await self._process(records, deadline, started)

    async def _process(
        self, records: Iterable[Record], deadline: float | None, started: float
    ) -> BatchResult:
        fresh, order = items_of(records, self.key)
        self.metrics.count("received", len(order))
        breaker = self.breaker
        if fresh and breaker is not None and breaker.holding(self.clock.now()):
            # The circuit is open and cooling down: hand the batch back before claiming
            # anything, so an outage costs the store nothing and charges no delivery.
            self._attempts.start_batch()
            self._lanes.held_for_order = 0
            for item in fresh:
                self._attempts.hold_back(item)
            self._report_held_back(fresh)
        elif fresh and await self._claim(fresh, lanes := self._lane_batch(fresh)):
            self._step(Step.AFTER_CLAIM, fresh)
            self._attempts.start_batch()
            await self._lanes.run(fresh, deadline)
            self._step(Step.AFTER_PROCESS, fresh)
            await self._committer.commit(self._lanes.in_sequence(fresh), lanes)
            self._report_held_back(fresh)  # after the commit, which may hold more in order
            failed = [i for i in fresh if i.state is State.FAILED]
            if lanes is not None:
                failed = [i for i in failed if i not in lanes.positions]
            await self._release(failed)
        result = result_of(order, self.metrics)
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
        checkpoint, a file read once). Between rounds it waits the event retry policy's
        backoff, or out an open circuit breaker's cool-down, so an outage costs one probe
        per cool-down rather than a claim of the whole batch per backoff step; when a round
        settled nothing and its failures were charged processor failures (an outage the
        breaker cannot see: one ordered lane failing at its head), it also waits a full
        cool-down. It stops after `rounds` more rounds or at `deadline` (in the pipeline's
        clock). The store counts every round's deliveries (what the breaker hands back is
        refunded), so a poison pill still reaches `max_deliveries`. The result holds every
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
        progressed = bool(result.processed or result.duplicates or result.dead_lettered)
        round_ = 0
        clock, breaker = self.clock, self.breaker
        while failed and (rounds is None or round_ < rounds):
            now = clock.now()
            if deadline is not None and now >= deadline:
                break
            round_ += 1
            wait = self.retry.delay(round_)
            if breaker is not None and breaker.holding(now):
                wait = max(wait, breaker.opened_at + breaker.cool_down - now)
            elif breaker is not None and not progressed and _charged(failed, failures):
                wait = max(wait, breaker.cool_down)
            if deadline is not None:
                wait = min(wait, deadline - now)
            await clock.sleep(wait)
            if deadline is not None and clock.now() >= deadline:
                break
            wanted = set(failed)
            again = await self.process_batch(
                [r for r in batch if r.id in wanted], deadline=deadline
            )
            settled.processed += again.processed
            settled.duplicates += again.duplicates
            settled.dead_lettered += again.dead_lettered
            progressed = bool(again.processed or again.dead_lettered)
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
        return dead_letter(
            record,
            message,
            key=self.key_of(record) if key is None else key,
            now=self.clock.now(),
            pipeline=self.name,
            error_type=error_type,
            traceback=traceback,
            attempts=attempts,
            first_attempt_at=first_attempt_at,
            max_bytes=self._letter_bytes,
        )

    # -- claims and releases ---------------------------------------------------------------

    def _lane_batch(self, items: list[Item]) -> LaneBatch | None:
        """The batch's items on watermark lanes (None when there are none)."""
        if not self.watermarks:
            return None
        batch = LaneBatch()
        seen: set[tuple[str, int]] = set()
        shared: set[tuple[str, int]] = set()
        for item in items:
            record = item.record
            if isinstance(record, InvalidRecord):
                continue
            lane = lane_of(record)
            position = position_of(record) if lane is not None else None
            if lane is None or position is None:
                continue
            spot = (lane, position)
            if spot in seen:
                shared.add(spot)  # two events at one position: per-key markers for both
            seen.add(spot)
            batch.positions[item] = spot
        for item in [i for i, spot in batch.positions.items() if spot in shared]:
            del batch.positions[item]
        return batch if batch.positions else None

    async def _claim(self, items: list[Item], lanes: LaneBatch | None = None) -> bool:
        """Claim the batch (its lanes, then per-key markers); whether anything was claimed."""
        if lanes is not None:
            if not await self._claim_lanes(lanes):
                return False
            items = [i for i in items if i not in lanes.positions]
            if not items:
                return True
        keys = [item.key for item in items]
        lease = self.lease_seconds
        try:
            claims = await self._backend("claim", lambda: self.store.claim(keys, lease))
        except Exception as exc:
            reason = f"idempotency store unavailable: {safe_text(exc)}"
            log.error("claim failed for %d keys: %s", len(keys), reason)
            for item in items:
                item.fail(FailureKind.STORE_FAILED, reason)
            # Leased lanes go on (an ordered lane waits behind what failed here): stopping
            # would leave their leases to lapse, blocking them a lease and charging them all.
            return lanes is not None
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
                item.state = State.DUPLICATE
                self._check_reuse(item)
            else:
                item.fail(FailureKind.LEASED_ELSEWHERE, "another worker holds this key's lease")
        return True

    async def _claim_lanes(self, lanes: LaneBatch) -> bool:
        """Lease the batch's lanes: one record per lane; settled positions are duplicates."""
        store: Any = self.store
        requests = lanes.requests()
        lease = self.lease_seconds
        try:
            claims = await self._backend("claim lanes", lambda: store.claim_lanes(requests, lease))
        except Exception as exc:
            reason = f"idempotency store unavailable: {safe_text(exc)}"
            log.error("lane claim failed for %d lanes: %s", len(requests), reason)
            for item in lanes.positions:
                item.fail(FailureKind.STORE_FAILED, reason)
            return False
        lanes.claims = {claim.lane: claim for claim in claims}
        new, completed = ClaimStatus.NEW, ClaimStatus.COMPLETED
        done = Outcome(OutcomeStatus.SUCCEEDED)
        for item, (lane, position) in lanes.positions.items():
            claim = lanes.claims[lane]
            if settles(claim.state, position):
                item.claim = Claim(item.key, completed, outcome=done)
                item.state = State.DUPLICATE
            elif claim.status is new:
                count = deliveries(claim.state, position)
                item.claim = Claim(
                    item.key, new, claim.token, None, claim.lease_expires_at, None, count
                )
            else:
                item.fail(FailureKind.LEASED_ELSEWHERE, "another worker holds this lane's lease")
        return True

    def _check_reuse(self, item: Item) -> None:
        stored = item.claim.outcome.fingerprint if item.claim and item.claim.outcome else None
        if stored is None or not self.check_payload or isinstance(item.record, InvalidRecord):
            return
        if stored != fingerprint(item.record.data):
            self.metrics.count("key_reused")
            log.warning(
                "key %s was completed earlier for a different payload; the new one is skipped",
                item.key,
                extra=log_extra(item),
            )

    async def _release(self, items: list[Item]) -> None:
        held = [i for i in items if i.claim and i.claim.status is ClaimStatus.NEW]
        charged = [i.claim for i in held if i.claim and not i.unprocessed]
        refunded = [i.claim for i in held if i.claim and i.unprocessed]
        for claims, refund in ((charged, False), (refunded, True)):
            if not claims:
                continue
            try:
                await self.store.release(claims, refund=refund)
            except Exception as exc:
                # The leases run out on their own; redelivery only waits longer.
                log.warning("releasing %d leases failed: %s", len(claims), safe_text(exc))

    def _report_held_back(self, items: list[Item]) -> None:
        """One line for the events held back (not one per event: there may be thousands)."""
        circuit = self._attempts.held_back
        order = self._lanes.held_for_order
        if circuit and self.breaker is not None:
            self.metrics.count("held_back", circuit)
            log.warning(
                "circuit open after transient failures of distinct keys (%s): %d event(s) "
                "handed back for redelivery, no delivery charged; one probe call every %.0f s",
                self.breaker.cause or "unknown cause",
                circuit,
                self.breaker.cool_down,
            )
        if order:
            log.warning(
                "%d event(s) handed back behind an earlier event of their partition that "
                "must come again, to keep per-key order",
                order,
            )

    # -- plumbing ----------------------------------------------------------------------------

    def _letters(self, item: Item) -> list[Output]:
        exc = item.error
        return [
            self.dead_letter_for(
                item.record,
                item.reason,
                error_type=type(exc).__name__ if exc else "Error",
                traceback=item.error_tb,
                attempts=item.attempts,
                first_attempt_at=item.first_attempt_at,
                key=item.key,
            )
        ]

    async def _pace(self, count: int) -> None:
        if self.write_rate_limit is not None:
            await self.write_rate_limit.acquire(self.clock, count)

    def _step(self, step: Step, items: list[Item]) -> None:
        if self.on_step is not None:
            self.on_step(step, [i.key for i in items])

    async def _backend(self, what: str, call: Callable[[], Any]) -> Any:
        """Run a store or sink call under the backend retry policy; the last error escapes."""
        return await self.backend_retry.call(
            call,
            sleep=self.clock.sleep,
            permanent=(OutputRejected, *self.permanent_errors),
            on_retry=lambda attempt, exc: self._retrying(what, attempt, exc),
        )

    def _retrying(self, what: str, attempt: int, exc: Exception) -> None:
        log.info("%s failed (attempt %d), retrying: %s", what, attempt, safe_text(exc))
        self.metrics.count("backend_retries")


_outputs: Callable[[Item], Sequence[Output]] = attrgetter("outputs")


def _charged(failed: Sequence[str], failures: Mapping[str, Failure]) -> bool:
    """Whether a round's failures include processor failures its deliveries were charged."""
    return any(
        (f := failures.get(rid)) is not None and f.kind is FailureKind.TRANSIENT for rid in failed
    )


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
