"""The Azure stores' limits: Cosmos's 2 MB item, Table's key and property limits, 10,000 events.

Each limit ends in one of two ways: the store handles it (a key too long or holding
characters a Table key forbids is escaped and hashed into its address), or the event is
dead-lettered with a reason naming the limit. Never a failed batch. Azurite and the local
Cosmos server accept some items the real services refuse (the Cosmos server stores a
3 MB item), so the sinks check the limits themselves, before writing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey
from azure.data.tables import TableClient, TableServiceClient

from onceflow.adapters.azure import TableIdempotencyStore, TableSink
from onceflow.adapters.azure.cosmos_sink import CosmosSink
from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore
from onceflow.adapters.azure.entry import EventHubTrigger, function_app
from onceflow.adapters.azure.testing import event_hub_batch
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.errors import PermanentError
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.identity import output_id
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy
from tests.support.servers import Azurite, CosmosServer


class Sized:
    """Echoes the event id; `{"pad": n}` bodies become outputs of n characters."""

    def process(self, event: Event) -> dict[str, Any]:
        body = event.json() if event.data else {}
        if "bad" in body:
            raise PermanentError("a bad record")
        return {"id": event.id[:20], "pad": "x" * int(body.get("pad", 0))}


def pipeline(sink: Any, store: Any, letters: MemorySink) -> Pipeline:
    return Pipeline(Sized(), sink, store, letters, clock=ManualClock())


# -- Table keys ---------------------------------------------------------------------------------

ODD_SOURCE = "hub/part\\one#two?three\t\x7f~%" + "s" * 1200
"""A source (the PartitionKey) with every character a Table key forbids, over 1 KiB."""
ODD_IDS = [
    "a/b",
    "c\\d",
    "e#f",
    "g?h",
    "tab\there",
    "\x00nul",
    "é🙂",
    "%7E~",
    "i" * 1500,  # over the 1 KiB RowKey limit
    "j" * 40_000,  # over the 64 KiB string property limit in UTF-16
    "007",
    "7",
]


@pytest.mark.emulator
@pytest.mark.anyio
async def test_table_keys_with_forbidden_characters_and_over_the_limits_are_handled(
    azurite_server: Azurite,
) -> None:
    name = f"limits{uuid.uuid4().hex[:10]}"
    service = TableServiceClient.from_connection_string(azurite_server.connection_string)
    service.create_table(name)
    table = TableClient.from_connection_string(azurite_server.connection_string, name)
    store, sink, letters = TableIdempotencyStore(table), TableSink(table), MemorySink()
    pipe = pipeline(sink, store, letters)
    batch = [Event(id=i, source=ODD_SOURCE, data=b"{}") for i in ODD_IDS]
    result = await pipe.process_batch(batch)
    assert not result.failures, result.failures
    assert sorted(result.processed) == sorted(ODD_IDS)
    assert len(await sink.contents()) == len(ODD_IDS)
    assert not letters.write_counts()
    for entity in table.list_entities():
        assert len(entity["PartitionKey"].encode()) <= 1024
        assert len(entity["RowKey"].encode()) <= 1024
        assert not set(entity["PartitionKey"] + entity["RowKey"]) & set("/\\#?\t\x00\x7f")
    again = await pipe.process_batch(batch)
    assert sorted(again.duplicates) == sorted(ODD_IDS)


# -- Cosmos items -------------------------------------------------------------------------------


def cosmos_containers(cosmos: CosmosServer) -> tuple[ContainerProxy, ContainerProxy]:
    client = CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False)
    database = client.create_database(f"db{uuid.uuid4().hex[:8]}")
    for role in ("keys", "outputs"):
        database.create_container(role, partition_key=PartitionKey(path="/pk"), default_ttl=-1)
    return database.get_container_client("keys"), database.get_container_client("outputs")


@pytest.mark.emulator
@pytest.mark.anyio
async def test_cosmos_output_over_the_2_mb_item_limit_is_dead_lettered_naming_it(
    cosmos: CosmosServer,
) -> None:
    keys, outputs = cosmos_containers(cosmos)
    clock = ManualClock()
    sink, letters = CosmosSink(outputs), MemorySink()
    store = CosmosIdempotencyStore(keys, clock=clock)
    pipe = Pipeline(Sized(), sink, store, letters, clock=clock)
    pads = {"small": 10, "near": 2_000_000, "big": 2_100_000, "huge": 3_000_000}
    batch = [
        Event(id=i, source="items", data=json.dumps({"pad": n}).encode()) for i, n in pads.items()
    ]
    result = await pipe.process_batch(batch)
    assert sorted(result.processed) == ["near", "small"]
    assert sorted(result.dead_lettered) == ["big", "huge"]
    for rid in ("big", "huge"):
        failure = result.failures[rid]
        assert failure.kind is FailureKind.OUTPUT_REJECTED
        assert "2 MB item limit" in failure.text and "xxx" not in failure.text
    stored = await sink.contents()
    assert sorted(v["id"] for v in stored.values()) == ["near", "small"]
    assert len(letters.write_counts()) == 2


@pytest.mark.emulator
@pytest.mark.anyio
async def test_cosmos_key_whose_source_is_over_the_partition_key_limit_is_handled(
    cosmos: CosmosServer,
) -> None:
    keys, outputs = cosmos_containers(cosmos)
    clock = ManualClock()
    sink, letters = CosmosSink(outputs), MemorySink()
    pipe = Pipeline(Sized(), sink, CosmosIdempotencyStore(keys, clock=clock), letters, clock=clock)
    source = "long/" + "s" * 3000  # Cosmos refuses partition key values over 2 KB
    batch = [Event(id=str(n), source=source, data=b"{}") for n in range(3)]
    result = await pipe.process_batch(batch)
    assert sorted(result.processed) == ["0", "1", "2"] and not result.failures
    for container in (keys, outputs):
        for item in container.query_items("SELECT * FROM c", enable_cross_partition_query=True):
            assert len(item["pk"].encode()) <= 2048 and len(item["id"]) <= 255
    again = await pipe.process_batch(batch)
    assert sorted(again.duplicates) == ["0", "1", "2"]


# -- 10,000 events through the Event Hubs function ------------------------------------------------


@pytest.mark.anyio
async def test_event_hubs_function_takes_10000_events_with_bad_ones_dead_lettered() -> None:
    clock = ManualClock()
    sink, letters = MemorySink(), MemorySink()
    pipe = Pipeline(
        Sized(),
        sink,
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=1),
    )
    bodies = [b'{"bad": 1}' if n % 1000 == 0 else b"{}" for n in range(10_000)]
    bodies[1] = b"\xff not json"
    [fn] = function_app(pipe, EventHubTrigger("orders")).get_functions()
    await fn.get_user_function()(event_hub_batch(bodies))
    assert len(sink.contents()) == 10_000 - 11
    assert set(sink.write_counts().values()) == {1}
    assert len(letters.write_counts()) == 11
    # Delivered again (a host retry): every event is a duplicate, nothing written twice.
    await fn.get_user_function()(event_hub_batch(bodies))
    assert set(sink.write_counts().values()) == {1} and len(letters.write_counts()) == 11


@pytest.mark.emulator
@pytest.mark.anyio
async def test_table_output_with_a_partition_key_over_a_property_is_dead_lettered_naming_it(
    azurite_server: Azurite,
) -> None:
    name = f"limits{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(azurite_server.connection_string).create_table(name)
    table = TableClient.from_connection_string(azurite_server.connection_string, name)
    sink, letters = TableSink(table), MemorySink()
    pipe = pipeline(sink, TableIdempotencyStore(table), letters)
    batch = [
        Event(id="ok", source="pk", data=b"{}", partition_key="p"),
        Event(id="long", source="pk", data=b"{}", partition_key="p" * 40_000),
    ]
    result = await pipe.process_batch(batch)
    assert result.processed == ["ok"] and result.dead_lettered == ["long"]
    failure = result.failures["long"]
    assert failure.kind is FailureKind.OUTPUT_REJECTED and "32000 UTF-16" in failure.text
    assert list(await sink.contents()) == [output_id(batch[0].key, 0)]


@pytest.mark.emulator
@pytest.mark.anyio
async def test_table_output_over_the_1_mb_entity_is_dead_lettered_and_the_rest_commits(
    azurite_server: Azurite,
) -> None:
    # Store and sink share the table: outputs and markers commit in entity transactions,
    # so one oversized entity must not cancel its neighbours' transaction.
    name = f"limits{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(azurite_server.connection_string).create_table(name)
    table = TableClient.from_connection_string(azurite_server.connection_string, name)
    sink, letters = TableSink(table), MemorySink()
    pipe = pipeline(sink, TableIdempotencyStore(table), letters)
    # 200,000 chars: 7 properties of 32,000 UTF-16 units; 600,000: over the 480,000 the sink
    # keeps under an entity's 1 MiB (the rest is room for keys and the marker's fields).
    pads = {"small": 10, "split": 200_000, "big": 600_000}
    batch = [
        Event(id=i, source="same", data=json.dumps({"pad": n}).encode()) for i, n in pads.items()
    ]
    result = await pipe.process_batch(batch)
    assert sorted(result.processed) == ["small", "split"] and result.dead_lettered == ["big"]
    failure = result.failures["big"]
    assert failure.kind is FailureKind.OUTPUT_REJECTED and "xxx" not in failure.text
    assert "Table entity of at most 1 MiB" in failure.text
    stored = await sink.contents()
    assert sorted(v["id"] for v in stored.values()) == ["small", "split"]
    assert stored[output_id(batch[1].key, 0)]["pad"] == "x" * 200_000
    assert len(letters.write_counts()) == 1
