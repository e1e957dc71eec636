"""Many sinks: outputs routed to named sinks, each landing exactly once in its own.

`RoutedSinks` runs the sink, atomic-sink and exactly-once contract suites on memory; the
pipeline tests run on memory, on SQLite (two tables of one file: the other table is
written first, the first commits with the markers) and on DynamoDB on the moto server
(two tables: one transaction per event holds both outputs and the marker).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from onceflow import ConfigurationError, Event, FailureKind, Pipeline
from onceflow.adapters.local import SqliteIdempotencyStore, SqliteSink
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.interfaces import Sink
from onceflow.routing import RoutedSinks, To
from onceflow.testing import AtomicSinkContract, ExactlyOnceContract, SinkContract
from tests.support.servers import MotoServer

# -- the contract suites, on memory ------------------------------------------------------------


async def read_routed(sink: Sink) -> dict[str, Any]:
    members = sink.sinks.values() if isinstance(sink, RoutedSinks) else [sink]
    found: dict[str, Any] = {}
    for member in members:
        assert isinstance(member, MemorySink)
        found.update(member.contents())
    return found


class RoutedFixtures:
    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryIdempotencyStore:
        return MemoryIdempotencyStore(clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(self, store: MemoryIdempotencyStore) -> MemoryIdempotencyStore:
        return store.handle()

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_routed

    @pytest.fixture
    def sink(self) -> RoutedSinks:
        return RoutedSinks({"main": MemorySink(), "side": MemorySink()})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


class TestRoutedSink(RoutedFixtures, SinkContract):
    pass


class TestRoutedAtomicSink(RoutedFixtures, AtomicSinkContract):
    pass


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "write-then-complete"])
class TestRoutedExactlyOnce(RoutedFixtures, ExactlyOnceContract):
    max_examples = 30

    @pytest.fixture
    def sink(self, atomic: bool) -> RoutedSinks:
        return RoutedSinks({"main": MemorySink(atomic=atomic), "side": MemorySink(atomic=atomic)})

    @pytest.fixture
    def dead_letter_sink(self, atomic: bool) -> MemorySink:
        return MemorySink(atomic=atomic)


# -- routing through a pipeline ----------------------------------------------------------------


class LedgerRow(BaseModel):
    payment: str
    amount: Decimal


class FraudAlert(BaseModel):
    payment: str
    score: int


class Payment(BaseModel):
    id: str
    amount: Decimal
    note: str = ""


class Payments:
    def process(self, p: Payment) -> list[Any]:
        out: list[Any] = [LedgerRow(payment=p.id, amount=p.amount)]
        if p.amount > 1000:
            out.append(FraudAlert(payment=p.id, score=90))
        if p.note:
            out.append(To("alerts", {"payment": p.id, "note": p.note}))
        return out


def pay(n: int, amount: str, note: str = "") -> Event:
    body = f'{{"id":"p{n}","amount":{amount},"note":"{note}"}}'
    return Event(id=f"m{n}", source="payments", data=body.encode())


def routed(ledger: Sink, alerts: Sink, store: Any, letters: Sink | None = None) -> Pipeline:
    return Pipeline(
        Payments(),
        sinks={"ledger": ledger, "alerts": alerts},
        store=store,
        dead_letter=letters,
        routes={FraudAlert: "alerts"},
    )


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "write-then-complete"])
def test_each_output_lands_once_in_its_own_sink(atomic: bool) -> None:
    ledger, alerts = MemorySink(atomic=atomic), MemorySink(atomic=atomic)
    pipe = routed(ledger, alerts, MemoryIdempotencyStore(), MemorySink())
    result = pipe.run_batch([pay(1, "10"), pay(2, "5000", note="call back")])
    assert sorted(result.processed) == ["m1", "m2"]
    assert ledger.contents() == {
        "payments#m1#0": {"payment": "p1", "amount": Decimal("10")},
        "payments#m2#0": {"payment": "p2", "amount": Decimal("5000")},
    }
    assert alerts.contents() == {
        "payments#m2#1": {"payment": "p2", "score": 90},
        "payments#m2#2": {"payment": "p2", "note": "call back"},
    }
    assert pipe.run_batch([pay(2, "5000", note="call back")]).duplicates == ["m2"]
    assert all(n == 1 for n in ledger.write_counts().values())
    assert all(n == 1 for n in alerts.write_counts().values())


def test_one_sinks_refusal_dead_letters_only_that_event_naming_the_sink() -> None:
    ledger, alerts, letters = MemorySink(), MemorySink(max_value_bytes=60), MemorySink()
    pipe = routed(ledger, alerts, MemoryIdempotencyStore(), letters)
    result = pipe.run_batch([pay(1, "5000"), pay(2, "5000", note="x" * 100), pay(3, "1")])
    assert sorted(result.processed) == ["m1", "m3"] and result.dead_lettered == ["m2"]
    failure = result.failures["m2"]
    assert failure.kind is FailureKind.OUTPUT_REJECTED and "sink 'alerts'" in failure.text
    # Atomic: nothing of the refused event reached the other sink either.
    assert sorted(ledger.contents()) == ["payments#m1#0", "payments#m3#0"]
    assert sorted(alerts.contents()) == ["payments#m1#1"]


def test_an_output_for_a_sink_that_does_not_exist_is_a_permanent_error() -> None:
    def process(event: Event) -> To:
        return To("nowhere", {"x": 1})

    letters = MemorySink()
    pipe = Pipeline(
        process, sinks={"a": MemorySink()}, store=MemoryIdempotencyStore(), dead_letter=letters
    )
    result = pipe.run_batch([Event(id="e", source="s")])
    assert result.dead_lettered == ["e"] and "no sink 'nowhere'" in result.failures["e"].text


def test_configuration_mistakes_are_named() -> None:
    store = MemoryIdempotencyStore()
    with pytest.raises(ConfigurationError, match="not both"):
        Pipeline(Payments(), MemorySink(), store, sinks={"a": MemorySink()})
    with pytest.raises(ConfigurationError, match="not a sink"):
        Pipeline(Payments(), sinks={"a": MemorySink()}, store=store, routes={FraudAlert: "b"})
    with pytest.raises(ConfigurationError, match="needs a sink"):
        Pipeline(Payments(), store=store)


def test_routed_on_sqlite_two_tables_of_one_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    ledger, alerts = SqliteSink(db, table="ledger"), SqliteSink(db, table="alerts")
    pipe = routed(ledger, alerts, SqliteIdempotencyStore(db), SqliteSink(db, table="letters"))
    assert pipe.sink.commits_with(pipe.store)  # type: ignore[attr-defined]
    pipe.run_batch([pay(1, "12345678901234567.89"), pay(1, "1")])
    assert ledger.count() == 1 and alerts.count() == 1
    assert pipe.run_batch([pay(1, "1")]).duplicates == ["m1"]


# -- DynamoDB on the moto server: one transaction per event over both tables ----------------


@pytest.mark.emulator
def test_routed_on_dynamodb_commits_both_tables_with_the_marker(moto: MotoServer) -> None:
    from onceflow.adapters.aws import DynamoDBIdempotencyStore, DynamoDBSink
    from onceflow.adapters.aws.dynamodb_store import create_table
    from tests.aws.moto_clients import SerializedClient

    client = SerializedClient(moto.client("dynamodb"))
    names = {}
    for role in ("state", "ledger", "alerts", "letters"):
        names[role] = f"route-{role}-{uuid.uuid4().hex[:8]}"
        create_table(client, names[role])
    store = DynamoDBIdempotencyStore(names["state"], client=client)
    ledger = DynamoDBSink(names["ledger"], client=client)
    alerts = DynamoDBSink(names["alerts"], client=client)
    commits: list[dict[str, Any]] = []
    complete_with = store.complete_with

    async def spy(completions: Any, writes: Any) -> list[bool]:
        commits.append(dict(writes))
        return await complete_with(completions, writes)

    store.complete_with = spy  # type: ignore[method-assign]
    pipe = routed(ledger, alerts, store, DynamoDBSink(names["letters"], client=client))
    result = pipe.run_batch([pay(1, "12345678901234567.89"), pay(2, "3")])
    assert sorted(result.processed) == ["m1", "m2"]
    assert ledger.read_all() == {
        "payments#m1#0": {"payment": "p1", "amount": Decimal("12345678901234567.89")},
        "payments#m2#0": {"payment": "p2", "amount": Decimal("3")},
    }
    assert alerts.read_all() == {"payments#m1#1": {"payment": "p1", "score": 90}}
    # One store commit carried both tables' writes for m1 with its marker.
    assert len(commits) == 1 and len(commits[0]["payments#m1"]) == 2
    assert pipe.run_batch([pay(1, "12345678901234567.89")]).duplicates == ["m1"]


def test_async_typed_processor_with_a_filter_a_mask_and_two_sinks() -> None:
    from onceflow import Filter, Mask

    class Async:
        async def process(self, p: Payment) -> list[Any]:
            return [LedgerRow(payment=p.id, amount=p.amount), To("alerts", {"note": p.note})]

    ledger, alerts = MemorySink(), MemorySink()
    mask = Mask({"note": "detect"}, key="k" * 32)
    pipe = Pipeline(
        Async(),
        sinks={"ledger": ledger, "alerts": alerts},
        store=MemoryIdempotencyStore(),
        filter=Filter({"data": {"amount": [{"numeric": [">", 1]}]}}),
        mask=mask,
    )
    result = pipe.run_batch([pay(1, "5", note="mail bob@example.com"), pay(2, "1")])
    assert sorted(result.processed) == ["m1", "m2"]
    assert list(ledger.values()) == [{"payment": "p1", "amount": Decimal("5")}]
    assert list(alerts.values()) == [{"note": f"mail {mask.token('bob@example.com')}"}]
