"""Atomic sinks on watermark lanes (`AtomicLaneCommit`): lane events commit their writes
with their lane's record, no marker each; dead letters go first as a link that keeps the
lease, so nothing is written twice and the watermark passes only what landed."""

from __future__ import annotations

from typing import Any

from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.adapters.memory.faults import Faults
from onceflow.commit import AtomicLaneCommit
from onceflow.errors import PermanentError
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.pipeline import Pipeline
from onceflow.records import ClaimStatus, LaneRequest
from onceflow.retry import RetryPolicy
from onceflow.watermarks import (
    LANE_ATTRIBUTE,
    LaneSettlement,
    commit_record,
    keeps_lease,
    settles,
    take,
)

LANE = {LANE_ATTRIBUTE: "shard-0"}


def _events(count: int, source: str = "s") -> list[Event]:
    return [
        Event(id=f"e{n}", source=source, sequence=str(100 + n), data=b"{}", attributes=LANE)
        for n in range(count)
    ]


def _process(event: Event) -> dict[str, Any]:
    if event.id in {"e2", "e5"}:
        raise PermanentError("poison")
    return {"id": event.id}


def _pipeline(store: MemoryIdempotencyStore, sink: MemorySink, letters: MemorySink) -> Pipeline:
    return Pipeline(
        _process, sink, store, letters, clock=store.clock, backend_retry=RetryPolicy(attempts=1)
    )


def test_an_atomic_sink_settles_lane_events_by_the_lane_record_alone() -> None:
    """No per-key marker for a lane event; outputs and letters written once each."""
    store = MemoryIdempotencyStore(clock=ManualClock())
    sink, letters = MemorySink(), MemorySink()
    pipeline = _pipeline(store, sink, letters)
    assert pipeline.watermarks and isinstance(pipeline._committer.outputs, AtomicLaneCommit)
    result = pipeline.run_batch(_events(8))
    assert sorted(result.dead_lettered) == ["e2", "e5"] and len(result.processed) == 6
    assert store.rows == {}  # no marker per event
    [record] = store.lanes.values()
    assert record.state.watermark == 107 and record.state.inflight is None
    assert record.lease_expires_at == float("-inf")
    again = pipeline.run_batch(_events(8))
    assert len(again.duplicates) == 8
    assert set(sink.write_counts().values()) == {1} and len(sink) == 6
    assert set(letters.write_counts().values()) == {1} and len(letters) == 2


def test_outputs_failing_after_the_letters_link_write_nothing_twice() -> None:
    """The letters link landed (lease kept, only the letters' events settled), then the
    outputs' commit failed: the redelivery finds the dead letters settled and writes the
    outputs once; no letter is written again."""
    clock = ManualClock()
    faults = Faults()
    store = MemoryIdempotencyStore(clock=clock)
    sink, letters = MemorySink(faults=faults), MemorySink()
    pipeline = _pipeline(store, sink, letters)
    faults.fail("sink.write_and_complete")
    first = pipeline.run_batch(_events(8))
    assert len(first.failed) == 8  # what the lane would settle comes again
    assert {first.failures[i].kind for i in first.failed} == {FailureKind.STORE_FAILED}
    assert len(letters) == 2 and len(sink) == 0
    [record] = store.lanes.values()
    assert settles(record.state, 102) and settles(record.state, 105)
    assert not settles(record.state, 100) and record.state.watermark == 99
    again = pipeline.run_batch(_events(8))
    assert again.ok and len(again.processed) == 6 and sorted(again.duplicates) == ["e2", "e5"]
    assert set(letters.write_counts().values()) == {1}
    assert set(sink.write_counts().values()) == {1} and len(sink) == 6


def test_a_stale_worker_cannot_commit_a_lane_another_took_over() -> None:
    """The lane's fence: a commit after a takeover is refused whole (LEASE_LOST)."""
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    sink, letters = MemorySink(), MemorySink()
    events = _events(4)
    taken: list[Any] = []

    class Stalls:
        async def process(self, event: Event) -> dict[str, Any]:
            if not taken:
                clock.advance(400)  # past the lease: the other worker takes the lane
                other = _pipeline(store.handle(), sink, letters)
                taken.append(await other.process_batch(events))
            return {"id": event.id}

    stale = Pipeline(Stalls(), sink, store, letters, clock=clock)
    result = stale.run_batch(events)
    assert taken[0].ok and len(taken[0].processed) == 3, taken[0].reasons  # e2: a letter
    assert len(result.failed) == 4, result.reasons
    assert {result.failures[i].kind for i in result.failed} == {FailureKind.LEASE_LOST}
    assert set(sink.write_counts().values()) == {1}


def test_a_link_keeps_the_lease_and_holds_back_what_comes_later() -> None:
    """`LaneSettlement.holding` unsettles the keys still to be written; a link's record
    keeps the lease and the range in flight, the last link's ends it."""
    request = LaneRequest("s#lane#0", 10, 13, (10, 11, 12, 13))
    claim, written = take(None, request, now=0.0, lease_seconds=60, token="t")
    assert claim.status is ClaimStatus.NEW and written is not None
    outcomes = tuple((f"k{p}", p, True, 0, 0) for p in range(10, 14))
    settlement = LaneSettlement(claim, claim.state, frozenset(), outcomes=outcomes)
    final = LaneSettlement(claim, claim.state, frozenset(), outcomes=outcomes)
    state = settlement.holding({"k12", "k13"})
    assert state.watermark == 11 and not settles(state, 12) and not settles(state, 13)
    assert settlement.holding(()) == settlement.state
    link = LaneSettlement(claim, state, frozenset(), outcomes=outcomes, link=True)
    assert keeps_lease(link) and not keeps_lease(final)
    kept = commit_record(written, link, now=1.0)
    assert kept.lease_expires_at == 60.0 and kept.state.inflight == (10, 13)
    ended = commit_record(kept, final, now=2.0)
    assert ended.lease_expires_at == float("-inf") and ended.state.inflight is None
