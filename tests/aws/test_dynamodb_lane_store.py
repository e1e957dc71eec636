"""DynamoDBIdempotencyStore as a LaneStore (onceflow.watermarks) on the moto server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws import DynamoDBIdempotencyStore
from onceflow.clock import ManualClock
from onceflow.testing.contracts import LaneStoreContract
from tests.support.lane_scenarios import two_workers_one_lane

pytestmark = pytest.mark.emulator


def stores(client: Any, table: str, clock: ManualClock) -> tuple[Any, Any]:
    """Two workers' handles on one state table."""
    return (
        DynamoDBIdempotencyStore(table, client=client, clock=clock, ttl_seconds=3_600),
        DynamoDBIdempotencyStore(table, client=client, clock=clock, ttl_seconds=3_600),
    )


def test_two_workers_one_lane_lost_reply_takeover_and_expiry(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    """The watermark transitions of tests/test_watermarks.py, on the real item writes."""
    clock = ManualClock()
    one, two = stores(dynamodb_client, dynamodb_tables("lanes"), clock)
    two_workers_one_lane(one, two, clock)


class TestDynamoDBLaneStore(LaneStoreContract):
    """The core's lane store contract on the moto server (two handles, one table)."""

    @pytest.fixture
    def store(
        self, clock: ManualClock, dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
    ) -> DynamoDBIdempotencyStore:
        self._pair = stores(dynamodb_client, dynamodb_tables("lanes"), clock)
        return self._pair[0]  # type: ignore[no-any-return]

    @pytest.fixture
    def other_store(self, store: DynamoDBIdempotencyStore) -> DynamoDBIdempotencyStore:
        return self._pair[1]  # type: ignore[no-any-return]
