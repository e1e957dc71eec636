"""Lane record items on the moto server: what an item of an older shape under a lane key
becomes (the request sketch that came before the runner kept lanes wrote such items)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from onceflow.adapters.aws.dynamodb_lanes import record_key

pytestmark = pytest.mark.emulator


def test_a_sketch_item_under_a_lane_key_is_replaced_by_the_lane_record(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    """An item of the old sketch's shape where the store keeps a lane: read as absent, and
    the store's conditional Put replaces it instead of failing on its missing version."""
    from onceflow.adapters.aws import DynamoDBIdempotencyStore
    from onceflow.records import ClaimStatus, LaneRequest

    table = dynamodb_tables("lanes")
    lane = "orders#lane#shardId-1"
    sketch = {**record_key(lane, "pk"), "wm": {"S": "5".rjust(128, "0")}}
    dynamodb_client.put_item(TableName=table, Item=sketch)
    store = DynamoDBIdempotencyStore(table, client=dynamodb_client)

    async def claim() -> None:
        [leased] = await store.claim_lanes([LaneRequest(lane, 1, 9)], 30)
        assert leased.status is ClaimStatus.NEW and leased.state.watermark == -1

    anyio.run(claim)
