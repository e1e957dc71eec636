"""TableIdempotencyStore as a LaneStore (onceflow.watermarks) on Azurite."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from onceflow.adapters.azure import TableIdempotencyStore
from onceflow.clock import ManualClock
from onceflow.testing.contracts import LaneStoreContract
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
