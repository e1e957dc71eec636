"""Window counts in the Azure state Table (Azurite) and `onceflow reconcile table`."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from azure.data.tables import TableServiceClient

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.azure.table_sink import TableSink
from onceflow.adapters.azure.table_store import TableIdempotencyStore
from onceflow.adapters.azure.window_counts import TableWindowCounts
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.cli import main
from onceflow.reconcile import count_windows
from tests.support.servers import Azurite

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
    conn, name, clock = azurite_server.connection_string, new_table(azurite_server), ManualClock()
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


def test_concurrent_adds_to_one_window_all_land(azurite_server: Azurite) -> None:
    conn, name = azurite_server.connection_string, new_table(azurite_server)

    def adds() -> None:
        counts = TableWindowCounts(name, connection_string=conn)
        for _ in range(5):
            counts.add("p", 3600, {"received": 1, "processed": 1})

    workers = [threading.Thread(target=adds) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    tally = TableWindowCounts(name, connection_string=conn).read("p")[("p", 3600)]
    assert tally["received"] == 15 and tally["processed"] == 15


def test_a_state_table_without_counts(
    azurite_server: Azurite, capsys: pytest.CaptureFixture[str]
) -> None:
    name = new_table(azurite_server)
    args = ["--table", name, "--connection-string", azurite_server.connection_string]
    assert main(["reconcile", "table", *args]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "the state holds no window counts" in line
