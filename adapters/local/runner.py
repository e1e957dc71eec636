"""Pull mode for the file sources: read the files, then run what failed again, counting.

During an outage of the processor's downstream the run waits instead of giving up: a
batch whose events failed transiently, or were held back by the pipeline's open circuit
breaker, is delivered again through `Pipeline.redeliver` (which owns the waiting: the
breaker's cool-down, or the retry backoff) until it settles, for as long as `outage_wait`
allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio.lowlevel

from onceflow.adapters.local.file_source import DirectorySource, FileSource, Redelivery
from onceflow.adapters.local.totals import Tally
from onceflow.batch import Record
from onceflow.failures import FailureKind
from onceflow.pipeline import BatchResult, Pipeline

__all__ = ["OUTAGE_WAIT", "run_files"]

OUTAGE_WAIT = 600.0
"""How long (seconds) `run_files` waits by default for a downstream that stays down."""

# Failures of an outage: the event comes again once the downstream answers.
_OUTAGE = frozenset({FailureKind.TRANSIENT, FailureKind.CIRCUIT_OPEN})


async def run_files(
    pipeline: Pipeline,
    source: FileSource | DirectorySource,
    *,
    batch_size: int = 500,
    redeliveries: int = 5,
    outage_wait: float = OUTAGE_WAIT,
    tally: Tally | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    on_wait: Callable[[int, float], None] | None = None,
) -> Tally:
    """Process the source's batches and ack each; the run's totals.

    A batch with events that failed by an outage (`FailureKind.TRANSIENT`, or
    `CIRCUIT_OPEN` while the pipeline's circuit breaker is open) is held: its failures go
    through `Pipeline.redeliver`, which waits out the breaker's cool-down between rounds
    (one probe call each) or the event retry backoff, for up to `outage_wait` seconds (in
    the pipeline's clock). A transient failure costs a delivery each time, so a poison
    pill is dead-lettered once it reaches the pipeline's `max_deliveries`; held-back events
    cost none. If the batch's failures are still an outage's after `outage_wait`, they are
    left failed and the source stops (`Tally.stopped` says why), so the next run reads
    them and the rest of the input again. `on_wait(events, seconds)` is called when a
    batch starts waiting, with how many events are held back and the most it waits.

    A record that fails in a pass over the files for another reason (another worker's live
    lease, a lost lease) is handed back by the source once the pass is done and delivered
    up to `redeliveries` more times in all, after the pipeline's event retry backoff each
    time. What still fails stays unsettled: its file's checkpoint stays before it, so the
    next run reads it again. The totals are counts, not every event id, so a run over
    millions of records stays small.
    """
    if redeliveries < 1:
        raise ValueError(f"redeliveries={redeliveries}: at least 1 (the hand-back itself)")
    if outage_wait < 0:
        raise ValueError(f"outage_wait={outage_wait}: not negative")
    tally = tally if tally is not None else Tally()
    waiting = _Outage(pipeline, outage_wait, on_wait)
    async for batch in source.batches(batch_size):
        rounds = redeliveries - 1 if isinstance(batch, Redelivery) else 0
        result = await waiting.deliver(batch, rounds)
        await source.ack(batch, set(result.failed) if result.failed else ())
        tally.add(result)
        if on_batch is not None:
            on_batch(result)
        if waiting.gave_up is not None:
            tally.stopped = waiting.gave_up
            source.stop()
        # A batch over local files may never wait for anything, so a cancellation (what
        # asyncio.run makes of Ctrl-C) would land only when the input ends: this is where
        # it lands instead, between batches, after the last one's ack.
        await anyio.lowlevel.checkpoint()
    return tally


class _Outage:
    """Holds a batch hit by an outage: `Pipeline.redeliver` until it settles, within a bound."""

    def __init__(
        self, pipeline: Pipeline, limit: float, on_wait: Callable[[int, float], None] | None
    ) -> None:
        self.pipeline = pipeline
        self.limit = limit
        self.on_wait = on_wait
        self.gave_up: str | None = None

    async def deliver(self, batch: Sequence[Record], rounds: int) -> BatchResult:
        """Process the batch (and its failures `rounds` more times); while its failures are
        an outage's, deliver them again for up to `limit` seconds."""
        pipeline = self.pipeline
        if rounds:
            result = await pipeline.redeliver(batch, rounds=rounds)
        else:
            result = await pipeline.process_batch(batch)
        if not result.failed or self.gave_up is not None or not _outage(result):
            return result
        if self.on_wait is not None:
            self.on_wait(len(result.failed), self.limit)
        clock, breaker = pipeline.clock, pipeline.breaker
        deadline = clock.now() + self.limit
        # The first round waits too (`redeliver` starts with one at once): out the open
        # circuit's cool-down, else the event retry backoff.
        now = clock.now()
        wait = pipeline.retry.delay(1)
        if breaker is not None and breaker.holding(now):
            wait = max(wait, breaker.opened_at + breaker.cool_down - now)
        await clock.sleep(min(wait, self.limit))
        wanted = set(result.failed)
        again = await pipeline.redeliver(
            [r for r in batch if r.id in wanted], deadline=max(deadline, clock.now())
        )
        settled = BatchResult(
            processed=[*result.processed, *again.processed],
            duplicates=[*result.duplicates, *again.duplicates],
            dead_lettered=[*result.dead_lettered, *again.dead_lettered],
            failures={
                **{i: f for i, f in result.failures.items() if i not in wanted},
                **again.failures,
            },
        )
        settled.failed = list(again.failed)
        if again.failed and _outage(again):
            self.gave_up = (
                f"the downstream stayed down for more than {self.limit:g} s "
                f"({len(again.failed)} event(s) held back); the rest is read again next run"
            )
        return settled


def _outage(result: BatchResult) -> bool:
    """Whether some of the result's failures are an outage's."""
    failures = result.failures
    return any(failures[i].kind in _OUTAGE for i in result.failed if i in failures)
