"""A sink on Azure Cosmos DB for NoSQL: one item per output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
from azure.cosmos import ContainerProxy
from azure.cosmos.exceptions import CosmosHttpResponseError

from onceflow.adapters.azure.cosmos_store import WORKERS, item_id, partition_value
from onceflow.adapters.azure.throttling import default_retry, send
from onceflow.errors import OutputRejected
from onceflow.identity import key_parts
from onceflow.records import Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import dumps

__all__ = ["CosmosSink"]

Item = dict[str, Any]

ITEM_LIMIT = 2 * 1024 * 1024
"""Cosmos DB's item limit: 2 MB of UTF-8 JSON."""
SYSTEM_BYTES = 1024
"""Room kept for the properties the service adds (`_rid`, `_self`, `_etag`, `_ts`, ...)."""


class CosmosSink:
    """`onceflow.interfaces.Sink` upserting one item per output (id: escaped output_id).

    Items are partitioned by their event key's group (the event source), like the store's.
    The sink does not commit atomically with `CosmosIdempotencyStore` (that needs
    transactional batches, which the local test server refuses, so no such path could be
    verified): the runner writes, then completes with its fence. An output whose item
    would pass Cosmos's 2 MB item limit is refused (`OutputRejected`: dead-lettered)
    before anything is written, as is one the service answers 413 (too large).
    """

    def __init__(
        self, container: ContainerProxy, *, throttle_retry: RetryPolicy | None = None
    ) -> None:
        self.container = container
        self.throttle_retry = throttle_retry or default_retry()
        """Requests again while Cosmos throttles them past its SDK's own 429 retries."""
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="onceflow-cosmos-sink")

    async def write(self, outputs: Sequence[Output]) -> None:
        """Upsert every output by `output_id`."""
        if not outputs:
            return
        items = [self._item(o) for o in outputs]
        too_big: dict[str, str] = {}
        for output, item in zip(outputs, items, strict=True):
            size = len(json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if size > ITEM_LIMIT - SYSTEM_BYTES:
                too_big[output.output_id] = (
                    f"its item is {size} bytes of JSON, over Cosmos DB's 2 MB item limit "
                    f"({ITEM_LIMIT} bytes, {SYSTEM_BYTES} of them kept for system properties)"
                )
        if too_big:
            raise OutputRejected(too_big)
        answers = await anyio.to_thread.run_sync(lambda: list(self._pool.map(self._upsert, items)))
        refused = {
            o.output_id: "Cosmos DB refused its item as over the 2 MB item limit (HTTP 413)"
            for o, written in zip(outputs, answers, strict=True)
            if not written
        }
        if refused:
            raise OutputRejected(refused)

    def _upsert(self, item: Item) -> bool:
        """Upsert one item; False when the service refused it as too large."""
        try:
            send(self.throttle_retry, "an output's upsert", self.container.upsert_item, item)
        except CosmosHttpResponseError as exc:
            if exc.status_code != 413:
                raise
            return False
        return True

    @staticmethod
    def _item(output: Output) -> Item:
        return {
            "id": item_id(output.output_id),
            "pk": partition_value(key_parts(output.event_key)[0]),
            "output_id": output.output_id,
            "event_key": output.event_key,
            "event_id": output.event_id,
            "index": output.index,
            "partition_key": output.partition_key,
            "value": json.loads(dumps(output.value)),
        }

    async def contents(self) -> dict[str, Any]:
        """Every stored output's value by output_id (a cross-partition query: for tests)."""

        def read() -> dict[str, Any]:
            return {
                item["output_id"]: item["value"]
                for item in self.container.query_items(
                    "SELECT * FROM c", enable_cross_partition_query=True
                )
            }

        return await anyio.to_thread.run_sync(read)
