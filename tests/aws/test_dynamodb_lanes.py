"""The sketched lane request pattern (benchmarks/aws_vs_powertools.py) on the moto server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from onceflow.adapters.aws.dynamodb_lanes import (
    LaneMark,
    advance_actions,
    lane_put,
    read_lanes,
    sequence_text,
)
from onceflow.adapters.aws.dynamodb_requests import batch_write, default_retry, transact

pytestmark = pytest.mark.emulator

KINESIS = "49590338271490256608559692538361571095921575989136588898"


def test_padded_sequences_compare_as_numbers() -> None:
    """56-digit Kinesis sequences (past DynamoDB's 38-digit numbers) order as numbers."""
    assert (sequence_text(KINESIS) or "") < (sequence_text(KINESIS + "0") or "")
    assert (sequence_text("9") or "") < (sequence_text("10") or "")
    assert sequence_text("007") == sequence_text("7")
    assert sequence_text("abc") is None and sequence_text(None) is None


def test_upsert_put_then_one_read_settles_the_redelivery(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    """The lane's Put follows the outputs' BatchWriteItem; redelivery reads one item."""
    table = dynamodb_tables("lanes")
    retry = default_retry()
    assert read_lanes(dynamodb_client, table, ["s1"], retry, key_attribute="pk") == {
        "s1": LaneMark("s1", None)
    }
    high = sequence_text(KINESIS) or ""
    outputs = [(table, {"PutRequest": {"Item": {"pk": {"S": f"out-{i}"}}}}) for i in range(30)]
    batch_write(dynamodb_client, outputs, retry)
    batch_write(dynamodb_client, [(table, lane_put(table, "s1", high, key_attribute="pk"))], retry)
    [mark] = read_lanes(dynamodb_client, table, ["s1"], retry, key_attribute="pk").values()
    assert mark.settles(KINESIS) and not mark.settles(KINESIS + "1")


def test_chained_chunks_refuse_a_second_worker_and_keep_a_half_failed_batch(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    """Chunk i commits only on chunk i-1's watermark: a stale worker is refused whole."""
    table = dynamodb_tables("lanes")
    retry = default_retry()
    read = read_lanes(dynamodb_client, table, ["s1"], retry, key_attribute="pk")["s1"]
    highs = [sequence_text("10") or "", sequence_text("20") or ""]
    first, second = advance_actions(table, "s1", read, highs, key_attribute="pk")

    def put(pk: str) -> dict[str, Any]:
        return {"Put": {"TableName": table, "Item": {"pk": {"S": pk}}}}

    assert transact(dynamodb_client, [put("a"), first.request]) is None
    # The batch fails after its first chunk: the watermark is that chunk's high.
    mark = read_lanes(dynamodb_client, table, ["s1"], retry, key_attribute="pk")["s1"]
    assert mark.watermark == highs[0]
    # A second worker that read the lane before the first chunk committed is refused.
    [stale] = advance_actions(table, "s1", read, highs[1:], key_attribute="pk")
    reasons = transact(dynamodb_client, [put("b"), stale.request])
    assert reasons is not None and reasons[1].code == "ConditionalCheckFailed"
    assert "Item" not in dynamodb_client.get_item(TableName=table, Key={"pk": {"S": "b"}})
    # The first worker's resend of its second chunk goes on from its own first chunk.
    assert transact(dynamodb_client, [put("c"), second.request]) is None
    mark = read_lanes(dynamodb_client, table, ["s1"], retry, key_attribute="pk")["s1"]
    assert mark.watermark == highs[1]


def test_a_sketch_item_under_a_lane_key_is_replaced_by_the_lane_record(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    """An item of the sketch's shape where the store keeps a lane: read as absent, and
    the store's conditional Put replaces it instead of failing on its missing version."""
    from onceflow.adapters.aws import DynamoDBIdempotencyStore
    from onceflow.records import ClaimStatus, LaneRequest

    table = dynamodb_tables("lanes")
    lane = "orders#lane#shardId-1"
    sketch = lane_put(table, lane, sequence_text("5") or "", key_attribute="pk")
    batch_write(dynamodb_client, [(table, sketch)], default_retry())
    store = DynamoDBIdempotencyStore(table, client=dynamodb_client)

    async def claim() -> None:
        [leased] = await store.claim_lanes([LaneRequest(lane, 1, 9)], 30)
        assert leased.status is ClaimStatus.NEW and leased.state.watermark == -1

    anyio.run(claim)
