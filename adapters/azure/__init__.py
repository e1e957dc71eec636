"""The Azure backend: Functions entry, decoders, Table/Cosmos stores and sinks, Blob objects,
Queue and Event Hubs sinks, and trigger payload builders for tests.

Each name is imported on first use, so `import onceflow.adapters.azure` costs nothing and a
missing extra is reported as `pip install 'onceflow[azure]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.adapters.azure.cosmos_sink import CosmosSink
    from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore
    from onceflow.adapters.azure.decode import (
        decode_blob,
        decode_event_hub,
        decode_queue_message,
    )
    from onceflow.adapters.azure.entry import (
        BatchFailed,
        BlobTrigger,
        EventHubTrigger,
        FunctionHandler,
        QueueTrigger,
        function_app,
    )
    from onceflow.adapters.azure.eventhub_sink import EventHubSink
    from onceflow.adapters.azure.objects import BlobObjectStore
    from onceflow.adapters.azure.queue_sink import QueueSink
    from onceflow.adapters.azure.table_sink import TableSink
    from onceflow.adapters.azure.table_store import TableIdempotencyStore
    from onceflow.adapters.azure.testing import (
        blob_stream,
        event_hub_batch,
        invocation_context,
        queue_message,
    )

__all__ = [
    "BatchFailed",
    "BlobObjectStore",
    "BlobTrigger",
    "CosmosIdempotencyStore",
    "CosmosSink",
    "EventHubSink",
    "EventHubTrigger",
    "FunctionHandler",
    "QueueSink",
    "QueueTrigger",
    "TableIdempotencyStore",
    "TableSink",
    "blob_stream",
    "decode_blob",
    "decode_event_hub",
    "decode_queue_message",
    "event_hub_batch",
    "function_app",
    "invocation_context",
    "queue_message",
]

_HOMES = {
    "BatchFailed": "onceflow.adapters.azure.entry",
    "BlobObjectStore": "onceflow.adapters.azure.objects",
    "BlobTrigger": "onceflow.adapters.azure.entry",
    "CosmosIdempotencyStore": "onceflow.adapters.azure.cosmos_store",
    "CosmosSink": "onceflow.adapters.azure.cosmos_sink",
    "EventHubSink": "onceflow.adapters.azure.eventhub_sink",
    "EventHubTrigger": "onceflow.adapters.azure.entry",
    "FunctionHandler": "onceflow.adapters.azure.entry",
    "QueueSink": "onceflow.adapters.azure.queue_sink",
    "QueueTrigger": "onceflow.adapters.azure.entry",
    "TableIdempotencyStore": "onceflow.adapters.azure.table_store",
    "TableSink": "onceflow.adapters.azure.table_sink",
    "blob_stream": "onceflow.adapters.azure.testing",
    "decode_blob": "onceflow.adapters.azure.decode",
    "decode_event_hub": "onceflow.adapters.azure.decode",
    "decode_queue_message": "onceflow.adapters.azure.decode",
    "event_hub_batch": "onceflow.adapters.azure.testing",
    "function_app": "onceflow.adapters.azure.entry",
    "invocation_context": "onceflow.adapters.azure.testing",
    "queue_message": "onceflow.adapters.azure.testing",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, extra="azure")
