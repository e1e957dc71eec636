"""Lane watermark items on the moto server: padding, one read per batch, chained commits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws.dynamodb_lanes import (
    LaneMark,
    advance_actions,
    lane_put,
    new_watermark,
    read_lanes,
    sequence_text,
    settled_by,
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


def test_watermark_stops_at_the_first_gap_and_never_moves_down() -> None:
    """A failed event is a gap: the watermark stops before it; an older batch leaves it."""
    mark = LaneMark("s1", None)
    assert new_watermark(mark, [("3", True), ("1", True), ("2", False)]) == sequence_text("1")
    high = LaneMark("s1", sequence_text("5"))
    assert new_watermark(high, [("2", True), ("3", True)]) is None
    assert high.settles("5") and not high.settles("6") and not high.settles("x")


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


def test_a_chunk_sent_again_after_a_lost_reply_is_recognised_as_settled(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    """The resend either succeeds (same ClientRequestToken) or finds its own watermark."""
    table = dynamodb_tables("lanes")
    read = read_lanes(dynamodb_client, table, ["s1"], default_retry(), key_attribute="pk")["s1"]
    high = sequence_text("10") or ""
    [update] = advance_actions(table, "s1", read, [high], key_attribute="pk")
    chunk = [{"Put": {"TableName": table, "Item": {"pk": {"S": "a"}}}}, update.request]
    assert transact(dynamodb_client, chunk) is None
    again = transact(dynamodb_client, chunk)  # the first reply "lost": the worker resends
    if again is not None:
        assert again[1].code == "ConditionalCheckFailed" and settled_by(again[1].item, high)
    assert not settled_by(None, high)
    assert not settled_by({"wm": {"S": sequence_text("9") or ""}}, high)
