"""Pull mode for the file sources: read the files, then run what failed again, counting.

During an outage of the processor's downstream the run waits instead of giving up: a
batch whose events failed transiently, or were held back by the pipeline's open circuit
breaker, is delivered again (after the breaker's cool-down, or a growing backoff) until it
settles, for as long as `outage_wait` allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onceflow.adapters.local.file_source import DirectorySource, FileSource, Redelivery
from onceflow.adapters.local.totals import Tally
from onceflow.batch import Record
from onceflow.breaker import CircuitState
from onceflow.failures import FailureKind
from onceflow.pipeline import BatchResult, Pipeline
from onceflow.retry import Backoff

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
    `CIRCUIT_OPEN` while the pipeline's circuit breaker is open) is held and delivered
    again: after the breaker's cool-down while it is open (one probe call each time), else
    after a backoff growing from 1 s to the cool-down. A transient failure costs a
    delivery each time, so a poison pill is dead-lettered once it reaches the pipeline's
    `max_deliveries`; held-back events cost none. Once no event has settled for
    `outage_wait` seconds (in the pipeline's clock) the run stops waiting: the batch's
    held-back events are left failed and the source stops (`Tally.stopped` says why), so
    the next run reads them and the rest of the input again. `on_wait(events, seconds)`
    is called before each wait.

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
    return tally


class _Outage:
    """Delivers a batch again and again while its events fail by an outage, within a bound."""

    def __init__(
        self, pipeline: Pipeline, limit: float, on_wait: Callable[[int, float], None] | None
    ) -> None:
        self.pipeline = pipeline
        self.limit = limit
        self.on_wait = on_wait
        breaker = pipeline.breaker
        cap = breaker.cool_down if breaker is not None else 30.0
        self.backoff = Backoff(base=min(1.0, cap), cap=cap)
        self.since: float | None = None
        """When the run last saw an event settle before the outage that is going on."""
        self.gave_up: str | None = None

    async def deliver(self, batch: Sequence[Record], rounds: int) -> BatchResult:
        """Process the batch, then deliver its failures again until they settle or it waits
        too long: after an outage as long as it lasts (bounded), else `rounds` more times."""
        pipeline, clock = self.pipeline, self.pipeline.clock
        result = await pipeline.process_batch(batch)
        if not result.failed:
            self.since = None
            return result
        settled = BatchResult(
            processed=result.processed,
            duplicates=result.duplicates,
            dead_lettered=result.dead_lettered,
            failures={i: f for i, f in result.failures.items() if not f.kind.redelivers},
        )
        failed, failures = result.failed, result.failures
        other_rounds = transient_rounds = 0
        progressed = bool(result.processed or result.duplicates or result.dead_lettered)
        while failed:
            now = clock.now()
            if progressed or self.since is None:
                self.since = now
            outage = any(failures[i].kind in _OUTAGE for i in failed if i in failures)
            if outage and self.gave_up is None:
                breaker = pipeline.breaker
                if breaker is not None and breaker.state is CircuitState.OPEN:
                    # Until the open circuit lets its probe through.
                    wait = max(0.0, breaker.opened_at + breaker.cool_down - now)
                else:
                    transient_rounds += 1
                    wait = self.backoff.delay(transient_rounds)
                if now + wait - self.since > self.limit:
                    self.gave_up = (
                        f"the downstream stayed down for more than {self.limit:g} s "
                        f"({len(failed)} event(s) held back); the rest is read again next run"
                    )
                    break
            elif other_rounds < rounds:
                other_rounds += 1
                wait = pipeline.retry.delay(other_rounds)
            else:
                break
            if self.on_wait is not None:
                self.on_wait(len(failed), wait)
            await clock.sleep(wait)
            # Every failed record goes again, not only the outage's: in ordered mode one
            # held behind an earlier record must come with it.
            wanted = set(failed)
            again = await pipeline.process_batch([r for r in batch if r.id in wanted])
            settled.processed += again.processed
            settled.duplicates += again.duplicates
            settled.dead_lettered += again.dead_lettered
            progressed = bool(again.processed or again.duplicates or again.dead_lettered)
            failed, failures = again.failed, again.failures
            settled.failures.update({i: f for i, f in failures.items() if not f.kind.redelivers})
        if not any(failures[i].kind in _OUTAGE for i in failed if i in failures):
            self.since = None  # no outage going on (any more)
        settled.failed = list(failed)
        settled.failures.update({i: failures[i] for i in failed if i in failures})
        return settled
