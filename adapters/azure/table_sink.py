"""A sink on Azure Table storage: one row per output, atomic with a `TableIdempotencyStore`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio.to_thread
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from onceflow.adapters.azure.table_keys import OUTPUT, output_address, stored_identity
from onceflow.adapters.azure.table_store import TableIdempotencyStore
from onceflow.adapters.azure.table_transactions import Group, Operation, submit
from onceflow.adapters.azure.throttling import default_retry, send
from onceflow.errors import OutputRejected
from onceflow.interfaces import IdempotencyStore
from onceflow.records import Completion, Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import dumps

__all__ = ["TableSink"]

T = TypeVar("T")

UNITS = 32_000
"""UTF-16 code units per string property: the service allows 64 KiB of UTF-16 (32K units)."""
MAX_CHUNKS = 15  # entities hold at most 1 MiB; leave room for the other properties
HIGH_SURROGATES = range(0xD800, 0xDC00)


def split_utf16(text: str, units: int = UNITS) -> list[str]:
    """`text` in pieces of at most `units` UTF-16 code units, never inside a surrogate pair.

    The service measures a string property in UTF-16: a character outside the Basic
    Multilingual Plane (an emoji) takes two units, so a split by code points overflows.
    """
    if len(text) <= units // 2:
        return [text]
    data = text.encode("utf-16-le", "surrogatepass")
    if len(data) == 2 * len(text):  # no pairs: a code point is a unit
        return [text[i : i + units] for i in range(0, len(text), units)]
    pieces: list[str] = []
    start, step = 0, 2 * units
    while start < len(data):
        end = min(start + step, len(data))
        if end < len(data) and int.from_bytes(data[end - 2 : end], "little") in HIGH_SURROGATES:
            end -= 2  # keep the pair together
        pieces.append(data[start:end].decode("utf-16-le", "surrogatepass"))
        start = end
    return pieces


class TableSink:
    """`onceflow.interfaces.AtomicSink` writing each output as one entity, upserted by output_id.

    An output lives in its event's marker partition (see `onceflow.adapters.azure.table_keys`), so
    when this sink shares its table with a `TableIdempotencyStore` the outputs and the
    completion marker of a key commit in one entity transaction, fenced by the marker's
    ETag (the store's `complete_with`, `onceflow.interfaces.TransactionalStore`). On
    another table it is a plain idempotent sink and the runner writes, then
    completes. The value is stored as JSON text, split over properties `value0..` of at
    most 32,000 UTF-16 code units each (the service's 64 KiB); outputs over 480,000
    units (960 KB of UTF-16) are refused with `OutputRejected` (dead-lettered), as are
    outputs whose partition key is over one property's 32,000 units. Identities over
    4,096 characters are stored as their SHA-256 (`table_keys.stored_identity`).
    """

    def __init__(
        self,
        table: TableClient | str,
        *,
        connection_string: str | None = None,
        create: bool = False,
        throttle_retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(table, str):
            if connection_string is None:
                raise ValueError(f"TableSink({table!r}) needs connection_string= or a TableClient")
            table = TableServiceClient.from_connection_string(connection_string).get_table_client(
                table
            )
        self.table = table
        self.throttle_retry = throttle_retry or default_retry()
        """Requests again while the service throttles them (`throttling.send`)."""
        if create:
            with contextlib.suppress(ResourceExistsError):
                send(self.throttle_retry, "a table creation", table.create_table)

    async def _call(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func)

    def commits_with(self, store: IdempotencyStore) -> bool:
        """True for a `TableIdempotencyStore` on this sink's table."""
        return isinstance(store, TableIdempotencyStore) and store.shares_table(self.table)

    async def write(self, outputs: Sequence[Output]) -> None:
        """Upsert every output by `output_id`, in transactions per partition."""
        if not outputs:
            return
        entities = self._entities(outputs)
        groups = [
            Group(e["PartitionKey"], [("upsert", e, {"mode": UpdateMode.REPLACE})])
            for e in entities.values()
        ]
        await self._call(lambda: submit(self.table, groups, self.throttle_retry))

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Commit each key's outputs with its completion marker; refused keys write nothing."""
        assert isinstance(store, TableIdempotencyStore), "only when commits_with(store)"
        entities = self._entities(outputs)
        writes: dict[str, list[Operation]] = {}
        for output in outputs:
            writes.setdefault(output.event_key, []).append(
                ("upsert", entities[output.output_id], {"mode": UpdateMode.REPLACE})
            )
        completed = {c.key for c in completions}
        orphans = [o.output_id for o in outputs if o.event_key not in completed]
        if orphans:
            raise ValueError(f"outputs without a completion: {orphans[:3]}")
        return await store.complete_with(completions, writes)

    def _entities(self, outputs: Sequence[Output]) -> dict[str, dict[str, Any]]:
        entities: dict[str, dict[str, Any]] = {}
        too_big: dict[str, str] = {}
        for output in outputs:
            text = dumps(output.value)
            pieces = split_utf16(text) if text else [""]
            if len(pieces) > MAX_CHUNKS:
                units = sum(len(p.encode("utf-16-le", "surrogatepass")) for p in pieces) // 2
                too_big[output.output_id] = (
                    f"its JSON is {units} UTF-16 code units ({2 * units} bytes), over the "
                    f"{UNITS * MAX_CHUNKS} units a Table entity of at most 1 MiB holds "
                    f"({MAX_CHUNKS} string properties of {UNITS})"
                )
                continue
            if output.partition_key is not None and len(split_utf16(output.partition_key)) > 1:
                too_big[output.output_id] = (
                    f"its partition key is over the {UNITS} UTF-16 code units a Table "
                    "string property holds"
                )
                continue
            partition, row_key = output_address(output.event_key, output.output_id)
            entity: dict[str, Any] = {
                "PartitionKey": partition,
                "RowKey": row_key,
                "output_id": stored_identity(output.output_id),
                "event_key": stored_identity(output.event_key),
                "event_id": stored_identity(output.event_id),
                "index": output.index,
                "chunks": len(pieces),
            }
            if output.partition_key is not None:
                entity["partition_key"] = output.partition_key
            entity.update({f"value{i}": piece for i, piece in enumerate(pieces)})
            entities[output.output_id] = entity
        if too_big:
            raise OutputRejected(too_big)
        return entities

    async def contents(self) -> dict[str, Any]:
        """Every stored output's value by output_id (reads the whole table: for tests, audits)."""
        return await self._call(self._contents)

    def _contents(self) -> dict[str, Any]:
        query = f"RowKey ge '{OUTPUT}' and RowKey lt '{chr(ord(OUTPUT) + 1)}'"
        return {
            e["output_id"]: json.loads("".join(e[f"value{i}"] for i in range(int(e["chunks"]))))
            for e in self.table.query_entities(query)
        }
