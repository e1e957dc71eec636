"""How a batch's outcome reaches the sinks and the store: chosen once, when a Pipeline is built.

Each sink (the outputs' and the dead letters') gets one strategy:

- `AtomicCommit`: the sink commits its writes and the keys' completion markers in one
  transaction (`AtomicSink.write_and_complete`, which hands the store its writes through
  `TransactionalStore.complete_with`);
- `WriteThenComplete`: an idempotent write keyed by `output_id`, then a fenced
  `IdempotencyStore.complete` for the keys whose writes landed;
- `NoDeadLetters`: no dead-letter sink, so an event that should be dead-lettered is handed
  back for redelivery instead, and nothing is lost.

`Committer.commit` runs the same steps for every combination; the strategies differ only
in which step writes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol

from onceflow.batch import Item, State, describe, in_state
from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.failures import FailureKind
from onceflow.interfaces import AtomicSink, IdempotencyStore, Metrics, Sink
from onceflow.records import Completion, InvalidRecord, Outcome, OutcomeStatus, Output
from onceflow.steps import Step

__all__ = [
    "AtomicCommit",
    "Committer",
    "NoDeadLetters",
    "SinkStrategy",
    "WriteThenComplete",
    "fingerprint",
    "strategy_for",
]

log = logging.getLogger("onceflow")

BackendCall = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""Runs a named backend call under the pipeline's backend retry policy."""

_SUCCEEDED = tuple(Outcome(OutcomeStatus.SUCCEEDED, n) for n in range(8))


def fingerprint(data: bytes) -> str:
    """A short hash of a payload, stored with its outcome to spot a reused key."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Completions:
    """Builds the completion request for a settled item."""

    def __init__(self, check_payload: bool) -> None:
        self.check_payload = check_payload

    def of(self, item: Item) -> Completion:
        """The completion of `item`'s claim with the outcome its state says."""
        assert item.claim is not None
        record = item.record
        stored = None
        if self.check_payload:
            stored = fingerprint(record.raw if isinstance(record, InvalidRecord) else record.data)
        if item.state is State.DONE:
            count = len(item.outputs)
            if stored is None and count < len(_SUCCEEDED):
                # Outcomes are immutable: share the common ones instead of building each.
                return Completion(item.claim, _SUCCEEDED[count])
            outcome = Outcome(OutcomeStatus.SUCCEEDED, count, stored)
        else:
            outcome = Outcome(OutcomeStatus.DEAD_LETTERED, 0, stored, detail=item.reason[:500])
        return Completion(item.claim, outcome)


class SinkStrategy(Protocol):
    """How one sink's writes and its items' completions are committed."""

    marks_separately: bool
    """Whether its items' keys still need the store's own `complete` afterwards."""

    async def write(self, items: list[Item]) -> None:
        """The write before completion (write-then-complete writes here)."""
        ...

    async def commit(self, items: list[Item]) -> None:
        """The write at completion (an atomic commit writes here)."""
        ...


class _Writer:
    """Writes items' outputs to one sink, settling the items whose outputs it refuses."""

    def __init__(
        self,
        sink: Sink,
        to_outputs: Callable[[Item], Sequence[Output]],
        call: BackendCall,
        *,
        letters: bool,
        pace: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.sink = sink
        self.to_outputs = to_outputs
        self.call = call
        self.letters = letters
        self.pace = pace
        """Waits for the write rate limit's tokens for a number of items, when one is set."""

    async def run(
        self, what: str, items: list[Item], send: Callable[[list[Item]], Awaitable[None]]
    ) -> None:
        """`send(live)` until it succeeds, dropping the items whose outputs it refused."""
        live = items
        while live:
            try:
                if self.pace is not None:
                    await self.pace(len(live))
                await send(live)
                return
            except OutputRejected as exc:
                live = self._reject(live, exc)
            except Exception as exc:
                self._failed(what, live, exc)
                return

    def outputs(self, items: list[Item]) -> list[Output]:
        """Every output of the items, in order."""
        to_outputs = self.to_outputs
        return [o for item in items for o in to_outputs(item)]

    def _failed(self, what: str, items: list[Item], exc: Exception) -> None:
        kind = FailureKind.DEAD_LETTER_REFUSED if self.letters else FailureKind.SINK_FAILED
        for item in items:
            item.fail(kind, f"{what} failed: {type(exc).__name__}: {exc}")

    def _reject(self, items: list[Item], exc: OutputRejected) -> list[Item]:
        """Settle the items whose outputs the sink refused; the others are written again."""
        owner = {o.output_id: item for item in items for o in self.to_outputs(item)}
        refused: dict[int, str] = {}
        for oid, why in exc.rejected.items():
            item = owner.get(oid)
            if item is not None:
                refused.setdefault(id(item), why)
        keep: list[Item] = []
        for item in items:
            refusal = refused.get(id(item))
            if refusal is None:
                keep.append(item)
            elif self.letters:
                item.fail(
                    FailureKind.DEAD_LETTER_REFUSED,
                    f"the dead-letter sink refused the record: {refusal}",
                )
            else:
                item.error = exc
                item.error_tb = ""
                item.dead(
                    FailureKind.OUTPUT_REJECTED,
                    f"{describe(item)}: the sink cannot store its output: {refusal}",
                )
        if len(keep) == len(items):
            raise ConfigurationError(
                f"{type(exc).__name__} named no output of this batch: {list(exc.rejected)[:3]}"
            )
        return keep


class WriteThenComplete:
    """Idempotent writes keyed by `output_id`; the store's fenced `complete` follows."""

    marks_separately = True

    def __init__(self, writer: _Writer) -> None:
        self.writer = writer

    async def write(self, items: list[Item]) -> None:
        """Write the items' outputs (overwrites on a repeat)."""
        await self.writer.run("sink write", items, self._send)

    async def _send(self, items: list[Item]) -> None:
        outputs = self.writer.outputs(items)
        if outputs:
            await self.writer.call("sink write", partial(self.writer.sink.write, outputs))

    async def commit(self, items: list[Item]) -> None:
        """Nothing: the writes happened before completion."""


class AtomicCommit:
    """Outputs and completion markers in one transaction of the sink's."""

    marks_separately = False

    def __init__(
        self,
        writer: _Writer,
        sink: AtomicSink,
        store: IdempotencyStore,
        completions: Completions,
        metrics: Metrics,
    ) -> None:
        self.writer = writer
        self.sink = sink
        self.store = store
        self.completions = completions
        self.metrics = metrics

    async def write(self, items: list[Item]) -> None:
        """Nothing: the writes happen with the completion."""

    async def commit(self, items: list[Item]) -> None:
        """Commit the items' outputs with their completions; a lost fence fails the item."""
        await self.writer.run("commit", items, self._send)

    async def _send(self, items: list[Item]) -> None:
        outputs = self.writer.outputs(items)
        completion = self.completions.of
        completions = [completion(item) for item in items]
        accepted = await self.writer.call(
            "commit", partial(self.sink.write_and_complete, self.store, outputs, completions)
        )
        settle(items, accepted, self.metrics)


class NoDeadLetters:
    """No dead-letter sink: what should be dead-lettered is handed back for redelivery."""

    marks_separately = False

    async def write(self, items: list[Item]) -> None:
        """Fail every item, keeping why it was to be dead-lettered."""
        for item in items:
            item.fail(
                FailureKind.NO_DEAD_LETTER_SINK,
                f"{item.reason}; no dead-letter sink is configured",
            )

    async def commit(self, items: list[Item]) -> None:
        """The same as `write`, for items that became dead letters inside the commit."""
        await self.write(items)


def strategy_for(
    sink: Sink | None,
    store: IdempotencyStore,
    *,
    to_outputs: Callable[[Item], Sequence[Output]],
    call: BackendCall,
    completions: Completions,
    metrics: Metrics,
    letters: bool,
    pace: Callable[[int], Awaitable[None]] | None = None,
) -> SinkStrategy:
    """The strategy for `sink` with `store`: atomic when the sink can commit with it."""
    if sink is None:
        return NoDeadLetters()
    writer = _Writer(sink, to_outputs, call, letters=letters, pace=pace)
    if isinstance(sink, AtomicSink) and sink.commits_with(store):
        return AtomicCommit(writer, sink, store, completions, metrics)
    return WriteThenComplete(writer)


def settle(items: list[Item], accepted: Sequence[bool], metrics: Metrics) -> None:
    """Fail the items whose fence no longer held at commit."""
    for item, ok in zip(items, accepted, strict=True):
        if not ok:
            item.fail(
                FailureKind.LEASE_LOST,
                "lease lost to another worker before commit; it commits instead",
            )
            metrics.count("lease_lost")


class Committer:
    """Commits a processed batch: outputs, dead letters, then completion markers."""

    def __init__(
        self,
        outputs: SinkStrategy,
        letters: SinkStrategy,
        store: IdempotencyStore,
        *,
        call: BackendCall,
        completions: Completions,
        metrics: Metrics,
        hook: Callable[[Step, list[Item]], None],
        hooked: Callable[[], bool],
    ) -> None:
        self.outputs = outputs
        self.letters = letters
        self.store = store
        self.call = call
        self.completions = completions
        self.metrics = metrics
        self.hook = hook
        """Reports a step to the pipeline's step hook (a test's crash injection)."""
        self.hooked = hooked
        """Whether a step hook is set now (tests set one after construction)."""

    async def commit(self, items: list[Item]) -> None:
        """Write outputs and dead letters, then complete their keys (atomically where chosen)."""
        hook = self.hook if self.hooked() else None
        done = in_state(items, State.DONE)
        await self.outputs.write(done)
        if hook is not None:
            hook(Step.AFTER_SINK_WRITE, done)
        await self.letters.write(in_state(items, State.DEAD))
        done = in_state(items, State.DONE)
        written = in_state(items, State.DEAD)
        if hook is not None:
            hook(Step.BEFORE_COMPLETE, done + written)
        await self.outputs.commit(done)
        # Outputs the sink refused inside its transaction are dead letters now.
        before = set(written)
        late = [item for item in in_state(items, State.DEAD) if item not in before]
        if late:
            await self.letters.write(late)
        await self.letters.commit(in_state(items, State.DEAD))
        marked: list[Item] = []
        if self.outputs.marks_separately:
            marked += in_state(items, State.DONE)
        if self.letters.marks_separately:
            marked += in_state(items, State.DEAD)
        if marked:
            await self._complete(marked)
        if hook is not None:
            hook(Step.AFTER_COMPLETE, in_state(items, State.DONE, State.DEAD))

    async def _complete(self, items: list[Item]) -> None:
        completion = self.completions.of
        completions = [completion(item) for item in items]
        try:
            accepted = await self.call("complete", partial(self.store.complete, completions))
        except Exception as exc:
            for item in items:
                item.fail(
                    FailureKind.STORE_FAILED, f"completion failed: {type(exc).__name__}: {exc}"
                )
        else:
            settle(items, accepted, self.metrics)
