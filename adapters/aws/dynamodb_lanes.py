"""Lane records as items of the DynamoDB state table.

One item per lane holding the `LaneRecord` the core's `onceflow.watermarks` decides:
written by a Put conditional on the version read (`record_put`: claims, plain commits,
releases), or, in an atomic mode, by each link of a chained commit (`chained_put`: at most
99 outputs and the record per TransactWriteItems, conditional on the version the previous
link wrote and the claim's token).
"""

from __future__ import annotations

from typing import Any

from onceflow.adapters.aws.dynamodb_requests import stored_key
from onceflow.records import LaneRecord
from onceflow.watermarks import decode_state, encode_state

__all__ = [
    "LANE_RECORD",
    "chained_put",
    "decode_record",
    "encode_record",
    "record_key",
    "record_put",
]

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
    elif "version" not in read:  # an item of another shape (an old sketch's): replaced once
        body["ConditionExpression"] = "attribute_not_exists(#v)"
        body["ExpressionAttributeNames"] = {"#v": "version"}
    else:
        body["ConditionExpression"] = "#v = :v"
        body["ExpressionAttributeNames"] = {"#v": "version"}
        body["ExpressionAttributeValues"] = {":v": read["version"]}
    return body


def chained_put(
    table: str,
    written: LaneRecord,
    expected: int,
    ttl_seconds: float,
    *,
    key_attribute: str,
    ttl_attribute: str,
) -> dict[str, Any]:
    """One link of a chained lane commit: the record's Put, conditional on the version the
    chain's previous link wrote (`expected`) and the claim's token; a failed condition
    returns the item, so a link whose reply was lost is recognised by what it wrote."""
    return {
        "Put": {
            "TableName": table,
            "Item": encode_record(
                written, ttl_seconds, key_attribute=key_attribute, ttl_attribute=ttl_attribute
            ),
            "ConditionExpression": "#v = :v AND #t = :t",
            "ExpressionAttributeNames": {"#v": "version", "#t": "token"},
            "ExpressionAttributeValues": {
                ":v": {"N": str(expected)},
                ":t": {"S": written.token},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }
