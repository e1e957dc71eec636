"""A sink on Azure Cosmos DB for NoSQL: one item per output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
from azure.cosmos import ContainerProxy

from onceflow.adapters.azure.cosmos_store import WORKERS, item_id
from onceflow.adapters.azure.throttling import default_retry, send
from onceflow.identity import key_parts
from onceflow.records import Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import dumps

__all__ = ["CosmosSink"]

Item = dict[str, Any]


class CosmosSink:
    """`onceflow.interfaces.Sink` upserting one item per output (id: escaped output_id).

    Items are partitioned by their event key's group (the event source), like the store's.
    The sink does not commit atomically with `CosmosIdempotencyStore` (that needs
    transactional batches, which the local test server refuses, so no such path could be
    verified): the runner writes, then completes with its fence.
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
        await anyio.to_thread.run_sync(lambda: list(self._pool.map(self._upsert, items)))

    def _upsert(self, item: Item) -> None:
        send(self.throttle_retry, "an output's upsert", self.container.upsert_item, item)

    @staticmethod
    def _item(output: Output) -> Item:
        return {
            "id": item_id(output.output_id),
            "pk": key_parts(output.event_key)[0],
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
