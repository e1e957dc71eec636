"""The Azure backend: Functions entry, Blob/Table/Cosmos/Queue stores and sinks.

Each name is imported on first use, so `import onceflow.adapters.azure` costs nothing and a
missing extra is reported as `pip install 'onceflow[azure]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore, CosmosSink
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
    "decode_blob",
    "decode_event_hub",
    "decode_queue_message",
    "function_app",
]

_HOMES = {
    "BatchFailed": "onceflow.adapters.azure.entry",
    "BlobObjectStore": "onceflow.adapters.azure.objects",
    "BlobTrigger": "onceflow.adapters.azure.entry",
    "CosmosIdempotencyStore": "onceflow.adapters.azure.cosmos_store",
    "CosmosSink": "onceflow.adapters.azure.cosmos_store",
    "EventHubSink": "onceflow.adapters.azure.eventhub_sink",
    "EventHubTrigger": "onceflow.adapters.azure.entry",
    "FunctionHandler": "onceflow.adapters.azure.entry",
    "QueueSink": "onceflow.adapters.azure.queue_sink",
    "QueueTrigger": "onceflow.adapters.azure.entry",
    "TableIdempotencyStore": "onceflow.adapters.azure.table_store",
    "TableSink": "onceflow.adapters.azure.table_sink",
    "decode_blob": "onceflow.adapters.azure.decode",
    "decode_event_hub": "onceflow.adapters.azure.decode",
    "decode_queue_message": "onceflow.adapters.azure.decode",
    "function_app": "onceflow.adapters.azure.entry",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, extra="azure")
