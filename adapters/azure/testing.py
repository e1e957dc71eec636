"""Trigger payloads as the Functions worker builds them, for unit tests of function apps.

Each helper goes through azure-functions' own converters, so a test invokes the
function with the same `EventHubEvent`, `InputStream` and `QueueMessage` objects the
Python worker would pass, metadata included.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import azure.functions as func
from azure.functions.blob import BlobConverter
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessageInConverter

__all__ = ["HUB", "NAMESPACE", "blob_stream", "event_hub_batch", "queue_message"]

NAMESPACE = "shop.servicebus.windows.net"
HUB = "orders"


def event_hub_batch(
    bodies: Sequence[bytes],
    *,
    partition: str = "0",
    first_sequence: int = 100,
    partition_keys: Sequence[str | None] | None = None,
    properties: Sequence[dict[str, Any]] | None = None,
    hub: str = HUB,
) -> list[func.EventHubEvent]:
    """A `cardinality="many"` batch from one partition, decoded by the worker's converter."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    keys = list(partition_keys) if partition_keys is not None else [None] * len(bodies)
    system = [
        {
            "SequenceNumber": first_sequence + i,
            "Offset": str(4096 * (first_sequence + i)),
            "PartitionKey": keys[i],
            "EnqueuedTimeUtc": (start + timedelta(seconds=i)).isoformat(),
        }
        for i in range(len(bodies))
    ]
    metadata = {
        "SystemPropertiesArray": Datum(json.dumps(system), "json"),
        "PropertiesArray": Datum(json.dumps(list(properties or [{}] * len(bodies))), "json"),
        "PartitionContext": Datum(
            json.dumps(
                {
                    "FullyQualifiedNamespace": NAMESPACE,
                    "EventHubName": hub,
                    "ConsumerGroup": "$Default",
                    "PartitionId": partition,
                }
            ),
            "json",
        ),
    }
    data = Datum(SimpleNamespace(bytes=list(bodies)), "collection_bytes")
    events = EventHubTriggerConverter.decode(data, trigger_metadata=metadata)
    assert isinstance(events, list)
    return events


def blob_stream(name: str, data: bytes, *, length: int | None = None) -> func.InputStream:
    """A blob trigger's stream for `container/path`, as the worker decodes it."""
    metadata = {
        "Name": Datum(name.split("/", 1)[1], "string"),
        "Uri": Datum(f"https://shop.blob.core.windows.net/{name}", "string"),
        "Properties": Datum(
            json.dumps({"Length": len(data) if length is None else length, "ETag": '"0x8DC"'}),
            "json",
        ),
        "BlobTrigger": Datum(name, "string"),
        "Metadata": Datum(json.dumps({"origin": "test"}), "json"),
    }
    stream = BlobConverter.decode(Datum(data, "bytes"), trigger_metadata=metadata)
    assert isinstance(stream, func.InputStream)
    return stream


def queue_message(message_id: str, body: bytes, *, dequeue_count: int = 1) -> func.QueueMessage:
    """A queue trigger's message, as the worker decodes it."""
    now = datetime(2026, 1, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    metadata = {
        "Id": Datum(message_id, "string"),
        "DequeueCount": Datum(dequeue_count, "int"),
        "InsertionTime": Datum(now, "string"),
        "ExpirationTime": Datum(now, "string"),
        "NextVisibleTime": Datum(now, "string"),
        "PopReceipt": Datum("receipt", "string"),
    }
    message = QueueMessageInConverter.decode(Datum(body, "bytes"), trigger_metadata=metadata)
    assert isinstance(message, func.QueueMessage)
    return message
