"""Per-window counts in the Azure state: entities of the state Table (partitions
`~counts~<pipeline>`) or items of the Cosmos state container (partition `~counts~<pipeline>`)."""

from __future__ import annotations

import time
from typing import Any

from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from onceflow.adapters.azure.table_keys import bounded, encode_part
from onceflow.reconcile import COUNTS, CountRow, Counts, sum_rows

__all__ = ["PARTITION_PREFIX", "CosmosWindowCounts", "TableWindowCounts"]

PARTITION_PREFIX = "~counts~"
"""Partition prefix of count rows: an escaped key part never holds `~c` (`~` + hex)."""


def _partition(pipeline: str) -> str:
    return PARTITION_PREFIX + bounded(encode_part(pipeline))


def _row_key(row: CountRow) -> str:
    # Zero-padded so a partition's rows sort by window, then batch.
    return f"{row.window:012d}-{row.batch}"


class TableWindowCounts:
    """One entity per (pipeline, window, batch), written with an upsert in replace mode: a
    second write of a batch's entity (the SDK retrying a lost reply) replaces it.

    Tables have no TTL: each entity carries `expires`, `read` skips expired ones, and a
    writer deletes its pipeline's expired entities when it first writes to a new window (a
    query on `expires` within one partition, at most once per window per process).
    """

    def __init__(self, table: TableClient | str, *, connection_string: str | None = None) -> None:
        if isinstance(table, str):
            if connection_string is None:
                raise ValueError(f"TableWindowCounts({table!r}) needs connection_string=")
            service = TableServiceClient.from_connection_string(connection_string)
            table = service.get_table_client(table)
        self.table = table
        self._swept: dict[str, int] = {}

    def put(self, row: CountRow) -> None:
        """Write one batch's entity for one window, replacing one of the same key."""
        partition = _partition(row.pipeline)
        entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": _row_key(row)}
        entity["pipeline"] = row.pipeline
        entity["window"] = row.window
        entity["expires"] = float(row.expires)
        entity.update({n: int(row.counts.get(n, 0)) for n in COUNTS})
        self.table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        if self._swept.get(partition) != row.window:
            self._sweep(partition, row.written)
            self._swept[partition] = row.window

    def _sweep(self, partition: str, now: float) -> None:
        expired = self.table.query_entities(
            "PartitionKey eq @p and expires le @now",
            parameters={"p": partition, "now": float(now)},
            select=["PartitionKey", "RowKey"],
        )
        for entity in expired:
            self.table.delete_entity(entity["PartitionKey"], entity["RowKey"])

    def read(self, pipeline: str | None = None, *, now: float | None = None) -> Counts:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        moment = time.time() if now is None else now
        if pipeline is None:
            query = "PartitionKey ge @low and PartitionKey lt @high"
            params: dict[str, Any] = {
                "low": PARTITION_PREFIX,
                "high": PARTITION_PREFIX[:-1] + "\x7f",
            }
        else:
            query, params = "PartitionKey eq @p", {"p": _partition(pipeline)}
        rows = []
        for entity in self.table.query_entities(query, parameters=params):
            if "expires" in entity and float(entity["expires"]) <= moment:
                continue  # entities of states from before expiry carry none: kept
            window = int(entity["window"]) if "window" in entity else int(entity["RowKey"])
            rows.append((str(entity["pipeline"]), window, {n: entity.get(n, 0) for n in COUNTS}))
        return sum_rows(rows)


class CosmosWindowCounts:
    """One item per (pipeline, window, batch) in the Cosmos state container, written with
    `upsert_item`: a second write of a batch's item replaces it.

    The items sit in their own partition per pipeline (`~counts~<pipeline>`, under the
    container's partition key path, `/pk` as `CosmosIdempotencyStore` has it) and carry
    Cosmos's per-item `ttl` (the retention in seconds; the container needs TTL on, as the
    store's does with `default_ttl=-1`), and `expires`, which `read` checks itself.
    """

    def __init__(self, container: Any, *, partition_path: str = "/pk") -> None:
        self.container = container
        self.partition_field = partition_path.lstrip("/")

    def put(self, row: CountRow) -> None:
        """Write one batch's item for one window, replacing one of the same id."""
        item: dict[str, Any] = {
            "id": _row_key(row),
            self.partition_field: _partition(row.pipeline),
            "pipeline": row.pipeline,
            "window": row.window,
            "expires": float(row.expires),
            "ttl": max(1, int(row.expires - row.written)),
        }
        item.update({n: int(row.counts.get(n, 0)) for n in COUNTS})
        self.container.upsert_item(item)

    def read(self, pipeline: str | None = None, *, now: float | None = None) -> Counts:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        moment = time.time() if now is None else now
        names = ", ".join(f"c.{n}" for n in ("pipeline", "window", "expires", *COUNTS))
        if pipeline is None:
            items = self.container.query_items(
                f"SELECT {names} FROM c WHERE STARTSWITH(c.{self.partition_field}, @prefix)",
                parameters=[{"name": "@prefix", "value": PARTITION_PREFIX}],
                enable_cross_partition_query=True,
            )
        else:
            items = self.container.query_items(
                f"SELECT {names} FROM c", partition_key=_partition(pipeline)
            )
        rows = [
            (str(item["pipeline"]), int(item["window"]), {n: item.get(n, 0) for n in COUNTS})
            for item in items
            if float(item.get("expires", moment + 1)) > moment
        ]
        return sum_rows(rows)
