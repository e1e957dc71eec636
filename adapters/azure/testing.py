"""Trigger payloads as the Functions worker builds them, for unit tests of function apps.

Each helper goes through azure-functions' own converters, so a test invokes the
function with the same `EventHubEvent`, `InputStream` and `QueueMessage` objects the
Python worker would pass, metadata included.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import azure.functions as func
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.functions._abc import RetryContext, RpcException, TraceContext
from azure.functions.blob import BlobConverter
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessageInConverter

__all__ = [
    "HUB",
    "NAMESPACE",
    "InvocationContext",
    "TableRequestCounter",
    "blob_stream",
    "event_hub_batch",
    "invocation_context",
    "queue_message",
]

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


class _Exception(RpcException):
    def __init__(self, message: str) -> None:
        self._message = message

    @property
    def source(self) -> str:
        return "onceflow"

    @property
    def stack_trace(self) -> str:
        return ""

    @property
    def message(self) -> str:
        return self._message


class _Retry(RetryContext):
    def __init__(self, retry_count: int, max_retry_count: int, exception: str) -> None:
        self._count, self._max, self._exception = retry_count, max_retry_count, exception

    @property
    def retry_count(self) -> int:
        return self._count

    @property
    def max_retry_count(self) -> int:
        return self._max

    @property
    def exception(self) -> RpcException:
        return _Exception(self._exception)


class _Trace(TraceContext):
    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return "00-00000000000000000000000000000000-0000000000000000-00"

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class InvocationContext(func.Context):
    """A function invocation's context as the worker passes it, its retry context included."""

    def __init__(self, retry: RetryContext | None, function_name: str = "onceflow") -> None:
        self._retry = retry
        self._name = function_name

    @property
    def invocation_id(self) -> str:
        return "00000000-0000-0000-0000-000000000000"

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return threading.local

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return "/home/site/wwwroot"

    @property
    def trace_context(self) -> TraceContext:
        return _Trace()

    @property
    def retry_context(self) -> RetryContext:
        # The abstract property promises one; a context built without it answers None,
        # as a host without a retry policy does.
        return self._retry  # type: ignore[return-value]


def invocation_context(
    retry_count: int = 0, max_retry_count: int = 5, *, exception: str = ""
) -> InvocationContext:
    """The context of an invocation that is retry number `retry_count` (0: the first run)
    of a function whose `@app.retry` policy allows `max_retry_count` retries."""
    return InvocationContext(_Retry(retry_count, max_retry_count, exception))


_WRITE_METHODS = ("POST", "PUT", "MERGE", "PATCH", "DELETE")
_CHANGESET_WRITE = re.compile(rb"^(?:POST|PUT|MERGE|PATCH|DELETE) https?://", re.MULTILINE)


class TableRequestCounter(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """HTTP requests a Table client sends (retries included), the entity operations in
    them (one per single request, one per operation of an entity transaction) and the
    writes among those. Give it as `TableClient(..., per_retry_policies=[counter])`."""

    def __init__(self) -> None:
        self.requests = 0
        self.operations = 0
        self.writes = 0

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        """azure-core's hook: one request, counted."""
        self.requests += 1
        http = request.http_request
        if "$batch" in http.url:
            found = _batch_writes(http)
            self.operations += found
            self.writes += found
        else:
            self.operations += 1
            self.writes += http.method in _WRITE_METHODS and "/Tables" not in http.url


def _batch_writes(http: Any) -> int:
    """The entity operations of an entity transaction: the leaves of its multipart parts."""
    info = getattr(http, "multipart_mixed_info", None)
    if info:
        return sum(_batch_writes(part) for part in info[0])
    body = http.body if isinstance(http.body, bytes) else str(http.body or "").encode()
    if b"--changeset" in body or b"--batch" in body:
        return len(_CHANGESET_WRITE.findall(body))
    return 1 if http.method in _WRITE_METHODS else 0
