"""Throttling at the wire: Azurite's Table, Blob and Queue services and the Cosmos server.

`tests.support.proxy.FaultProxy` answers the first requests of an operation with the
service's own throttling error, without forwarding them (nothing applied): Storage's
503 Server Busy (`x-ms-error-code: ServerBusy`), the 429 Table on Cosmos DB and Cosmos
use, and Cosmos's 429 with `x-ms-retry-after-ms`. The Storage clients are built with
`retry_total=0`, as if the SDK's own retries were spent (Blob and Queue never retry a
429 anyway); the Cosmos client keeps its own 9 retries, and the proxy throttles past
them. The pipeline's `backend_retry` makes one attempt, so what absorbs the throttle is
the adapters' request loop (`onceflow.adapters.azure.throttling`). A throttle that
outlives it fails the events for redelivery, and dead-letters none.
"""

from __future__ import annotations

import base64
import json
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from onceflow.adapters.azure import QueueSink, TableIdempotencyStore, TableSink, throttling
from onceflow.adapters.azure.cosmos_sink import CosmosSink
from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore
from onceflow.adapters.azure.entry import BatchFailed, EventHubTrigger, function_app
from onceflow.adapters.azure.objects import BlobObjectStore
from onceflow.adapters.azure.testing import event_hub_batch, invocation_context
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.pipeline import Pipeline
from onceflow.retry import Backoff, RetryPolicy
from tests.azure.cosmos_proxy import proxied_containers
from tests.support.proxy import Fault, FaultProxy, Request, azure_error, http_response
from tests.support.servers import Azurite, CosmosServer

pytestmark = pytest.mark.emulator

EVENTS = 5
QUICK = RetryPolicy(attempts=6, backoff=Backoff(base=0.001, cap=0.005))
"""The adapters' request loop, fast for tests."""


class Doubler:
    def process(self, event: Event) -> dict[str, Any]:
        return {"double": 2 * int(event.id)}


def events(source: str) -> list[Event]:
    return [Event(id=str(n), source=source, data=b"{}") for n in range(EVENTS)]


def one_attempt(sink: Any, store: Any, letters: MemorySink) -> Pipeline:
    """A pipeline whose own backend retry does not retry: only the adapters' loop can."""
    return Pipeline(
        Doubler(),
        sink,
        store,
        letters,
        clock=ManualClock(),
        backend_retry=RetryPolicy(attempts=1),
    )


def every(request: Request) -> bool:
    return True


def method(name: str) -> Any:
    return lambda request: request.method == name


def cosmos_throttle(retry_after_ms: int = 1) -> bytes:
    body = json.dumps({"code": "TooManyRequests", "message": "Request rate is large"}).encode()
    headers = {
        "Content-Type": "application/json",
        "x-ms-retry-after-ms": str(retry_after_ms),
        "x-ms-substatus": "3200",
        "x-ms-activity-id": "fault-proxy",
    }
    return http_response(429, body, headers)


def endpoint_via(conn: str, service: str, port: int, proxy: FaultProxy) -> str:
    old = f"{service}Endpoint=http://127.0.0.1:{port}/"
    assert old in conn
    return conn.replace(old, f"{service}Endpoint={proxy.endpoint}/")


# -- Table --------------------------------------------------------------------------------------


@pytest.fixture
def table_proxy(azurite_server: Azurite) -> Iterator[FaultProxy]:
    with FaultProxy(azurite_server.table_port) as proxy:
        yield proxy


def proxied_table(azurite_server: Azurite, proxy: FaultProxy) -> TableClient:
    name = f"busy{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(azurite_server.connection_string).create_table(name)
    conn = endpoint_via(azurite_server.connection_string, "Table", azurite_server.table_port, proxy)
    return TableClient.from_connection_string(conn, name, retry_total=0)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "code"), [(503, "ServerBusy"), (429, "TooManyRequests")])
async def test_table_store_and_sink_ride_out_throttling(
    azurite_server: Azurite, table_proxy: FaultProxy, status: int, code: str
) -> None:
    table = proxied_table(azurite_server, table_proxy)
    store = TableIdempotencyStore(table, throttle_retry=QUICK)
    sink = TableSink(table, throttle_retry=QUICK)
    letters = MemorySink()
    pipe = one_attempt(sink, store, letters)
    busy = azure_error(status, code)
    reads = table_proxy.add(Fault.answer(method("GET"), busy, times=3))
    batches = table_proxy.add(Fault.answer(method("POST"), busy, times=3))
    result = await pipe.process_batch(events("busy"))
    assert (reads.fired, batches.fired) == (3, 3)
    assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    contents = await sink.contents()
    assert sorted(v["double"] for v in contents.values()) == [2 * n for n in range(EVENTS)]
    assert not letters.write_counts()
    again = await pipe.process_batch(events("busy"))
    assert sorted(again.duplicates) == [str(n) for n in range(EVENTS)]


@pytest.mark.anyio
async def test_table_throttling_that_outlives_the_retries_fails_events_for_redelivery(
    azurite_server: Azurite, table_proxy: FaultProxy
) -> None:
    table = proxied_table(azurite_server, table_proxy)
    store = TableIdempotencyStore(table, throttle_retry=QUICK)
    sink = TableSink(table, throttle_retry=QUICK)
    letters = MemorySink()
    pipe = one_attempt(sink, store, letters)
    table_proxy.add(Fault.answer(every, azure_error(503, "ServerBusy"), times=None))
    result = await pipe.process_batch(events("outage"))
    assert sorted(result.failed) == [str(n) for n in range(EVENTS)]
    assert not result.dead_lettered and not letters.write_counts()
    for failure in result.failures.values():
        assert failure.kind is FailureKind.STORE_FAILED
        assert "AzureThrottled" in failure.text and "ServerBusy" in failure.text
    table_proxy.clear()  # the service recovers; the events come again
    again = await pipe.process_batch(events("outage"))
    assert sorted(again.processed) == [str(n) for n in range(EVENTS)] and not again.failures
    assert len(await sink.contents()) == EVENTS


# -- Blob and Queue -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "code"), [(503, "ServerBusy"), (429, "TooManyRequests")])
async def test_blob_object_store_rides_out_throttling(
    azurite_server: Azurite, status: int, code: str
) -> None:
    with FaultProxy(azurite_server.blob_port) as proxy:
        conn = endpoint_via(
            azurite_server.connection_string, "Blob", azurite_server.blob_port, proxy
        )
        name = f"busy{uuid.uuid4().hex[:10]}"
        container = ContainerClient.from_connection_string(conn, name, retry_total=0)
        busy = azure_error(status, code)
        proxy.add(Fault.answer(every, busy, times=3))  # the container's creation
        objects = BlobObjectStore(container, "p/", create=True, throttle_retry=QUICK)
        puts = proxy.add(Fault.answer(method("PUT"), busy, times=3))
        assert await objects.put_if_absent("a.json", b"{}") is True
        assert await objects.put_if_absent("a.json", b"[]") is False
        gets = proxy.add(Fault.answer(method("GET"), busy, times=3))
        assert await objects.get("a.json") == b"{}"
        assert [o.path for o in await objects.list()] == ["a.json"]
        assert (puts.fired, gets.fired, proxy.fired) == (3, 3, 9)


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "code"), [(503, "ServerBusy"), (429, "TooManyRequests")])
async def test_queue_sink_rides_out_throttling_with_each_message_sent_once(
    azurite_server: Azurite, status: int, code: str
) -> None:
    name = f"busy{uuid.uuid4().hex[:10]}"
    direct = QueueClient.from_connection_string(azurite_server.connection_string, name)
    direct.create_queue()
    with FaultProxy(azurite_server.queue_port) as proxy:
        port = azurite_server.queue_port
        conn = endpoint_via(azurite_server.connection_string, "Queue", port, proxy)
        sink = QueueSink(
            QueueClient.from_connection_string(conn, name, retry_total=0), throttle_retry=QUICK
        )
        letters = MemorySink()
        pipe = one_attempt(sink, MemoryIdempotencyStore(), letters)
        sends = proxy.add(Fault.answer(method("POST"), azure_error(status, code), times=4))
        result = await pipe.process_batch(events("busy-queue"))
        assert sends.fired == 4
        assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    bodies = [json.loads(base64.b64decode(m.content)) for m in direct.receive_messages()]
    assert sorted(b["value"]["double"] for b in bodies) == [2 * n for n in range(EVENTS)]
    assert not letters.write_counts()


# -- Cosmos -------------------------------------------------------------------------------------


def cosmos_write(request: Request) -> bool:
    return request.method in ("POST", "PUT") and "/docs" in request.path


@pytest.mark.anyio
async def test_cosmos_store_and_sink_ride_out_throttling_past_the_sdks_retries(
    cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    keys, outputs = proxied_containers(cosmos, cosmos_proxy, outputs_through_proxy=True)
    store = CosmosIdempotencyStore(keys, throttle_retry=QUICK)
    sink = CosmosSink(outputs, throttle_retry=QUICK)
    letters = MemorySink()
    pipe = one_attempt(sink, store, letters)
    # The SDK retries a 429 nine times: twelve outlive it on the first request.
    busy = cosmos_proxy.add(Fault.answer(cosmos_write, cosmos_throttle(), times=12))
    result = await pipe.process_batch(events("busy-cosmos"))
    assert busy.fired == 12
    assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    contents = await sink.contents()
    assert sorted(v["double"] for v in contents.values()) == [2 * n for n in range(EVENTS)]
    assert not letters.write_counts()
    again = await pipe.process_batch(events("busy-cosmos"))
    assert sorted(again.duplicates) == [str(n) for n in range(EVENTS)]


@pytest.mark.anyio
async def test_the_wait_the_service_asks_for_is_honoured(
    azurite_server: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Retry-After` (seconds) and `x-ms-retry-after-ms` lengthen the backoff, never shorten it."""
    waits: list[float] = []
    monkeypatch.setattr(throttling, "time", types.SimpleNamespace(sleep=waits.append))
    port = azurite_server.blob_port
    with FaultProxy(port) as proxy:
        conn = endpoint_via(azurite_server.connection_string, "Blob", port, proxy)
        # The SDK's default retries: it never retries a 429 itself.
        container = ContainerClient.from_connection_string(conn, f"w{uuid.uuid4().hex[:10]}")
        objects = BlobObjectStore(container, create=True, throttle_retry=QUICK)
        asked = {"Retry-After": "7", "x-ms-error-code": "ServerBusy"}
        proxy.add(Fault.answer(method("PUT"), http_response(429, b"", asked)))
        asked_ms = {"x-ms-retry-after-ms": "1500", "x-ms-error-code": "ServerBusy"}
        proxy.add(Fault.answer(method("PUT"), http_response(429, b"", asked_ms)))
        proxy.add(Fault.answer(method("PUT"), azure_error(429, "ServerBusy")))
        await objects.put("a", b"1")
        assert await objects.get("a") == b"1"
    assert waits[:2] == [7.0, 1.5] and 0 < waits[2] <= QUICK.backoff.cap


# -- through the Event Hubs function ----------------------------------------------------------


@pytest.mark.anyio
async def test_event_hubs_function_on_a_throttled_table_applies_each_event_once(
    azurite_server: Azurite, table_proxy: FaultProxy
) -> None:
    table = proxied_table(azurite_server, table_proxy)
    clock = ManualClock()
    store = TableIdempotencyStore(table, clock=clock, throttle_retry=QUICK)
    sink, letters = TableSink(table, throttle_retry=QUICK), MemorySink()
    pipe = Pipeline(Doubler(), sink, store, letters, clock=clock)
    [fn] = function_app(pipe, EventHubTrigger("orders", retry_seconds=5)).get_functions()
    bodies = [b"{}"] * EVENTS
    # A throttle past every retry: the function holds, then raises for the retry policy.
    outage = table_proxy.add(Fault.answer(every, azure_error(503, "ServerBusy"), times=None))
    with pytest.raises(BatchFailed):
        await fn.get_user_function()(event_hub_batch(bodies), invocation_context(0, 5))
    assert outage.fired > 0 and not letters.write_counts()
    table_proxy.clear()
    # Recovering: a few throttles left, which the request loop rides out.
    table_proxy.add(Fault.answer(every, azure_error(429, "TooManyRequests"), times=3))
    clock.advance(60)
    await fn.get_user_function()(event_hub_batch(bodies), invocation_context(1, 5))
    contents = await sink.contents()
    assert len(contents) == EVENTS and not letters.write_counts()
