"""Lane records as items of the DynamoDB state table.

The store's code path is the second half (`record_key`, `decode_record`,
`encode_record`, `record_put`): one item per lane holding the `LaneRecord` the core's
`onceflow.watermarks` decides, written by a Put conditional on the version read.

The first half (`LaneMark`, `read_lanes`, `lane_put`, `advance_actions`) is the request
pattern sketched before the runner kept lanes: a bare watermark string per lane, advanced
by chained conditional Updates, one per 99-output transaction chunk. Only
`benchmarks/aws_vs_powertools.py` (`lane_sketch_handler`) still drives it; it writes
items of another shape under the same keys, so never point it at a store's table. It
goes once that benchmark measures the runner's own lane path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from onceflow.adapters.aws.dynamodb_requests import (
    TransactAction,
    batch_get,
    stored_key,
    transact_action,
)
from onceflow.records import LaneRecord
from onceflow.retry import RetryPolicy
from onceflow.watermarks import decode_state, encode_state

__all__ = [
    "LANE_RECORD",
    "SEQUENCE_WIDTH",
    "LaneMark",
    "advance_actions",
    "decode_record",
    "encode_record",
    "lane_put",
    "read_lanes",
    "record_key",
    "record_put",
    "sequence_text",
]

SEQUENCE_WIDTH = 128
"""Digits a stored sequence is padded to (Kinesis sequence numbers have about 56)."""
LANE_PREFIX = "lane#"
WATERMARK = "wm"
"""The lane item's attribute holding the padded watermark."""


class LaneMark(NamedTuple):
    """What a lane's item held when read: its padded watermark, None for a new lane."""

    lane: str
    watermark: str | None

    def settles(self, sequence: str) -> bool:
        """Whether an event at `sequence` is at or below the watermark (a duplicate)."""
        padded = sequence_text(sequence)
        return padded is not None and self.watermark is not None and padded <= self.watermark


def sequence_text(sequence: str | None) -> str | None:
    """`sequence` zero-padded to `SEQUENCE_WIDTH` digits; None when it is not a decimal.

    None means the event has no usable lane position: it keeps its per-key marker.
    """
    if sequence is None or not sequence.isdigit() or not sequence.isascii():
        return None
    digits = sequence.lstrip("0") or "0"
    if len(digits) > SEQUENCE_WIDTH:
        return None
    return digits.rjust(SEQUENCE_WIDTH, "0")


def lane_pk(lane: str) -> str:
    """The partition-key value of a lane's item (long lane names hashed, as keys are)."""
    return stored_key(LANE_PREFIX + lane)


def read_lanes(
    client: Any, table: str, lanes: Sequence[str], retry: RetryPolicy, *, key_attribute: str
) -> dict[str, LaneMark]:
    """Every lane's mark, in one BatchGetItem per 100 lanes (consistent reads)."""
    keys = [{key_attribute: {"S": lane_pk(lane)}} for lane in lanes]
    found = batch_get(client, table, keys, retry, key_attribute=key_attribute)
    marks = {}
    for lane in lanes:
        item = found.get(lane_pk(lane))
        held = item.get(WATERMARK, {}).get("S") if item else None
        marks[lane] = LaneMark(lane, held)
    return marks


def lane_put(table: str, lane: str, watermark: str, *, key_attribute: str) -> dict[str, Any]:
    """The lane item as a BatchWriteItem PutRequest (`UPSERT` mode: one per batch per lane).

    Send it only after every output of the batch landed, in a request of its own:
    BatchWriteItem is not atomic (items come back unprocessed) and its chunks go in
    parallel, so a watermark sent beside outputs could land above an output that never
    does, and that output would be lost. Unconditional (BatchWriteItem takes no
    conditions): a stale worker can only move the watermark down, which makes later
    redeliveries reprocess keyed overwrites, never skip one.
    """
    item = {key_attribute: {"S": lane_pk(lane)}, WATERMARK: {"S": watermark}}
    return {"PutRequest": {"Item": item}}


def advance_actions(
    table: str,
    lane: str,
    read: LaneMark,
    highs: Sequence[str],
    *,
    key_attribute: str,
) -> list[TransactAction]:
    """One conditional Update of the lane item per transaction chunk, chained.

    Chunk i moves the watermark to `highs[i]` only if it is still `highs[i-1]` (the
    first: the value read at claim time), so a second worker on the lane, or a chunk sent
    after another worker moved on, is refused whole; a batch that failed half-way leaves
    the watermark at its last committed chunk, and its resend starts from there.
    """
    actions = []
    expected = read.watermark
    for high in highs:
        names = {"#w": WATERMARK}
        values: dict[str, Any] = {":new": {"S": high}}
        if expected is None:
            condition = "attribute_not_exists(#w)"
        else:
            condition = "#w = :seen"
            values[":seen"] = {"S": expected}
        body = {
            "TableName": table,
            "Key": {key_attribute: {"S": lane_pk(lane)}},
            "UpdateExpression": "SET #w = :new",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        actions.append(transact_action({"Update": body}, {key_attribute}))
        expected = high
    return actions


# -- the core's LaneStore protocol (onceflow.watermarks): one record per lane ----------------

LANE_RECORD = "lane#"
"""Key prefix of a `LaneRecord` item (event keys are `source#id`: kept apart by it)."""


def record_key(lane: str, key_attribute: str) -> dict[str, Any]:
    """The typed key of a lane's record item."""
    return {key_attribute: {"S": stored_key(LANE_RECORD + lane)}}


def decode_record(lane: str, item: dict[str, Any] | None, now: float) -> LaneRecord | None:
    """The stored record, or None when absent or past its TTL (counted as absent)."""
    if item is None or "state" not in item:
        return None
    if float(item["expires"]["N"]) <= now:
        return None
    lease = item.get("lease_expires_at", {}).get("N")
    return LaneRecord(
        lane,
        decode_state(item["state"]["S"]),
        item.get("token", {}).get("S", ""),
        float(lease) if lease is not None else float("-inf"),
        int(item["version"]["N"]),
        float(item["updated_at"]["N"]),
    )


def encode_record(
    record: LaneRecord, ttl_seconds: float, *, key_attribute: str, ttl_attribute: str
) -> dict[str, Any]:
    """The record as a typed item; `expires` in the store's clock, the TTL attribute for
    DynamoDB's own (lazy) clean-up."""
    item: dict[str, Any] = {
        **record_key(record.lane, key_attribute),
        "state": {"S": encode_state(record.state)},
        "token": {"S": record.token},
        "version": {"N": str(record.version)},
        "updated_at": {"N": repr(record.updated_at)},
        "expires": {"N": repr(record.updated_at + ttl_seconds)},
        ttl_attribute: {"N": str(int(record.updated_at + ttl_seconds))},
    }
    if record.lease_expires_at != float("-inf"):
        item["lease_expires_at"] = {"N": repr(record.lease_expires_at)}
    return item


def record_put(
    table: str,
    written: LaneRecord,
    read: dict[str, Any] | None,
    ttl_seconds: float,
    *,
    key_attribute: str,
    ttl_attribute: str,
) -> dict[str, Any]:
    """The record's Put, conditional on the item read (its version; absent: no item)."""
    body: dict[str, Any] = {
        "TableName": table,
        "Item": encode_record(
            written, ttl_seconds, key_attribute=key_attribute, ttl_attribute=ttl_attribute
        ),
    }
    if read is None:
        body["ConditionExpression"] = "attribute_not_exists(#k)"
        body["ExpressionAttributeNames"] = {"#k": key_attribute}
    elif "version" not in read:  # an item of another shape (the sketch's): replaced once
        body["ConditionExpression"] = "attribute_not_exists(#v)"
        body["ExpressionAttributeNames"] = {"#v": "version"}
    else:
        body["ConditionExpression"] = "#v = :v"
        body["ExpressionAttributeNames"] = {"#v": "version"}
        body["ExpressionAttributeValues"] = {":v": read["version"]}
    return body
