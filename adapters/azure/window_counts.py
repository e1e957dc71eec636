"""Per-window counts as entities of the Azure state Table, in partitions `~counts~<pipeline>`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from onceflow.adapters.azure.table_keys import bounded, encode_part
from onceflow.reconcile import COUNTS

__all__ = ["PARTITION_PREFIX", "TableWindowCounts"]

PARTITION_PREFIX = "~counts~"
"""PartitionKey prefix of count rows: an escaped key part never holds `~c` (`~` + hex)."""

ROUNDS = 20  # optimistic rounds for one window when many workers add at once


class TableWindowCounts:
    """Adds a batch's counts to one entity per window: read, then replace on the ETag.

    Tables have no atomic increment, so an add reads the entity and replaces it only if
    its ETag still holds (or inserts it if absent), again on a conflict: two workers
    adding to one window both land. The entities share the idempotency store's Table.
    """

    def __init__(self, table: TableClient | str, *, connection_string: str | None = None) -> None:
        if isinstance(table, str):
            if connection_string is None:
                raise ValueError(f"TableWindowCounts({table!r}) needs connection_string=")
            service = TableServiceClient.from_connection_string(connection_string)
            table = service.get_table_client(table)
        self.table = table

    def add(self, pipeline: str, window: int, counts: Mapping[str, int]) -> None:
        """Add `counts` to one window's entity."""
        names = [n for n in COUNTS if counts.get(n)]
        if not names:
            return
        partition, row = PARTITION_PREFIX + bounded(encode_part(pipeline)), f"{window:012d}"
        for _ in range(ROUNDS):
            try:
                entity: Any = self.table.get_entity(partition, row)
            except ResourceNotFoundError:
                fresh: dict[str, Any] = {"PartitionKey": partition, "RowKey": row}
                fresh["pipeline"] = pipeline
                fresh.update({n: int(counts.get(n, 0)) for n in COUNTS})
                try:
                    self.table.create_entity(fresh)
                    return
                except ResourceExistsError:
                    continue  # another worker made it first: add to theirs
            updated = dict(entity)
            for n in names:
                updated[n] = int(entity.get(n, 0)) + int(counts[n])
            try:
                self.table.update_entity(
                    updated,
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        raise RuntimeError(f"window {window} of {pipeline!r}: {ROUNDS} conflicting adds in a row")

    def read(self, pipeline: str | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        if pipeline is None:
            query = "PartitionKey ge @low and PartitionKey lt @high"
            params = {"low": PARTITION_PREFIX, "high": PARTITION_PREFIX[:-1] + "\x7f"}
        else:
            query = "PartitionKey eq @p"
            params = {"p": PARTITION_PREFIX + bounded(encode_part(pipeline))}
        found: dict[tuple[str, int], dict[str, int]] = {}
        for entity in self.table.query_entities(query, parameters=params):
            key = (str(entity["pipeline"]), int(entity["RowKey"]))
            found[key] = {n: int(entity.get(n, 0)) for n in COUNTS}
        return dict(sorted(found.items()))
