"""Per-window counts in the Azure state: entities of the state Table (partitions
`~counts~<pipeline>`) or items of the Cosmos state container (partition `~counts~<pipeline>`)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from onceflow.adapters.azure.table_keys import bounded, encode_part
from onceflow.adapters.azure.throttling import default_retry, listed, send
from onceflow.reconcile import COUNTS, CountRow, Counts, sum_rows
from onceflow.retry import RetryPolicy

__all__ = ["PARTITION_PREFIX", "CosmosWindowCounts", "TableWindowCounts"]

PARTITION_PREFIX = "~counts~"
"""Partition prefix of count rows: an escaped key part never holds `~c` (`~` + hex)."""


def _partition(pipeline: str) -> str:
    return PARTITION_PREFIX + bounded(encode_part(pipeline))


def _row_key(window: int, writer: str) -> str:
    # Zero-padded so a partition's rows sort by window, then writer.
    return f"{window:012d}-{writer}"


ROUNDS = 20  # ETag rounds for one add: only this writer's own lost replies conflict


def _added(stored: dict[str, Any] | None, row: CountRow) -> dict[str, Any]:
    """The row's counts added to a stored one (or a fresh one), marked with its attempt."""
    fields: dict[str, Any] = {n: int((stored or {}).get(n, 0)) for n in COUNTS}
    for n in COUNTS:
        fields[n] += int(row.counts.get(n, 0))
    return {
        **fields,
        "pipeline": row.pipeline,
        "window": row.window,
        "expires": float(row.expires),
        "last_batch": row.batch,
    }


class TableWindowCounts:
    """Adds each batch's counts to one entity per window and writer: read, then replace on
    the ETag (or insert), once per attempt.

    The entity remembers the last attempt it added (`last_batch`): when the SDK's retry of
    a replace whose reply was lost meets a changed ETag, the re-read shows the attempt
    already there and the add stops, instead of adding twice. One writer (this object)
    adds one row at a time (a lock), so only its own retries ever conflict. One entity per
    writer, not per batch, keeps the entity count at windows x workers.

    Tables have no TTL: each entity carries `expires` (the retention after its last add),
    `read` skips expired ones, and a writer deletes its pipeline's expired entities when it
    first writes to a new window (a query on `expires` within one partition, at most once
    per window per process).
    """

    remote = True  # count_windows writes from a worker thread

    def __init__(
        self,
        table: TableClient | str,
        *,
        connection_string: str | None = None,
        writer: str | None = None,
    ) -> None:
        if isinstance(table, str):
            if connection_string is None:
                raise ValueError(f"TableWindowCounts({table!r}) needs connection_string=")
            service = TableServiceClient.from_connection_string(connection_string)
            table = service.get_table_client(table)
        self.table = table
        self.writer = writer or uuid.uuid4().hex[:16]
        self._swept: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, row: CountRow) -> None:
        """Add one attempt's counts to this writer's entity of the window, once."""
        partition = _partition(row.pipeline)
        address = {"PartitionKey": partition, "RowKey": _row_key(row.window, self.writer)}
        with self._lock:
            self._add(address, row)
            if self._swept.get(partition) != row.window:
                self._sweep(partition, row.written)
                self._swept[partition] = row.window

    def _add(self, address: dict[str, str], row: CountRow) -> None:
        for _ in range(ROUNDS):
            try:
                stored: Any = self.table.get_entity(address["PartitionKey"], address["RowKey"])
            except ResourceNotFoundError:
                try:
                    self.table.create_entity({**address, **_added(None, row)})
                    return
                except ResourceExistsError:
                    continue  # our own create landed, its reply did not: read it
            if stored.get("last_batch") == row.batch:
                return  # this attempt was added already
            try:
                self.table.update_entity(
                    {**address, **_added(dict(stored), row)},
                    mode=UpdateMode.REPLACE,
                    etag=stored.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        raise RuntimeError(f"window {row.window} of {row.pipeline!r}: {ROUNDS} conflicts in a row")

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
    """Adds each batch's counts to one item per window and writer in the Cosmos state
    container: read, then replace on the ETag (or create), once per attempt, as
    `TableWindowCounts` does (the item remembers its last attempt, `last_batch`).

    The items sit in their own partition per pipeline (`~counts~<pipeline>`, under the
    container's partition key path, `/pk` as `CosmosIdempotencyStore` has it) and carry
    Cosmos's per-item `ttl` (the retention in seconds; the container needs TTL on, as the
    store's does with `default_ttl=-1`), and `expires`, which `read` checks itself.
    """

    remote = True  # count_windows writes from a worker thread

    def __init__(
        self,
        container: Any,
        *,
        partition_path: str = "/pk",
        writer: str | None = None,
        throttle_retry: RetryPolicy | None = None,
    ) -> None:
        self.container = container
        self.partition_field = partition_path.lstrip("/")
        self.writer = writer or uuid.uuid4().hex[:16]
        self.throttle_retry = throttle_retry or default_retry()
        """Requests again while Cosmos throttles them past its SDK's own 429 retries."""
        self._lock = threading.Lock()

    def put(self, row: CountRow) -> None:
        """Add one attempt's counts to this writer's item of the window, once.

        A write whose answer never came (a reset, a lost or late reply) is read again, and
        the item's `last_batch` says whether it landed; a throttled request (429 past the
        SDK's own retries, 449) is sent again by `throttling.send`.
        """
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError
        from azure.cosmos.exceptions import (
            CosmosAccessConditionFailedError,
            CosmosHttpResponseError,
        )

        partition = _partition(row.pipeline)
        ident = _row_key(row.window, self.writer)
        ttl = max(1, int(row.expires - row.written))
        retry = self.throttle_retry
        with self._lock:
            for _ in range(ROUNDS):
                try:
                    # A query, not read_item: the local Cosmos server answers a point read
                    # of a missing item with a 500, not a 404.
                    found = send(
                        retry,
                        "a window count read",
                        listed,
                        self.container.query_items,
                        f"SELECT * FROM c WHERE c.{self.partition_field} = @pk AND c.id = @id",
                        parameters=[
                            {"name": "@pk", "value": partition},
                            {"name": "@id", "value": ident},
                        ],
                        partition_key=partition,
                    )
                    if not found:
                        fresh = {"id": ident, self.partition_field: partition, "ttl": ttl}
                        try:
                            create = self.container.create_item
                            send(
                                retry,
                                "a window count write",
                                create,
                                {**fresh, **_added(None, row)},
                            )
                            return
                        except CosmosHttpResponseError as again:
                            if again.status_code == 409:
                                continue  # our own create landed, its reply did not: read it
                            raise
                    stored = found[0]
                    if stored.get("last_batch") == row.batch:
                        return  # this attempt was added already
                    body = {"id": ident, self.partition_field: partition, "ttl": ttl}
                    send(
                        retry,
                        "a window count write",
                        self.container.replace_item,
                        ident,
                        {**body, **_added(stored, row)},
                        etag=stored["_etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return
                except CosmosAccessConditionFailedError:
                    continue
                except CosmosHttpResponseError as exc:
                    if exc.status_code in (404, 412):
                        continue
                    raise
                except (ServiceRequestError, ServiceResponseError):
                    continue  # no answer: the read of the next round shows whether it landed
        raise RuntimeError(f"window {row.window} of {row.pipeline!r}: {ROUNDS} conflicts in a row")

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
            partition = _partition(pipeline)
            items = self.container.query_items(
                f"SELECT {names} FROM c WHERE c.{self.partition_field} = @pk",
                parameters=[{"name": "@pk", "value": partition}],
                partition_key=partition,
            )
        rows = [
            (str(item["pipeline"]), int(item["window"]), {n: item.get(n, 0) for n in COUNTS})
            for item in items
            if float(item.get("expires", moment + 1)) > moment
        ]
        return sum_rows(rows)
