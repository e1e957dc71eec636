"""The lane store scenario every backend's lane-store tests run on its real server."""

from __future__ import annotations

import uuid
from typing import Any

import anyio

from onceflow import watermarks
from onceflow.clock import ManualClock
from onceflow.interfaces import LaneStore
from onceflow.records import ClaimStatus, LaneCommit, LaneRequest

LANE = "kinesis:orders#lane#shardId-000000000000"
BIG = 49590338271490256608559692538361571095921575989136588898  # past int64 and 38 digits


def two_workers_one_lane(one: Any, two: Any, clock: ManualClock) -> None:
    """The watermark transitions of tests/test_watermarks.py on two handles of one store
    (TTL 3,600 s): two workers on one lane, a lost reply, a takeover, expiry."""
    assert isinstance(one, LaneStore)
    lane = f"{LANE}-{uuid.uuid4().hex[:6]}"
    request = LaneRequest(lane, BIG, BIG + 99)

    async def scenario() -> None:
        [mine] = await one.claim_lanes([request], 60)
        assert mine.status is ClaimStatus.NEW and mine.state.watermark == -1
        [theirs] = await two.claim_lanes([request], 60)
        assert theirs.status is ClaimStatus.IN_PROGRESS  # two workers on one lane
        state = watermarks.settle(mine.state, [(BIG + n, True, 1) for n in range(100)])
        commit = LaneCommit(mine, state)
        assert await one.commit_lanes([commit]) == [True]
        assert await one.commit_lanes([commit]) == [True]  # sent again: a lost reply
        # Redelivery of settled positions only: duplicates, nothing leased or written.
        [settled] = await two.claim_lanes([request], 60)
        assert settled.status is ClaimStatus.COMPLETED and settled.token is None
        assert watermarks.settles(settled.state, BIG + 99)
        # A redelivery reaching past the watermark takes the lane over.
        [again] = await two.claim_lanes([LaneRequest(lane, BIG, BIG + 100)], 60)
        assert again.status is ClaimStatus.NEW
        assert watermarks.settles(again.state, BIG + 99)  # its first 100: duplicates
        assert not watermarks.settles(again.state, BIG + 100)
        # The first worker's stale commit after the takeover is refused.
        assert await one.commit_lanes([commit]) == [False]
        # A lapsed lease is taken over and its range charged one delivery.
        nxt = LaneRequest(lane, BIG + 100, BIG + 120)
        assert await two.commit_lanes([LaneCommit(again, again.state)]) == [True]
        [crashing] = await two.claim_lanes([nxt], 60)
        assert crashing.status is ClaimStatus.NEW
        clock.advance(61)
        [taken] = await one.claim_lanes([nxt], 60)
        assert taken.status is ClaimStatus.NEW and taken.state.crashed
        await one.release_lanes([taken])
        [after] = await two.claim_lanes([nxt], 60)
        assert after.status is ClaimStatus.NEW and watermarks.settles(after.state, BIG + 99)
        # A lane record outlives the keys' TTL (the source may redeliver below it for
        # as long as it keeps the lane), and counts as absent past the lane TTL.
        await two.release_lanes([after])
        clock.advance(3_601)
        [kept] = await one.claim_lanes([nxt], 60)
        assert kept.status is ClaimStatus.NEW and watermarks.settles(kept.state, BIG + 99)
        clock.advance(watermarks.LANE_TTL_SECONDS + 1)
        [fresh] = await one.claim_lanes([nxt], 60)
        assert fresh.status is ClaimStatus.NEW and fresh.state.watermark == -1

    anyio.run(scenario)
