"""Lost replies between the SDKs and Azurite's Table service or the Cosmos server.

`tests.support.proxy.FaultProxy` sits between the client and the server: it forwards a
claim or commit request, lets the server apply it, and resets the connection instead of
relaying the answer. The SDKs do not resend a POST or PUT whose reply was lost, so the
error reaches the pipeline, whose backend retry calls the store again: the store must
recognise its own lease (the claim token it wrote) and its own landed commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.data.tables import TableClient, TableServiceClient

from onceflow.adapters.azure import TableIdempotencyStore, TableSink
from onceflow.adapters.azure.cosmos_sink import CosmosSink
from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore
from onceflow.adapters.azure.table_keys import key_address
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.event import Event
from onceflow.identity import event_key, output_id
from onceflow.pipeline import Pipeline
from onceflow.records import ClaimStatus, Completion, Outcome, OutcomeStatus
from onceflow.retry import Backoff, RetryPolicy
from tests.azure.cosmos_proxy import proxied_containers
from tests.support.proxy import Fault, FaultProxy, Request
from tests.support.servers import Azurite, CosmosServer

pytestmark = pytest.mark.emulator

EVENTS = 5


class Doubler:
    def process(self, event: Event) -> dict[str, Any]:
        return {"double": 2 * int(event.id)}


def events(source: str) -> list[Event]:
    return [Event(id=str(n), source=source, data=b"{}") for n in range(EVENTS)]


def quick_pipeline(processor: Any, sink: Any, store: Any, clock: ManualClock) -> Pipeline:
    backend = RetryPolicy(attempts=3, backoff=Backoff(base=0.001, cap=0.01))
    return Pipeline(processor, sink, store, MemorySink(), clock=clock, backend_retry=backend)


# -- Azure Table ------------------------------------------------------------------------------


def table_batch(request: Request) -> bool:
    """An entity transaction (claims and commits are one each per partition here)."""
    return request.method == "POST" and request.path.split("?")[0].endswith("/$batch")


@pytest.fixture
def table_proxy(azurite_server: Azurite) -> Iterator[FaultProxy]:
    with FaultProxy(azurite_server.table_port) as proxy:
        yield proxy


def proxied_table(azurite_server: Azurite, proxy: FaultProxy) -> TableClient:
    name = f"lost{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(azurite_server.connection_string).create_table(name)
    conn = azurite_server.connection_string.replace(
        f"TableEndpoint=http://127.0.0.1:{azurite_server.table_port}/",
        f"TableEndpoint={proxy.endpoint}/",
    )
    assert proxy.endpoint in conn
    return TableClient.from_connection_string(conn, name, retry_backoff_factor=0.01)


@pytest.mark.anyio
async def test_table_claim_whose_reply_was_lost_is_ours_on_the_retried_claim(
    azurite_server: Azurite, table_proxy: FaultProxy
) -> None:
    table, clock = proxied_table(azurite_server, table_proxy), ManualClock()
    store = TableIdempotencyStore(table, clock=clock)
    sink = TableSink(table)
    pipe = quick_pipeline(Doubler(), sink, store, clock)
    lost = table_proxy.add(Fault.drop_reply(table_batch))  # the claim's transaction
    result = await pipe.process_batch(events("lost-claim"))
    assert lost.fired == 1
    assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    assert len(await sink.contents()) == EVENTS


@pytest.mark.anyio
async def test_table_commit_whose_reply_was_lost_is_applied_once(
    azurite_server: Azurite, table_proxy: FaultProxy
) -> None:
    table, clock = proxied_table(azurite_server, table_proxy), ManualClock()
    store = TableIdempotencyStore(table, clock=clock)
    sink = TableSink(table)
    pipe = quick_pipeline(Doubler(), sink, store, clock)
    lost = table_proxy.add(Fault.drop_reply(table_batch, skip=1))  # claim passes, commit lost
    result = await pipe.process_batch(events("lost-commit"))
    assert lost.fired == 1
    assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    # The landed commit is recognised by its token, not submitted a second time.
    print([(s.method, s.path[:60], s.fault) for s in table_proxy.seen])
    assert sum(1 for s in table_proxy.seen if s.method == "POST" and "$batch" in s.path) == 2
    contents = await sink.contents()
    assert sorted(v["double"] for v in contents.values()) == [2 * n for n in range(EVENTS)]
    again = await pipe.process_batch(events("lost-commit"))
    assert sorted(again.duplicates) == [str(n) for n in range(EVENTS)]


@pytest.mark.anyio
async def test_table_retried_commit_of_a_create_is_not_refused_by_its_own_write(
    azurite_server: Azurite, table_proxy: FaultProxy
) -> None:
    """A write that cannot be applied twice (a create) shows a commit re-applied."""
    table, clock = proxied_table(azurite_server, table_proxy), ManualClock()
    store = TableIdempotencyStore(table, clock=clock)
    key = event_key("lost-create", "1")
    [claim] = await store.claim([key], 30)
    assert claim.status is ClaimStatus.NEW
    partition, _ = key_address(key)
    ledger = {"PartitionKey": partition, "RowKey": "ledger-1", "amount": 1}
    writes = {key: [("create", ledger)]}
    completion = Completion(claim, Outcome(OutcomeStatus.SUCCEEDED, 1))
    table_proxy.add(Fault.drop_reply(table_batch))
    with pytest.raises(Exception):  # noqa: B017  # the SDK's error for the lost reply
        await store.complete_with([completion], writes)
    assert await store.complete_with([completion], writes) == [True]  # the runner's retry
    assert table.get_entity(partition, "ledger-1")["amount"] == 1


# -- Cosmos DB ----------------------------------------------------------------------------------


def cosmos_create(request: Request) -> bool:
    """A document create (not a query, which is a POST to the same path)."""
    return (
        request.method == "POST"
        and request.path.rstrip("/").endswith("/docs")
        and "query" not in request.header("content-type")
        and not request.header("x-ms-documentdb-isquery")
    )


def cosmos_replace(request: Request) -> bool:
    return request.method == "PUT" and "/docs/" in request.path


@pytest.mark.anyio
async def test_cosmos_claim_whose_reply_was_lost_is_ours_on_the_retried_claim(
    cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    (container, _), clock = (
        proxied_containers(cosmos, cosmos_proxy, outputs_through_proxy=False),
        ManualClock(),
    )
    store = CosmosIdempotencyStore(container, clock=clock)
    sink = MemorySink()
    pipe = quick_pipeline(Doubler(), sink, store, clock)
    lost = cosmos_proxy.add(Fault.drop_reply(cosmos_create))
    result = await pipe.process_batch(events("lost-claim"))
    assert lost.fired == 1
    assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    assert set(sink.write_counts().values()) == {1}


@pytest.mark.anyio
async def test_cosmos_commit_whose_reply_was_lost_is_applied_once(
    cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    (container, outputs), clock = (
        proxied_containers(cosmos, cosmos_proxy, outputs_through_proxy=False),
        ManualClock(),
    )
    store = CosmosIdempotencyStore(container, clock=clock)
    sink = CosmosSink(outputs)
    pipe = quick_pipeline(Doubler(), sink, store, clock)
    lost = cosmos_proxy.add(Fault.drop_reply(cosmos_replace))  # the first completion
    result = await pipe.process_batch(events("lost-commit"))
    assert lost.fired == 1
    assert sorted(result.processed) == [str(n) for n in range(EVENTS)] and not result.failures
    # Five completions, one of them lost and recognised, not replaced a second time.
    assert sum(1 for s in cosmos_proxy.seen if s.method == "PUT") == EVENTS
    key = event_key("lost-commit", "0")
    contents = await sink.contents()
    assert contents[output_id(key, 0)] == {"double": 0}
    again = await pipe.process_batch(events("lost-commit"))
    assert sorted(again.duplicates) == [str(n) for n in range(EVENTS)]
