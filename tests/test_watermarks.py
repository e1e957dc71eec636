"""The pure lane-watermark logic every lane store shares (onceflow.watermarks)."""

from __future__ import annotations

from onceflow.records import ClaimStatus, LaneCommit, LaneRequest, LaneState
from onceflow.watermarks import (
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
