"""TableIdempotencyStore and TableSink against Azurite's Table service."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import HTTPPolicy
from azure.core.pipeline.transport import RequestsTransportResponse
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from onceflow.adapters.azure import TableIdempotencyStore, TableSink
from onceflow.adapters.azure.table_keys import encode_part, key_address, output_address
from onceflow.clock import ManualClock
from onceflow.identity import event_key, output_id
from onceflow.interfaces import Sink, TransactionalStore
from onceflow.records import ClaimStatus, Completion, Outcome, OutcomeStatus
from onceflow.retry import Backoff, RetryPolicy
from onceflow.testing import (
    AtomicSinkContract,
    ExactlyOnceContract,
    SinkContract,
    StoreContract,
)
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def tables(azurite_server: Azurite) -> dict[str, str]:
    """Table names for this module, created once: the contracts use unique keys per test."""
    service = TableServiceClient.from_connection_string(azurite_server.connection_string)
    names = {role: f"{role}{uuid.uuid4().hex[:10]}" for role in ("state", "other", "letters")}
    for name in names.values():
        service.create_table(name)
    return names


async def read_table_sink(sink: Sink) -> dict[str, Any]:
    assert isinstance(sink, TableSink)
    return await sink.contents()


class TableFixtures:
    @pytest.fixture
    def store(
        self, azurite_server: Azurite, tables: dict[str, str], clock: ManualClock
    ) -> TableIdempotencyStore:
        return TableIdempotencyStore(
            tables["state"],
            connection_string=azurite_server.connection_string,
            clock=clock,
            ttl_seconds=3600.0,
        )

    @pytest.fixture
    def other_store(
        self, azurite_server: Azurite, tables: dict[str, str], clock: ManualClock
    ) -> TableIdempotencyStore:
        return TableIdempotencyStore(
            tables["state"],
            connection_string=azurite_server.connection_string,
            clock=clock,
            ttl_seconds=3600.0,
        )

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_table_sink


class TestTableStore(TableFixtures, StoreContract):
    pass


class TestTableSink(TableFixtures, SinkContract):
    @pytest.fixture
    def sink(self, azurite_server: Azurite, tables: dict[str, str]) -> TableSink:
        return TableSink(tables["other"], connection_string=azurite_server.connection_string)


class TestTableAtomicSink(TableFixtures, AtomicSinkContract):
    @pytest.fixture
    def sink(self, azurite_server: Azurite, tables: dict[str, str]) -> TableSink:
        return TableSink(tables["state"], connection_string=azurite_server.connection_string)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "write-then-complete"])
class TestTableExactlyOnce(TableFixtures, ExactlyOnceContract):
    max_examples = 12

    @pytest.fixture
    def sink(self, azurite_server: Azurite, tables: dict[str, str], atomic: bool) -> TableSink:
        name = tables["state"] if atomic else tables["other"]
        return TableSink(name, connection_string=azurite_server.connection_string)

    @pytest.fixture
    def dead_letter_sink(self, azurite_server: Azurite, tables: dict[str, str]) -> TableSink:
        return TableSink(tables["letters"], connection_string=azurite_server.connection_string)


def test_sink_is_atomic_only_with_a_store_on_its_own_table(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    conn = azurite_server.connection_string
    store = TableIdempotencyStore(tables["state"], connection_string=conn)
    assert TableSink(tables["state"], connection_string=conn).commits_with(store)
    assert not TableSink(tables["other"], connection_string=conn).commits_with(store)


@pytest.mark.parametrize(
    "text", ["plain", "a/b\\c#d?e", "~%7E~", "ünïcode Ω", 'it\'s "quoted"', "\x00\x1f"]
)
def test_key_parts_escape_reversibly(text: str) -> None:
    encoded = encode_part(text)
    assert not set(encoded) & set("/\\#?%'\"") and encoded.isprintable()
    assert unquote(encoded.replace("~", "%")) == text  # reversible, so no two texts collide


def test_sequence_numbers_sort_as_numbers() -> None:
    rows = [key_address(f"ns/hub/0#{n}")[1] for n in (9, 10, 100, 99999)]
    assert rows == sorted(rows)
    assert key_address("src#00000000000000000123") != key_address("src#123")


@pytest.mark.anyio
async def test_purge_deletes_only_what_has_expired(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    clock = ManualClock()
    store = TableIdempotencyStore(
        tables["state"],
        connection_string=azurite_server.connection_string,
        clock=clock,
        ttl_seconds=100.0,
    )
    source = f"purge-{uuid.uuid4().hex[:8]}"
    done, leased = f"{source}#1", f"{source}#2"
    claims = await store.claim([done, leased], 30)
    await store.complete([Completion(claims[0], Outcome(OutcomeStatus.SUCCEEDED))])
    partition = key_address(done)[0]
    assert await store.purge(partition=partition) == 0
    clock.advance(50)  # the lease has run out, but its row keeps the delivery count a TTL
    assert await store.purge(partition=partition) == 0
    assert [c.status for c in await store.claim([done], 30)] == [ClaimStatus.COMPLETED]
    clock.advance(100)  # the completion's TTL and the lapsed lease's both passed
    assert await store.purge(partition=partition) == 2
    assert store.read([key_address(done), key_address(leased)]) == {}


class Throttle(HTTPPolicy):  # type: ignore[type-arg]
    """Answers the next `times` requests with 429 Too Many Requests, as a busy partition does."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.remaining = times
        self.answered = 0

    def send(self, request: PipelineRequest) -> PipelineResponse:  # type: ignore[type-arg]
        if self.remaining <= 0:
            return self.next.send(request)
        self.remaining -= 1
        self.answered += 1
        raw = requests.Response()
        raw.status_code, raw.reason, raw._content = 429, "Too Many Requests", b""
        raw.headers["Retry-After"] = "0"
        response = RequestsTransportResponse(request.http_request, raw)
        return PipelineResponse(request.http_request, response, request.context)


@pytest.mark.anyio
async def test_throttled_requests_are_retried(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    throttle = Throttle(2)
    client = TableClient.from_connection_string(
        azurite_server.connection_string,
        tables["state"],
        per_retry_policies=[throttle],
        retry_backoff_factor=0.01,
    )
    store = TableIdempotencyStore(client)
    keys = [f"throttled-{uuid.uuid4().hex[:8]}#{n}" for n in range(3)]
    claims = await store.claim(keys, 30)
    assert [c.status for c in claims] == [ClaimStatus.NEW] * 3 and throttle.answered == 2


class LoseFirstAnswer(HTTPPolicy):  # type: ignore[type-arg]
    """Lets the first write land, then answers 503 as if the reply was lost on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def send(self, request: PipelineRequest) -> PipelineResponse:  # type: ignore[type-arg]
        response = self.next.send(request)
        if self.lost or request.http_request.method != "POST":
            return response
        self.lost += 1
        raw = requests.Response()
        raw.status_code, raw.reason, raw._content = 503, "Server Busy", b""
        lost = RequestsTransportResponse(request.http_request, raw)
        return PipelineResponse(request.http_request, lost, request.context)


@pytest.mark.anyio
async def test_a_claim_whose_answer_was_lost_is_still_ours(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    policy = LoseFirstAnswer()
    client = TableClient.from_connection_string(
        azurite_server.connection_string,
        tables["state"],
        per_retry_policies=[policy],
        retry_backoff_factor=0.01,
    )
    store = TableIdempotencyStore(client)
    key = f"lost-{uuid.uuid4().hex[:8]}#1"
    [claim] = await store.claim([key], 30)
    assert policy.lost == 1
    assert claim.status is ClaimStatus.NEW
    assert await store.complete([Completion(claim, Outcome(OutcomeStatus.SUCCEEDED))]) == [True]


@pytest.mark.anyio
async def test_complete_with_commits_each_key_with_its_writes_and_refuses_stale_fences(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    conn = azurite_server.connection_string
    clock = ManualClock()
    store = TableIdempotencyStore(tables["state"], connection_string=conn, clock=clock)
    assert isinstance(store, TransactionalStore)
    source = f"seam-{uuid.uuid4().hex[:8]}"
    ours, lost = event_key(source, "1"), event_key(source, "2")
    claims = await store.claim([ours, lost], 10)
    clock.advance(20)  # the second lease runs out and another worker takes it over
    [taken] = await store.claim([lost], 10)
    assert taken.status is ClaimStatus.NEW

    def upsert(key: str) -> tuple[Any, ...]:
        partition, row_key = output_address(key, output_id(key, 0))
        entity = {"PartitionKey": partition, "RowKey": row_key, "output_id": output_id(key, 0)}
        return ("upsert", entity, {"mode": UpdateMode.REPLACE})

    done = Outcome(OutcomeStatus.SUCCEEDED, 1)
    accepted = await store.complete_with(
        [Completion(claims[0], done), Completion(claims[1], done)],
        {ours: [upsert(ours)], lost: [upsert(lost)]},
    )
    assert accepted == [True, False]
    rows = store.read([output_address(k, output_id(k, 0)) for k in (ours, lost)])
    assert [row["output_id"] for row in rows.values()] == [output_id(ours, 0)]
    assert [c.status for c in await store.claim([ours, lost], 10)] == [
        ClaimStatus.COMPLETED,
        ClaimStatus.IN_PROGRESS,
    ]


class Intruder(HTTPPolicy):  # type: ignore[type-arg]
    """Before each write, another worker rewrites `row` with a lapsed lease (a new ETag)."""

    def __init__(self, other: TableClient, row: dict[str, Any]) -> None:
        super().__init__()
        self.other, self.row = other, row
        self.writes = 0

    def send(self, request: PipelineRequest) -> PipelineResponse:  # type: ignore[type-arg]
        if request.http_request.method in ("POST", "PUT", "PATCH", "MERGE"):
            self.writes += 1
            self.other.upsert_entity(self.row, mode=UpdateMode.REPLACE)
        return self.next.send(request)


@pytest.mark.anyio
async def test_a_contended_key_gets_the_retry_policys_rounds(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    conn = azurite_server.connection_string
    key = event_key(f"contended-{uuid.uuid4().hex[:8]}", "1")
    partition, row_key = key_address(key)
    lapsed = {
        "PartitionKey": partition,
        "RowKey": row_key,
        "key": key,
        "status": "in_progress",
        "token": "intruder",
        "lease_expires_at": 0.0,
    }
    intruder = Intruder(TableClient.from_connection_string(conn, tables["state"]), lapsed)
    client = TableClient.from_connection_string(
        conn, tables["state"], per_retry_policies=[intruder]
    )
    store = TableIdempotencyStore(client, retry=RetryPolicy(attempts=3, backoff=Backoff(base=0)))
    [claim] = await store.claim([key], 30)
    # The batch's write, then one write per round: every one meets the intruder's.
    assert claim.status is ClaimStatus.IN_PROGRESS and intruder.writes == 1 + 3


# -- property limits: 64 KiB of UTF-16 per string property ----------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "write-then-complete"])
async def test_outputs_of_astral_characters_fit_table_properties(
    azurite_server: Azurite, atomic: bool
) -> None:
    """20,000 emoji are 40,000 UTF-16 units: split by code points they overflow a property."""
    from onceflow.adapters.memory import MemorySink
    from onceflow.event import Event
    from onceflow.pipeline import Pipeline

    class Emoji:
        def process(self, event: Event) -> Any:
            return {"text": "\U0001f600" * 20_000, "n": int(event.id), "mixed": "é" * 40_000}

    conn = azurite_server.connection_string
    clock = ManualClock()
    state, other = (f"{role}{uuid.uuid4().hex[:10]}" for role in ("emoji", "emojiout"))
    store = TableIdempotencyStore(state, connection_string=conn, clock=clock, create=True)
    sink = TableSink(state if atomic else other, connection_string=conn, create=True)
    letters = MemorySink()
    pipe = Pipeline(Emoji(), sink, store, letters, clock=clock)
    source = f"emoji-{uuid.uuid4().hex[:8]}"
    events = [Event(id=str(n), source=source, data=b"{}") for n in range(3)]
    result = await pipe.process_batch(events)
    assert result.failed == [] and letters.values() == []
    stored = await sink.contents()
    for n in range(3):
        value = stored[output_id(event_key(source, str(n)), 0)]
        assert value == {"text": "\U0001f600" * 20_000, "n": n, "mixed": "é" * 40_000}


@pytest.mark.anyio
async def test_an_output_over_an_entity_is_rejected_by_utf16_size(
    azurite_server: Azurite, tables: dict[str, str]
) -> None:
    from onceflow.errors import OutputRejected
    from onceflow.records import Output

    sink = TableSink(tables["other"], connection_string=azurite_server.connection_string)
    key = event_key("emoji", "big")
    # 260,000 emoji: 1 MB of UTF-8 but 1.04 MB of UTF-16, over an entity's 1 MiB.
    big = Output(output_id(key, 0), key, "big", 0, "\U0001f600" * 260_000)
    with pytest.raises(OutputRejected, match="UTF-16"):
        await sink.write([big])
