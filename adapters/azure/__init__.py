"""The Azure backend: Functions entry, Blob/Table/Cosmos/Queue stores and sinks.

Each name is imported on first use, so `import adapters.azure` costs nothing and a
missing extra is reported as `pip install 'onceflow[azure]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corelib.lazy import lazy_exports

if TYPE_CHECKING:
    from adapters.azure.blob_store import BlobObjectStore
    from adapters.azure.cosmos_store import CosmosIdempotencyStore, CosmosSink
    from adapters.azure.eventhub_sink import EventHubSink
    from adapters.azure.function_events import (
        decode_blob,
        decode_event_hub,
        decode_queue_message,
    )
    from adapters.azure.functions_entry import (
        BatchFailed,
        BlobTrigger,
        EventHubTrigger,
        FunctionHandler,
        QueueTrigger,
        function_app,
    )
    from adapters.azure.queue_sink import QueueSink
    from adapters.azure.table_sink import TableSink
    from adapters.azure.table_store import TableIdempotencyStore

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
    "BatchFailed": "adapters.azure.functions_entry",
    "BlobObjectStore": "adapters.azure.blob_store",
    "BlobTrigger": "adapters.azure.functions_entry",
    "CosmosIdempotencyStore": "adapters.azure.cosmos_store",
    "CosmosSink": "adapters.azure.cosmos_store",
    "EventHubSink": "adapters.azure.eventhub_sink",
    "EventHubTrigger": "adapters.azure.functions_entry",
    "FunctionHandler": "adapters.azure.functions_entry",
    "QueueSink": "adapters.azure.queue_sink",
    "QueueTrigger": "adapters.azure.functions_entry",
    "TableIdempotencyStore": "adapters.azure.table_store",
    "TableSink": "adapters.azure.table_sink",
    "decode_blob": "adapters.azure.function_events",
    "decode_event_hub": "adapters.azure.function_events",
    "decode_queue_message": "adapters.azure.function_events",
    "function_app": "adapters.azure.functions_entry",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES, extra="azure")
