"""Lane records as rows of the Azure state Table.

The store's code path is the second half (`record_address`, `decode_record`,
`encode_record`): one row per lane, in the partition of its source's markers, holding
the `LaneRecord` the core's `onceflow.watermarks` decides, written guarded by the ETag
read (`TableIdempotencyStore._lane_rmw`).

The first half (`LaneRow`, `read_lane`, `lane_operation`, `lane_chunks`) is the request
pattern sketched before the runner kept lanes: a bare watermark string per lane in
entity transactions of 99 outputs plus the lane row, each guarded by the ETag the
previous one left. Only `benchmarks/azure_stores.py` (`lane_sketch`) still drives it, on
a table of its own; it goes once that benchmark measures the runner's own lane path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from onceflow.adapters.azure.table_keys import bounded, encode_part
from onceflow.adapters.azure.table_transactions import MAX_OPERATIONS, Operation
from onceflow.identity import key_parts
from onceflow.records import LaneRecord
from onceflow.watermarks import decode_state, encode_state

Entity = dict[str, Any]

__all__ = [
    "LANE",
    "LaneRow",
    "decode_record",
    "encode_record",
    "lane_address",
    "lane_chunks",
    "lane_operation",
    "read_lane",
    "record_address",
    "sequence_text",
]

LANE = "w"
"""RowKey prefix of a lane's watermark row (markers are `k`, outputs `o`)."""
WATERMARK = "wm"
SEQUENCE_WIDTH = 128


class LaneRow(NamedTuple):
    """A lane's row as read: its padded watermark and ETag, both None for a new lane."""

    partition: str
    lane: str
    watermark: str | None
    etag: str | None

    def settles(self, sequence: str) -> bool:
        """Whether an event at `sequence` is at or below the watermark (a duplicate)."""
        padded = sequence_text(sequence)
        return padded is not None and self.watermark is not None and padded <= self.watermark


def sequence_text(sequence: str | None) -> str | None:
    """`sequence` zero-padded to `SEQUENCE_WIDTH` digits; None when it is not a decimal."""
    if sequence is None or not sequence.isascii() or not sequence.isdigit():
        return None
    digits = sequence.lstrip("0") or "0"
    return digits.rjust(SEQUENCE_WIDTH, "0") if len(digits) <= SEQUENCE_WIDTH else None


def lane_address(partition: str, lane: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a lane's row, in its events' marker partition."""
    return partition, LANE + bounded(encode_part(lane))


def read_lane(table: TableClient, partition: str, lane: str) -> LaneRow:
    """The lane's row (one point read; a query per partition when several lanes share it)."""
    pk, rk = lane_address(partition, lane)
    try:
        row = table.get_entity(pk, rk)
    except ResourceNotFoundError:
        return LaneRow(partition, lane, None, None)
    return LaneRow(partition, lane, row.get(WATERMARK), str(row.metadata["etag"]))


def lane_operation(row: LaneRow, watermark: str, etag: str | None) -> Operation:
    """The lane row's write in a transaction: create for a new lane, else ETag-guarded."""
    pk, rk = lane_address(row.partition, row.lane)
    entity = {"PartitionKey": pk, "RowKey": rk, WATERMARK: watermark}
    if etag is None:
        return ("create", entity)
    guard = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, {"mode": UpdateMode.REPLACE, **guard})


def lane_chunks(
    writes: Sequence[tuple[str, Operation]],
) -> Iterator[tuple[str, list[Operation]]]:
    """`(padded sequence, operation)` pairs, in sequence order, cut into chunks of 99.

    Yields each chunk's highest sequence and its writes; the caller adds the lane row's
    operation (`lane_operation`, with the ETag the previous chunk's commit returned).
    """
    ordered = sorted(writes, key=lambda w: w[0])
    room = MAX_OPERATIONS - 1
    for start in range(0, len(ordered), room):
        piece = ordered[start : start + room]
        yield piece[-1][0], [op for _, op in piece]


# -- the core's LaneStore protocol (onceflow.watermarks): one record row per lane -------------


def record_address(lane: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a lane's record: in the partition of its source's markers."""
    source, marker, name = lane.rpartition("#lane#")
    if not marker:
        source, name = key_parts(lane)
    return lane_address(bounded(encode_part(source)), name)


def decode_record(lane: str, row: Entity | None, now: float) -> LaneRecord | None:
    """The stored record, or None when absent or past the store's TTL (counted as absent)."""
    if row is None or "state" not in row or float(row["expires"]) <= now:
        return None
    lease = row.get("lease_expires_at")
    return LaneRecord(
        lane,
        decode_state(row["state"]),
        row.get("token", ""),
        float(lease) if lease is not None else float("-inf"),
        int(row["version"]),
        float(row["updated_at"]),
    )


def encode_record(record: LaneRecord, ttl_seconds: float) -> Entity:
    """The record as an entity (no lease property when none is held)."""
    pk, rk = record_address(record.lane)
    entity: Entity = {
        "PartitionKey": pk,
        "RowKey": rk,
        "state": encode_state(record.state),
        "token": record.token,
        "version": record.version,
        "updated_at": record.updated_at,
        "expires": record.updated_at + ttl_seconds,
    }
    if record.lease_expires_at != float("-inf"):
        entity["lease_expires_at"] = record.lease_expires_at
    return entity
