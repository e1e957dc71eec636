"""How a batch's outcome reaches the sinks and the store: chosen once, when a Pipeline is built.

Each sink (the outputs' and the dead letters') gets one strategy:

- `AtomicCommit`: the sink commits its writes and the keys' completion markers in one
  transaction (`AtomicSink.write_and_complete`, which hands the store its writes through
  `TransactionalStore.complete_with`);
- `AtomicLaneCommit`: the same for events off a lane; events on a watermark lane commit
  their writes with their lane's record instead of a marker each
  (`AtomicLaneSink.write_and_commit_lanes`, through
  `TransactionalLaneStore.complete_with_lanes`);
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
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from itertools import chain
from typing import Any, Protocol

from onceflow.batch import Item, State, describe, split
from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.failures import FailureKind, safe_text
from onceflow.interfaces import AtomicLaneSink, AtomicSink, IdempotencyStore, Metrics, Sink
from onceflow.records import (
    Completion,
    InvalidRecord,
    LaneCommit,
    Outcome,
    OutcomeStatus,
    Output,
)
from onceflow.steps import Step
from onceflow.watermarks import LaneBatch

__all__ = [
    "AtomicCommit",
    "AtomicLaneCommit",
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
_tuple = tuple.__new__  # builds a named tuple without its Python-level __new__

Hold = Callable[[Collection[Item]], int]
"""In ordered mode: fails every not yet committed event behind one that must come again
(a failed one, or one of the items given: dead letters not written yet); how many."""


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

    def all(self, items: list[Item]) -> list[Completion]:
        """`of` each item; the common outcomes without a call per item."""
        if self.check_payload:
            return [self.of(item) for item in items]
        succeeded, common, done = _SUCCEEDED, len(_SUCCEEDED), State.DONE
        completions = []
        for item in items:
            if item.state is done and (count := len(item.outputs)) < common:
                completions.append(_tuple(Completion, (item.claim, succeeded[count])))
            else:
                completions.append(self.of(item))
        return completions


class SinkStrategy(Protocol):
    """How one sink's writes and its items' completions are committed."""

    marks_separately: bool
    """Whether its items' keys still need the store's own `complete` afterwards."""

    async def write(self, items: list[Item]) -> bool:
        """The write before completion (write-then-complete writes here); whether any
        item's state changed (refused, failed)."""
        ...

    async def commit(self, items: list[Item]) -> bool:
        """The write at completion (an atomic commit writes here); whether any item's
        state changed."""
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
        hold: Hold | None = None,
    ) -> None:
        self.sink = sink
        self.to_outputs = to_outputs
        self.call = call
        self.letters = letters
        self.pace = pace
        """Waits for the write rate limit's tokens for a number of items, when one is set."""
        self.hold = hold

    async def run(
        self, what: str, items: list[Item], send: Callable[[list[Item]], Awaitable[bool]]
    ) -> bool:
        """`send(live)` until it succeeds, dropping the items whose outputs it refused;
        whether any item's state changed."""
        live = items
        changed = False
        while live:
            try:
                if self.pace is not None:
                    await self.pace(len(live))
                return await send(live) or changed
            except OutputRejected as exc:
                kept = self._reject(live, exc)
                changed = True
                stops = () if self.letters else [i for i in live if i.state is State.DEAD]
                live = kept
                if self.hold is not None and self.hold(stops):
                    # In ordered mode an event refused here may come again (its letter is
                    # not written yet): what follows it in its lane is not sent behind it.
                    live = [item for item in live if item.state is not State.FAILED]
            except Exception as exc:
                self._failed(what, live, exc)
                return True
        return changed

    def outputs(self, items: list[Item]) -> list[Output]:
        """Every output of the items, in order."""
        return list(chain.from_iterable(map(self.to_outputs, items)))

    def _failed(self, what: str, items: list[Item], exc: Exception) -> None:
        kind = FailureKind.DEAD_LETTER_REFUSED if self.letters else FailureKind.SINK_FAILED
        text = f"{what} failed: {safe_text(exc)}"
        for item in items:
            item.fail(kind, text)

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

    async def write(self, items: list[Item]) -> bool:
        """Write the items' outputs (overwrites on a repeat)."""
        return await self.writer.run("sink write", items, self._send)

    async def _send(self, items: list[Item]) -> bool:
        outputs = self.writer.outputs(items)
        if outputs:
            await self.writer.call("sink write", partial(self.writer.sink.write, outputs))
        return False

    async def commit(self, items: list[Item]) -> bool:
        """Nothing: the writes happened before completion."""
        return False


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

    async def write(self, items: list[Item]) -> bool:
        """Nothing: the writes happen with the completion."""
        return False

    async def commit(self, items: list[Item]) -> bool:
        """Commit the items' outputs with their completions; a lost fence fails the item."""
        if not items:
            return False
        return await self.writer.run("commit", items, self._send)

    async def _send(self, items: list[Item]) -> bool:
        outputs = self.writer.outputs(items)
        completions = self.completions.all(items)
        accepted = await self.writer.call(
            "commit", partial(self.sink.write_and_complete, self.store, outputs, completions)
        )
        return settle(items, accepted, self.metrics)


class AtomicLaneCommit(AtomicCommit):
    """`AtomicCommit` for events off a lane; events on a watermark lane commit their writes
    with their lane's record (`AtomicLaneSink.write_and_commit_lanes`), no marker each."""

    def __init__(
        self,
        writer: _Writer,
        sink: AtomicLaneSink,
        store: IdempotencyStore,
        completions: Completions,
        metrics: Metrics,
    ) -> None:
        super().__init__(writer, sink, store, completions, metrics)
        self.lane_sink = sink

    async def commit_lanes(
        self, items: list[Item], lanes: Sequence[LaneCommit]
    ) -> tuple[list[bool], list[bool]]:
        """Commit the items' writes with the lane commits; per lane commit, its fence held.

        Raises `OutputRejected` for writes the sink refused (nothing of those items lands;
        the lanes stay leased where the store stopped, for the commit sent after them).
        """
        if self.writer.pace is not None and items:
            await self.writer.pace(len(items))
        outputs = self.writer.outputs(items)
        result: tuple[list[bool], list[bool]] = await self.writer.call(
            "commit",
            partial(self.lane_sink.write_and_commit_lanes, self.store, outputs, [], lanes),
        )
        return result


class NoDeadLetters:
    """No dead-letter sink: what should be dead-lettered is handed back for redelivery."""

    marks_separately = False

    async def write(self, items: list[Item]) -> bool:
        """Fail every item, keeping why it was to be dead-lettered."""
        for item in items:
            item.fail(
                FailureKind.NO_DEAD_LETTER_SINK,
                f"{item.reason}; no dead-letter sink is configured",
            )
        return bool(items)

    async def commit(self, items: list[Item]) -> bool:
        """The same as `write`, for items that became dead letters inside the commit."""
        return await self.write(items)


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
    hold: Hold | None = None,
) -> SinkStrategy:
    """The strategy for `sink` with `store`: atomic when the sink can commit with it."""
    if sink is None:
        return NoDeadLetters()
    writer = _Writer(sink, to_outputs, call, letters=letters, pace=pace, hold=hold)
    if isinstance(sink, AtomicSink) and sink.commits_with(store):
        if isinstance(sink, AtomicLaneSink) and sink.commits_lanes_with(store):
            return AtomicLaneCommit(writer, sink, store, completions, metrics)
        return AtomicCommit(writer, sink, store, completions, metrics)
    return WriteThenComplete(writer)


class _OffLane:
    """A lane-atomic strategy seen by the per-key steps: it commits only the events off a
    lane (the lane events commit with their lanes' records afterwards)."""

    marks_separately = False

    def __init__(self, strategy: SinkStrategy, lanes: LaneBatch) -> None:
        self.strategy = strategy
        self.lanes = lanes
        self.marks_separately = strategy.marks_separately
        self.lane_atomic = isinstance(strategy, AtomicLaneCommit)

    async def write(self, items: list[Item]) -> bool:
        """The strategy's write."""
        return await self.strategy.write(items)

    async def commit(self, items: list[Item]) -> bool:
        """The strategy's commit of the items off a lane (all of them, for a plain one)."""
        if self.lane_atomic:
            items = [item for item in items if item not in self.lanes.positions]
        return await self.strategy.commit(items)


def settle(items: list[Item], accepted: Sequence[bool], metrics: Metrics) -> bool:
    """Fail the items whose fence no longer held at commit; whether there were any."""
    if len(accepted) == len(items) and all(accepted):
        return False
    for item, ok in zip(items, accepted, strict=True):
        if not ok:
            item.fail(
                FailureKind.LEASE_LOST,
                "lease lost to another worker before commit; it commits instead",
            )
            metrics.count("lease_lost")
    return True


class Committer:
    """Commits a processed batch: outputs, dead letters, then completion markers.

    In ordered mode (`hold` given) the dead letters go first: a lane stops at an event
    whose letter did not land (no dead-letter sink, a refused letter, an outage), and what
    follows it in the lane is held for redelivery before any of it is written.
    """

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
        hold: Hold | None = None,
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
        self.hold = hold
        self.lane_store: Any = store
        """The store as a `LaneStore` (used only when the pipeline runs lanes)."""
        self.atomic_lanes = isinstance(outputs, AtomicLaneCommit) or isinstance(
            letters, AtomicLaneCommit
        )
        """Whether lane events' writes commit with their lane's record (`AtomicLaneCommit`)."""

    def _resplit(
        self, items: list[Item], stops: Collection[Item] = ()
    ) -> tuple[list[Item], list[Item]]:
        """After a step changed some items: hold their lanes (ordered mode), split again."""
        if self.hold is not None:
            self.hold(stops)
        return split(items)

    async def commit(self, items: list[Item], lanes: LaneBatch | None = None) -> None:
        """Write outputs and dead letters, then complete their keys (atomically where chosen)."""
        hook = self.hook if self.hooked() else None
        outputs, letters = self.outputs, self.letters
        if lanes is not None and self.atomic_lanes:
            # Lane events commit with their lane's record, at the end: only the others
            # take the per-key atomic steps below.
            outputs, letters = _OffLane(outputs, lanes), _OffLane(letters, lanes)
        done, dead = split(items)
        first = self.hold is not None and bool(dead)
        lettered: set[Item] = set()
        if first:
            if await letters.write(dead):
                done, dead = self._resplit(items)
            if await letters.commit(dead):
                done, dead = self._resplit(items)
            lettered.update(dead)
        if await outputs.write(done):
            if hook is not None:
                hook(Step.AFTER_SINK_WRITE, done)
            # Refused outputs made dead letters whose letters are not written yet.
            done, dead = self._resplit(items, [i for i in dead if i not in lettered])
        elif hook is not None:
            hook(Step.AFTER_SINK_WRITE, done)
        todo = [i for i in dead if i not in lettered] if first else dead
        if todo and await letters.write(todo):
            done, dead = self._resplit(items)
        if hook is not None:
            hook(Step.BEFORE_COMPLETE, done + dead)
        if await outputs.commit(done):
            # Outputs the sink refused inside its transaction are dead letters now.
            before = set(dead)
            done, dead = self._resplit(items)
            late = [item for item in dead if item not in before]
            if late and await letters.write(late):
                done, dead = self._resplit(items)
        todo = [i for i in dead if i not in lettered] if first else dead
        if todo and await letters.commit(todo):
            done, dead = self._resplit(items)
        marked: list[Item] = []
        if outputs.marks_separately:
            marked += done
        if letters.marks_separately:
            marked += dead
        if lanes is not None:
            marked = [i for i in marked if i not in lanes.positions]
        if marked:
            await self._complete(marked)
        if lanes is not None:
            if self.atomic_lanes:
                await self.commit_lanes_atomically(items, lanes)
            else:
                await self.commit_lanes(items, lanes)
        if hook is not None:
            hook(Step.AFTER_COMPLETE, [i for i in items if i.state in (State.DONE, State.DEAD)])

    async def commit_lanes(self, items: list[Item], lanes: LaneBatch) -> None:
        """Write the batch's lanes' new states (after every write landed); what a lane does
        not settle, or whose fence failed, is failed for redelivery."""
        commits = lanes.commits()
        if commits:
            await self._commit_lane_states(commits, lanes)

    async def commit_lanes_atomically(self, items: list[Item], lanes: LaneBatch) -> None:
        """Commit the lane events' writes with their lanes' records (`AtomicLaneCommit`).

        Dead letters first, as links that keep the lease (`LaneSettlement.link`), then the
        outputs with each lane's final state; a link's state settles nothing whose writes
        come later, so a crash between them loses and repeats nothing. Without lane writes
        to carry, the lanes commit on their own (`commit_lanes`). Writes the sink refuses
        make dead letters, written before the lanes settle them, then the rest goes again.
        """
        refused: set[str] = set()  # lanes whose fence failed: their items come again
        landed: set[Item] = set()  # items whose writes a link committed (letters)
        for _ in range(2 * len(items) + 2):  # every round that sends again settles an item
            calls = [
                (strategy, work)
                for strategy in (self.letters, self.outputs)
                if isinstance(strategy, AtomicLaneCommit)
                and (work := self._lane_work(strategy, lanes, refused, landed))
            ]
            if not calls:
                rest = [c for c in lanes.commits() if c.claim.lane not in refused]
                if rest:
                    await self._commit_lane_states(rest, lanes)
                return
            for n, (strategy, work) in enumerate(calls):
                last = n == len(calls) - 1
                pending = [item for _, later in calls[n + 1 :] for item in later]
                mine = None if last else {lanes.positions[i][0] for i in work}
                commits = [
                    c
                    for c in lanes.commits(pending=pending, lanes=mine, link=not last)
                    if c.claim.lane not in refused
                ]
                try:
                    _, accepted = await strategy.commit_lanes(work, commits)
                except OutputRejected as exc:
                    await self._rejected(strategy, work, exc)
                    break  # the lanes are still leased: the rest goes again, settled anew
                except Exception as exc:
                    # Every lane not committed yet comes again, not only this call's.
                    rest = [c for c in lanes.commits() if c.claim.lane not in refused]
                    await self._lanes_failed(rest, lanes, exc)
                    return
                for commit, ok in zip(commits, accepted, strict=True):
                    if not ok:
                        refused.add(commit.claim.lane)
                        self._lane_lost(commit, lanes)
                landed.update(work)
            else:
                return
        raise ConfigurationError("lane commits kept being refused without settling an event")

    def _lane_work(
        self,
        strategy: AtomicLaneCommit,
        lanes: LaneBatch,
        refused: Collection[str],
        landed: Collection[Item],
    ) -> list[Item]:
        """The lane items whose writes `strategy` still commits with their lanes."""
        state = State.DEAD if strategy is self.letters else State.DONE
        to_outputs = strategy.writer.to_outputs
        return [
            item
            for item, (lane, _) in lanes.positions.items()
            if item.state is state
            and lane not in refused
            and item not in landed
            and to_outputs(item)
        ]

    async def _rejected(
        self, strategy: AtomicLaneCommit, items: list[Item], exc: OutputRejected
    ) -> None:
        """Settle the items whose writes were refused; write the letters of the outputs'
        (a plain dead-letter sink now; an atomic one in the next round, with its lanes)."""
        before = [item for item in items if item.state is State.DONE]
        strategy.writer._reject(items, exc)
        late = [item for item in before if item.state is State.DEAD]
        if self.hold is not None:
            self.hold([] if strategy is self.letters else late)
        plain = not isinstance(self.letters, AtomicLaneCommit)
        if late and plain and await self.letters.write(late) and self.hold is not None:
            self.hold(())

    async def _commit_lane_states(self, commits: Sequence[LaneCommit], lanes: LaneBatch) -> None:
        try:
            accepted = await self.call(
                "commit lanes", partial(self.lane_store.commit_lanes, commits)
            )
        except Exception as exc:
            await self._lanes_failed(commits, lanes, exc)
            return
        for commit, ok in zip(commits, accepted, strict=True):
            if not ok:
                self._lane_lost(commit, lanes)

    async def _lanes_failed(
        self, commits: Sequence[LaneCommit], lanes: LaneBatch, exc: Exception
    ) -> None:
        """A lane commit that failed: what it would settle comes again, the leases end."""
        text = f"lane commit failed: {safe_text(exc)}"
        for item in lanes.items_of(commits):
            if item.state in (State.DONE, State.DEAD):
                item.fail(FailureKind.STORE_FAILED, text)
        try:
            await self.lane_store.release_lanes([c.claim for c in commits])
        except Exception as again:
            log.warning("releasing lanes failed: %s", safe_text(again))

    def _lane_lost(self, commit: LaneCommit, lanes: LaneBatch) -> None:
        self.metrics.count("lease_lost")
        for item in lanes.items_of([commit]):
            if item.state in (State.DONE, State.DEAD):
                item.fail(
                    FailureKind.LEASE_LOST,
                    "lane lease lost to another worker before commit; it commits instead",
                )

    async def _complete(self, items: list[Item]) -> None:
        completions = self.completions.all(items)
        try:
            accepted = await self.call("complete", partial(self.store.complete, completions))
        except Exception as exc:
            text = f"completion failed: {safe_text(exc)}"
            for item in items:
                item.fail(FailureKind.STORE_FAILED, text)
        else:
            settle(items, accepted, self.metrics)
