"""TableIdempotencyStore as a LaneStore (onceflow.watermarks) on Azurite."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from onceflow.adapters.azure import TableIdempotencyStore
from onceflow.adapters.azure.table_lanes import record_address
from onceflow.clock import ManualClock
from onceflow.records import LaneCommit, LaneRequest, LaneState
from onceflow.testing.contracts import LaneStoreContract
from onceflow.watermarks import LANE_TTL_SECONDS
from tests.support.lane_scenarios import two_workers_one_lane
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator


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
    two_workers_one_lane(one, two, clock)


class TestTableLaneStore(LaneStoreContract):
    """The core's lane store contract on Azurite (two handles, one table)."""

    @pytest.fixture
    def store(self, clock: ManualClock, azurite_server: Azurite) -> TableIdempotencyStore:
        self._pair = stores(azurite_server, clock)
        return self._pair[0]  # type: ignore[no-any-return]

    @pytest.fixture
    def other_store(self, store: TableIdempotencyStore) -> TableIdempotencyStore:
        return self._pair[1]  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_purge_deletes_a_lane_record_only_past_the_lane_ttl(azurite_server: Azurite) -> None:
    """A lane row outlives the keys' TTL; `purge` deletes it once the lane TTL passed."""
    clock = ManualClock()
    store, _ = stores(azurite_server, clock)
    lane = "orders#lane#0"
    [claim] = await store.claim_lanes([LaneRequest(lane, 1, 9)], 30)
    assert await store.commit_lanes([LaneCommit(claim, LaneState(9))]) == [True]
    partition = record_address(lane)[0]
    clock.advance(30 * 86_400.0)
    assert await store.purge(partition=partition) == 0
    clock.advance(LANE_TTL_SECONDS)
    assert await store.purge(partition=partition) == 1
    [fresh] = await store.claim_lanes([LaneRequest(lane, 1, 9)], 30)
    assert fresh.state.watermark == -1
