"""TableIdempotencyStore as a LaneStore (onceflow.watermarks) on Azurite."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from azure.data.tables import TableServiceClient

from onceflow import watermarks
from onceflow.adapters.azure import TableIdempotencyStore
from onceflow.clock import ManualClock
from onceflow.interfaces import LaneStore
from onceflow.records import ClaimStatus, LaneCommit, LaneRequest
from onceflow.testing.contracts import LaneStoreContract
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator

LANE = "kinesis:orders#lane#shardId-000000000000"
BIG = 49590338271490256608559692538361571095921575989136588898  # past int64


def stores(server: Azurite, clock: ManualClock) -> tuple[Any, Any]:
    """Two workers' handles on one fresh state table."""
    service = TableServiceClient.from_connection_string(server.connection_string)
    name = f"lanes{uuid.uuid4().hex[:10]}"
    service.create_table(name)
    return tuple(  # type: ignore[return-value]
        TableIdempotencyStore(service.get_table_client(name), clock=clock, ttl_seconds=3_600)
        for _ in range(2)
    )


def test_two_workers_one_lane_lost_reply_takeover_and_expiry(azurite_server: Azurite) -> None:
    """The watermark transitions of tests/test_watermarks.py, on the real item writes."""
    clock = ManualClock()
    one, two = stores(azurite_server, clock)
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
        [again] = await two.claim_lanes([request], 60)
        assert again.status is ClaimStatus.NEW
        assert watermarks.settles(again.state, BIG + 99)  # redelivery: duplicates
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
        # A record past the store's TTL counts as absent.
        clock.advance(3_601)
        [fresh] = await one.claim_lanes([nxt], 60)
        assert fresh.status is ClaimStatus.NEW and fresh.state.watermark == -1

    anyio.run(scenario)


class TestTableLaneStore(LaneStoreContract):
    """The core's lane store contract on Azurite (two handles, one table)."""

    @pytest.fixture
    def store(self, clock: ManualClock, azurite_server: Azurite) -> TableIdempotencyStore:
        self._pair = stores(azurite_server, clock)
        return self._pair[0]  # type: ignore[no-any-return]

    @pytest.fixture
    def other_store(self, store: TableIdempotencyStore) -> TableIdempotencyStore:
        return self._pair[1]  # type: ignore[no-any-return]
