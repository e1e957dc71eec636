"""The pure lane-watermark logic every lane store shares (onceflow.watermarks)."""

from __future__ import annotations

from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.adapters.memory.faults import Faults
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.pipeline import Pipeline
from onceflow.records import ClaimStatus, InvalidRecord, LaneCommit, LaneRequest, LaneState
from onceflow.retry import RetryPolicy
from onceflow.watermarks import (
    LANE_ATTRIBUTE,
    MAX_CRASHED,
    MAX_FAILURES,
    MAX_SETTLED,
    commit_record,
    decode_state,
    deliveries,
    encode_state,
    fence_holds,
    release_record,
    settle,
    settles,
    take,
)

BIG = 49590338271490256608559692538361571095921575989136588898  # a Kinesis-sized number


def test_a_whole_batch_raises_the_watermark_to_its_last_position() -> None:
    state = settle(LaneState(), [(p, True, 0) for p in (BIG + 10, BIG + 20, BIG + 30)])
    assert state.watermark == BIG + 30 and state.settled == () and state.failures == ()
    assert settles(state, BIG + 20) and not settles(state, BIG + 31)


def test_a_failure_in_the_middle_leaves_a_gap_its_successors_settle_above() -> None:
    batch = [(10, True, 0), (20, False, 1), (30, True, 0), (40, True, 0)]
    state = settle(LaneState(), batch)
    assert state.watermark == 10 and state.settled == ((30, 40),)
    assert state.failures == ((20, 1),) and deliveries(state, 20) == 2
    assert settles(state, 30) and not settles(state, 20)
    # The redelivery starts at the gap: it settles, the rest are duplicates.
    again = settle(state, [(20, True, 0), (30, True, 0), (40, True, 0), (50, True, 0)])
    assert again == LaneState(50)


def test_a_redelivery_below_the_watermark_changes_nothing() -> None:
    state = LaneState(100)
    assert settle(state, [(50, True, 0), (100, True, 0)]) == state


def test_a_lapsed_lease_charges_its_range_and_a_new_claim_takes_over() -> None:
    first, written = take(None, LaneRequest("l", 1, 9), now=0, lease_seconds=10, token="a")
    assert first.status is ClaimStatus.NEW and written is not None
    busy, none = take(written, LaneRequest("l", 1, 9), now=5, lease_seconds=10, token="b")
    assert busy.status is ClaimStatus.IN_PROGRESS and none is None
    second, taken = take(written, LaneRequest("l", 1, 9), now=11, lease_seconds=10, token="c")
    assert second.status is ClaimStatus.NEW and taken is not None
    assert deliveries(second.state, 5) == 2
    # The first holder's late commit is refused; the new holder's (twice: a lost reply) holds.
    assert not fence_holds(taken, LaneCommit(first, LaneState(9)))
    commit = LaneCommit(second, settle(second.state, [(1, True, 0), (9, True, 0)]))
    assert fence_holds(taken, commit)
    done = commit_record(taken, commit, now=12)
    assert fence_holds(done, commit) and done.state.watermark == 9 and done.state.crashed == ()
    assert done.lease_expires_at < 0 and done.version == taken.version + 1
    assert release_record(done, second, now=13) is None  # committed: nothing to release


def test_state_round_trips_through_its_encoding() -> None:
    state = LaneState(BIG, ((BIG + 5, BIG + 9),), ((BIG + 2, 3),), ((BIG + 1, BIG + 9, 1),), (1, 2))
    assert decode_state(encode_state(state)) == state


def test_a_request_the_state_settles_is_completed_without_a_write() -> None:
    first, written = take(None, LaneRequest("l", 1, 9), now=0, lease_seconds=10, token="a")
    assert written is not None
    done = commit_record(written, LaneCommit(first, LaneState(5, ((8, 9),))), now=1)
    for request in (LaneRequest("l", 1, 5), LaneRequest("l", 8, 9), LaneRequest("l", 4, 9, (4, 9))):
        claim, none = take(done, request, now=2, lease_seconds=10, token="b")
        assert claim.status is ClaimStatus.COMPLETED and none is None
        assert claim.version == done.version and claim.token is None
    claim, taken = take(done, LaneRequest("l", 4, 9), now=2, lease_seconds=10, token="b")
    assert claim.status is ClaimStatus.NEW and taken is not None  # 6 and 7 may lie between


def test_a_lane_state_stays_small_enough_for_one_stored_item() -> None:
    # An ordered batch whose partition keys alternate failing: every other event a gap.
    batch = [(BIG + 7 * i, i % 2 == 0, 1) for i in range(10_000)]
    state = settle(LaneState(), batch)
    assert len(state.settled) == MAX_SETTLED and len(state.failures) == MAX_FAILURES
    assert state.settled[0] == (BIG + 14, BIG + 14)  # the lowest runs are the ones kept
    assert state.failures[0] == (BIG + 7, 1)
    crashed = LaneState(crashed=tuple((BIG + i, BIG + i, 1) for i in range(3 * MAX_CRASHED)))
    kept = settle(crashed, [(BIG - 1, True, 0)]).crashed
    assert len(kept) == MAX_CRASHED
    assert len(encode_state(state._replace(crashed=kept, inflight=(BIG, BIG)))) < 32_000
    # What was forgotten is not settled: the source redelivers it behind the gap.
    assert not settles(state, BIG + 7 * 9_998)


def test_a_failed_key_claim_does_not_strand_the_batchs_lanes() -> None:
    """A batch mixing lane events and a per-key record (one the decoder could not read):
    the per-key claim fails, the leased lane is still processed and committed, so the
    redelivery finds it free and settled instead of leased for a whole lease."""
    clock = ManualClock()
    faults = Faults()
    store = MemoryIdempotencyStore(clock=clock, faults=faults)
    sink, letters = MemorySink(atomic=False), MemorySink(atomic=False)
    lane = {LANE_ATTRIBUTE: "shard-0"}
    events: list[Event | InvalidRecord] = [
        Event(id=f"e{n}", source="s", sequence=str(BIG + n), data=b"{}", attributes=lane)
        for n in range(5)
    ]
    events.append(InvalidRecord(id="bad", source="s", reason="not JSON", sequence=str(BIG + 9)))
    pipeline = Pipeline(
        lambda event: {"id": event.id}, sink, store, letters, clock=clock,
        backend_retry=RetryPolicy(attempts=1),
    )  # fmt: skip
    assert pipeline.watermarks
    faults.fail("store.claim")
    first = pipeline.run_batch(events)
    assert sorted(first.processed) == [f"e{n}" for n in range(5)] and first.failed == ["bad"]
    assert first.failures["bad"].kind is FailureKind.STORE_FAILED
    again = pipeline.run_batch(events)  # at once: no lease left behind
    assert sorted(again.duplicates) == [f"e{n}" for n in range(5)]
    assert again.dead_lettered == ["bad"]
    assert len(sink.contents()) == 5


def test_a_redelivered_batch_of_duplicates_writes_no_lane_record() -> None:
    """First delivery: one lease and one commit per lane; redelivery: a read, no write."""
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    sink, letters = MemorySink(atomic=False), MemorySink(atomic=False)
    events = [
        Event(
            id=f"e{n}", source="s", sequence=str(BIG + 3 * n), data=b"{}",
            attributes={LANE_ATTRIBUTE: f"shard-{n % 2}"},
        )
        for n in range(1_000)
    ]  # fmt: skip
    pipeline = Pipeline(lambda event: {"id": event.id}, sink, store, letters, clock=clock)
    assert len(pipeline.run_batch(events).processed) == 1_000
    versions = {lane: record.version for lane, record in store.lanes.items()}
    assert len(versions) == 2 and store.calls["commit_lanes"] == 1
    again = pipeline.run_batch(list(reversed(events)))
    assert len(again.duplicates) == 1_000
    assert {lane: record.version for lane, record in store.lanes.items()} == versions
    assert store.calls["commit_lanes"] == 1 and store.calls["claim"] == 0
