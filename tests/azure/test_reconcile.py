"""Window counts in the Azure state Table (Azurite) and `onceflow reconcile table`."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from azure.cosmos import CosmosClient, PartitionKey
from azure.data.tables import TableServiceClient

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.azure.cosmos_sink import CosmosSink
from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore
from onceflow.adapters.azure.table_sink import TableSink
from onceflow.adapters.azure.table_store import TableIdempotencyStore
from onceflow.adapters.azure.window_counts import CosmosWindowCounts, TableWindowCounts
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.cli import main
from onceflow.reconcile import COUNTS, CountRow, count_windows
from tests.support.servers import Azurite, CosmosServer

pytestmark = pytest.mark.emulator
SECRET = "ssn-078-05-1120"


def process(event: Event) -> dict[str, int]:
    body = event.json()
    if body.get("bad"):
        raise PermanentError("refused")
    return {"n": body["n"]}


def new_table(azurite_server: Azurite) -> str:
    name = f"rc{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(azurite_server.connection_string).create_table(name)
    return name


def test_counts_in_the_state_table_then_reconcile(
    azurite_server: Azurite, capsys: pytest.CaptureFixture[str]
) -> None:
    conn, name = azurite_server.connection_string, new_table(azurite_server)
    clock = ManualClock(time.time())  # rows expire by the reader's real clock
    store = TableIdempotencyStore(name, connection_string=conn, clock=clock)
    sink = TableSink(name, connection_string=conn)  # outputs, markers and counts: one Table
    pipe = Pipeline(process, sink, store, MemorySink(), clock=clock, name="hub/orders#1")
    count_windows(pipe, TableWindowCounts(name, connection_string=conn))
    batch = [
        Event(id=f"o{n}", source="hub", data=json.dumps({"n": n, "ssn": SECRET}).encode())
        for n in range(3)
    ]
    batch.append(Event(id="o9", source="hub", data=b'{"n": 9, "bad": true}'))
    pipe.run_batch(batch)
    pipe.run_batch(batch)
    [(key, tally)] = TableWindowCounts(name, connection_string=conn).read().items()
    assert key[0] == "hub/orders#1"  # a name with characters Table keys refuse
    assert tally["received"] == 8 and tally["processed"] == 3
    assert tally["duplicates"] == 4 and tally["dead_lettered"] == 1
    base = ["reconcile", "table", "--table", name, "--connection-string", conn]
    assert main([*base, "--expected", "4", "--sink", f"table:{name}"]) == 0
    shown = capsys.readouterr().out
    assert "gap: 0 (unexplained: 0)" in shown and SECRET not in shown
    assert "sink rows: 3  expected: 3  gap: 0" in shown
    assert main([*base, "--expected", "9"]) == 1  # more than the duplicates explain
    capsys.readouterr()


def test_concurrent_writers_to_one_window_all_land_and_a_rewrite_replaces(
    azurite_server: Azurite,
) -> None:
    conn, name = azurite_server.connection_string, new_table(azurite_server)
    now = time.time()

    def puts(worker: int) -> None:
        counts = TableWindowCounts(name, connection_string=conn)
        for n in range(5):
            row = CountRow(
                "p", 3600, f"w{worker}b{n}", {"received": 1, "processed": 1}, now, now + 60
            )
            counts.put(row)
            counts.put(row)  # the SDK retrying a write whose reply was lost

    workers = [threading.Thread(target=puts, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    tally = TableWindowCounts(name, connection_string=conn).read("p")[("p", 3600)]
    assert tally["received"] == 15 and tally["processed"] == 15


def test_expired_entities_are_skipped_and_swept_on_a_new_window(azurite_server: Azurite) -> None:
    conn, name = azurite_server.connection_string, new_table(azurite_server)

    def writer(w: str) -> TableWindowCounts:
        return TableWindowCounts(name, connection_string=conn, writer=w)

    writer("w1").put(CountRow("p", 0, "b1", {"received": 1}, 10.0, 100.0))
    writer("w2").put(CountRow("p", 0, "b2", {"received": 2}, 20.0, 200.0))
    assert writer("r").read(now=150.0) == {("p", 0): {**dict.fromkeys(COUNTS, 0), "received": 2}}
    writer("w3").put(CountRow("p", 3600, "b3", {"received": 4}, 150.0, 9e9))
    client = TableServiceClient.from_connection_string(conn).get_table_client(name)
    left = sorted(e["RowKey"] for e in client.list_entities())
    assert left == [f"{0:012d}-w2", f"{3600:012d}-w3"]  # w1's had expired when w3 wrote


def test_a_writers_adds_accumulate_in_one_entity_once_per_attempt(azurite_server: Azurite) -> None:
    conn, name = azurite_server.connection_string, new_table(azurite_server)
    counts = TableWindowCounts(name, connection_string=conn, writer="w1")
    now = time.time()
    first = CountRow("p", 0, "b1", {"received": 3, "processed": 3}, now, now + 60)
    counts.put(first)
    counts.put(first)  # the same attempt again: nothing added
    counts.put(CountRow("p", 0, "b2", {"received": 1, "duplicates": 1}, now, now + 60))
    client = TableServiceClient.from_connection_string(conn).get_table_client(name)
    [entity] = list(client.list_entities())
    assert (entity["received"], entity["processed"], entity["duplicates"]) == (4, 3, 1)
    assert entity["last_batch"] == "b2"


def test_a_state_table_without_counts(
    azurite_server: Azurite, capsys: pytest.CaptureFixture[str]
) -> None:
    name = new_table(azurite_server)
    args = ["--table", name, "--connection-string", azurite_server.connection_string]
    assert main(["reconcile", "table", *args]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "the state holds no window counts" in line


def test_counts_in_the_cosmos_state_container_then_reconcile(
    cosmos: CosmosServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False)
    db_name = f"db{uuid.uuid4().hex[:8]}"
    database = client.create_database_if_not_exists(db_name)
    state = database.create_container(
        "state", partition_key=PartitionKey(path="/pk"), default_ttl=-1
    )
    outputs = database.create_container("out", partition_key=PartitionKey(path="/pk"))
    clock = ManualClock(time.time())
    store = CosmosIdempotencyStore(state, clock=clock)
    pipe = Pipeline(process, CosmosSink(outputs), store, MemorySink(), clock=clock, name="hub/o#1")
    count_windows(pipe, CosmosWindowCounts(state))
    batch = [
        Event(id=f"o{n}", source="hub", data=json.dumps({"n": n, "ssn": SECRET}).encode())
        for n in range(3)
    ]
    batch.append(Event(id="o9", source="hub", data=b'{"n": 9, "bad": true}'))
    pipe.run_batch(batch)
    pipe.run_batch(batch)
    [(key, tally)] = CosmosWindowCounts(state).read().items()
    assert key[0] == "hub/o#1"
    assert (tally["received"], tally["processed"], tally["duplicates"]) == (8, 3, 4)
    [item] = [
        i
        for i in state.query_items("SELECT * FROM c", enable_cross_partition_query=True)
        if i["pk"].startswith("~counts~")
    ][:1]
    assert item["ttl"] == 35 * 86_400
    monkeypatch.setenv("COSMOS_KEY", cosmos.key)
    base = ["reconcile", "cosmos", "--endpoint", cosmos.endpoint, "--database", db_name]
    assert main([*base, "--container", "state", "--expected", "4", "--sink", "cosmos:out"]) == 0
    shown = capsys.readouterr().out
    assert "sink rows: 3  expected: 3  gap: 0" in shown and SECRET not in shown
    assert main([*base, "--container", "out", "--expected", "4"]) == 2  # no counts there
    assert "the state holds no window counts" in capsys.readouterr().err
    monkeypatch.delenv("COSMOS_KEY")
    assert main([*base, "--container", "state"]) == 2
    assert "set the environment variable COSMOS_KEY" in capsys.readouterr().err


def test_a_cosmos_writer_adds_once_per_attempt_and_reads_one_pipeline(cosmos: CosmosServer) -> None:
    client = CosmosClient(cosmos.endpoint, credential=cosmos.key, enable_endpoint_discovery=False)
    database = client.create_database_if_not_exists(f"db{uuid.uuid4().hex[:8]}")
    state = database.create_container("s", partition_key=PartitionKey(path="/pk"), default_ttl=-1)
    counts = CosmosWindowCounts(state, writer="w1")
    now = time.time()
    first = CountRow("p", 0, "b1", {"received": 3, "processed": 3}, now, now + 60)
    counts.put(first)
    counts.put(first)  # the same attempt again: nothing added
    counts.put(CountRow("p", 0, "b2", {"received": 1, "duplicates": 1}, now, now + 60))
    CosmosWindowCounts(state, writer="w2").put(
        CountRow("q", 0, "b1", {"received": 9}, now, now + 60)
    )
    tally = counts.read("p")[("p", 0)]
    assert (tally["received"], tally["processed"], tally["duplicates"]) == (4, 3, 1)
    assert set(counts.read()) == {("p", 0), ("q", 0)}
    assert counts.read("p", now=now + 60) == {}  # expired by its stored time
