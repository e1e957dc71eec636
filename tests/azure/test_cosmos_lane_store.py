"""CosmosIdempotencyStore as a LaneStore (onceflow.watermarks) on the Cosmos server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.cosmos import CosmosClient, PartitionKey

from onceflow.adapters.azure import CosmosIdempotencyStore
from onceflow.clock import ManualClock
from onceflow.testing.contracts import LaneStoreContract
from tests.support.lane_scenarios import two_workers_one_lane
from tests.support.servers import CosmosServer

pytestmark = pytest.mark.emulator


def stores(server: CosmosServer, clock: ManualClock) -> tuple[Any, Any]:
    """Two workers' handles on one fresh container."""
    client = CosmosClient(server.endpoint, credential=server.key, enable_endpoint_discovery=False)
    database = client.create_database_if_not_exists(f"db{uuid.uuid4().hex[:8]}")
    container = database.create_container(
        "lanes", partition_key=PartitionKey(path="/pk"), default_ttl=-1
    )
    return tuple(  # type: ignore[return-value]
        CosmosIdempotencyStore(container, clock=clock, ttl_seconds=3_600) for _ in range(2)
    )


def test_two_workers_one_lane_lost_reply_takeover_and_expiry(cosmos: CosmosServer) -> None:
    """The watermark transitions of tests/test_watermarks.py, on the real item writes."""
    clock = ManualClock()
    one, two = stores(cosmos, clock)
    two_workers_one_lane(one, two, clock)


class TestCosmosLaneStore(LaneStoreContract):
    """The core's lane store contract on the Cosmos server (two handles, one container)."""

    @pytest.fixture
    def store(self, clock: ManualClock, cosmos: CosmosServer) -> CosmosIdempotencyStore:
        self._pair = stores(cosmos, clock)
        return self._pair[0]  # type: ignore[no-any-return]

    @pytest.fixture
    def other_store(self, store: CosmosIdempotencyStore) -> CosmosIdempotencyStore:
        return self._pair[1]  # type: ignore[no-any-return]
