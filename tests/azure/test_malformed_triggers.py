"""Malformed Azure trigger objects: each bad record is dead-lettered by name, the rest runs.

The Event Hubs, Blob and Queue objects are built by azure-functions' own converters
from (mutated) trigger metadata, as the Python worker builds them, or constructed
directly with mistyped fields where the converter would not produce them; whatever
the worker hands over, the function settles every record and raises nothing. The
lone-surrogate case runs through the real Table store and sink on Azurite, whose keys
must hold only valid Unicode. What the converters refuse never reaches a function
(the worker fails that invocation itself) and is not exercised.
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
from azure.data.tables import TableServiceClient
from azure.functions.blob import BlobConverter, InputStream
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum
from azure.functions.queue import QueueMessage as WorkerQueueMessage
from azure.functions.queue import QueueMessageInConverter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from onceflow.adapters.azure import TableIdempotencyStore, TableSink
from onceflow.adapters.azure.decode import decode_event_hub
from onceflow.adapters.azure.entry import (
    BlobTrigger,
    EventHubTrigger,
    FunctionHandler,
    QueueTrigger,
    function_app,
)
from onceflow.adapters.azure.testing import (
    HUB,
    NAMESPACE,
    event_hub_batch,
    invocation_context,
)
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.pipeline import BatchResult, Pipeline
from onceflow.records import InvalidRecord
from onceflow.watermarks import LANE_ATTRIBUTE, lane_of, position_of
from tests.support.servers import Azurite

SECRET = "SECRET-7f3a"  # a payload value that must never reach a reason

# The trigger classes, called with fields of any type (their annotations say what the
# converters pass; these are what a malformed delivery might hold).
worker_message: Any = WorkerQueueMessage
loose_event: Any = func.EventHubEvent
loose_stream: Any = InputStream


class Measure:
    """Never fails: only what cannot be decoded is dead-lettered."""

    def process(self, event: Event) -> dict[str, Any]:
        return {"bytes": len(event.data)}


def pipeline(letters: MemorySink, *, atomic: bool = True) -> Pipeline:
    """A memory pipeline; `atomic=False` writes then completes, so lanes settle events."""
    clock = ManualClock()
    return Pipeline(
        Measure(),
        MemorySink(atomic=atomic),
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
    )


def valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_settled(result: BatchResult, letters: MemorySink, ids: int) -> None:
    """Every record settled, every letter named and free of payload values and bad text."""
    assert result.failed == []
    assert len(result.processed) + len(result.duplicates) + len(result.dead_lettered) == ids
    for event_id in result.dead_lettered:
        failure = result.failures[event_id]
        assert failure.kind is FailureKind.INVALID_RECORD
        assert SECRET not in failure.text and valid_text(failure.text)
    for letter in letters.values():
        assert SECRET not in letter["message"]
        assert valid_text(json.dumps(letter, ensure_ascii=False, default=str))


# -- item 6 of issue 17: one event with a lone surrogate in its business key -----------------


@pytest.mark.emulator
@pytest.mark.anyio
async def test_a_lone_surrogate_key_dead_letters_that_event_only(azurite_server: Azurite) -> None:
    conn = azurite_server.connection_string
    name = f"surrogate{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(conn).create_table(name)
    clock = ManualClock()
    sink, letters = TableSink(name, connection_string=conn), MemorySink()
    store = TableIdempotencyStore(name, connection_string=conn, clock=clock)
    pipe = Pipeline(Measure(), sink, store, letters, clock=clock)
    bodies = [json.dumps({"order_id": f"o-{n}"}).encode() for n in range(5)]
    bodies[2] = b'{"order_id": "\\ud83d broken emoji"}'  # what JavaScript writes for half an emoji
    [function] = function_app(pipe, EventHubTrigger("orders", key_field="order_id")).get_functions()
    await function.get_user_function()(event_hub_batch(bodies), invocation_context(0, 5))
    assert sorted(await sink.contents()) == sorted(
        f"{NAMESPACE}/{HUB}#o-{n}#0" for n in (0, 1, 3, 4)
    )
    [letter] = letters.values()
    assert letter["event"]["id"] == "102"
    assert "partition 0 sequence number 102" in letter["message"]
    assert "order_id" in letter["message"] and "lone surrogate" in letter["message"]


# -- hypothesis: malformed trigger objects ------------------------------------------------------

text = st.text(st.characters(codec=None), max_size=12) | st.sampled_from(["\ud800", "a\udfffb"])
scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text
json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
nested = st.integers(1, 5_000).map(lambda depth: b"[" * depth + b"]" * depth)
bodies = st.one_of(
    st.binary(max_size=64),  # invalid UTF-8 among them
    st.sampled_from([b"", b"\xff\xfe", b"\x00" * 10, b"[" * 100_000, b"A" * 300_000]),
    nested,
    st.builds(
        lambda value: json.dumps({"order_id": value, "pii": SECRET}).encode(),
        json_value | st.just("o-1"),
    ),
    st.builds(
        lambda value: ('{"order_id": "%s", "pii": "%s"}' % (value, SECRET)).encode(  # noqa: UP031
            "utf-8", "surrogatepass"
        ),
        text,
    ),
)


@st.composite
def system_properties(draw: st.DrawFn, index: int) -> dict[str, Any]:
    props: dict[str, Any] = {
        "SequenceNumber": 100 + index,
        "Offset": str(4096 * index),
        "PartitionKey": None,
        "EnqueuedTimeUtc": "2026-01-01T00:00:00+00:00",
    }
    for field in draw(st.sets(st.sampled_from(sorted(props)), max_size=4)):
        if draw(st.booleans()):
            del props[field]
        else:
            props[field] = draw(json_value)
    return props


@st.composite
def event_hub_batches(draw: st.DrawFn) -> list[func.EventHubEvent]:
    raw = draw(st.lists(bodies, min_size=1, max_size=6))
    system = [draw(system_properties(i)) for i in range(len(raw))]
    properties: Any = draw(
        st.just([{"pii": SECRET}] * len(raw))
        | st.lists(st.dictionaries(text, json_value, max_size=2) | json_value, max_size=6)
        | json_value
    )
    context: Any = {
        "FullyQualifiedNamespace": NAMESPACE,
        "EventHubName": HUB,
        "ConsumerGroup": "$Default",
        "PartitionId": "0",
    }
    for field in draw(st.sets(st.sampled_from(sorted(context)), max_size=4)):
        context[field] = draw(json_value)
    metadata = {
        "SystemPropertiesArray": Datum(json.dumps(system), "json"),
        "PropertiesArray": Datum(json.dumps(properties), "json"),
        "PartitionContext": draw(
            st.just(Datum(json.dumps(context), "json"))
            | st.just(Datum("{not json", "json"))
            | st.builds(lambda v: Datum(json.dumps(v), "json"), json_value)
        ),
    }
    try:
        events = EventHubTriggerConverter.decode(
            Datum(SimpleNamespace(bytes=raw), "collection_bytes"), trigger_metadata=metadata
        )
    except Exception:
        assume(False)  # the worker refuses it: no function call
    assert isinstance(events, list)
    if draw(st.booleans()):  # fields the converter would type, mistyped anyway
        events.append(
            loose_event(
                body=draw(st.none() | st.binary(max_size=8)),
                sequence_number=draw(json_value),
                partition_key=draw(json_value),
                offset=draw(json_value),
                enqueued_time=draw(json_value),
                trigger_metadata=metadata,
            )
        )
    return events


FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(
    events=event_hub_batches(),
    key_field=st.sampled_from([None, "order_id"]),
    atomic=st.booleans(),
)
@pytest.mark.anyio
async def test_malformed_event_hub_batches_settle_every_event(
    events: list[func.EventHubEvent], key_field: str | None, atomic: bool
) -> None:
    for record in decode_event_hub(events, event_hub_name=HUB, key_field=key_field):
        check_lane(record, key_field)
    letters = MemorySink()
    handler = FunctionHandler(
        pipeline(letters, atomic=atomic), EventHubTrigger("orders", key_field=key_field)
    )
    result = await handler.event_hub(events, invocation_context(0, 5))
    check_settled(result, letters, len(events))


def check_lane(record: Event | InvalidRecord, key_field: str | None) -> None:
    """An event is on its partition's lane, at its sequence number, only without a key
    field and when the trigger names the partition; an invalid record never."""
    lane = record.attributes.get(LANE_ATTRIBUTE)
    if lane is None:
        return
    assert isinstance(record, Event) and key_field is None
    assert lane == record.attributes["eventhub.partition"]
    assert record.source.endswith(f"/{lane}") and lane_of(record) is not None
    assert position_of(record) == int(record.attributes["eventhub.sequence_number"])


@st.composite
def blob_streams(draw: st.DrawFn) -> func.InputStream:
    data = draw(bodies)
    fields: dict[str, Any] = {
        "BlobTrigger": "in/orders/1.json",
        "Uri": "https://shop.blob.core.windows.net/in/orders/1.json",
        "Properties": {"Length": len(data), "ETag": '"0x8DC"'},
        "Metadata": {"pii": SECRET},
    }
    for field in draw(st.sets(st.sampled_from(sorted(fields)), max_size=4)):
        fields[field] = draw(json_value)
    if draw(st.booleans()):
        stream: func.InputStream = loose_stream(
            data=data,
            name=fields["BlobTrigger"],
            uri=fields["Uri"],
            length=draw(json_value),
            blob_properties=fields["Properties"],
            metadata=fields["Metadata"],
        )
        return stream
    metadata = {
        k: Datum(v, "string") if isinstance(v, str) else Datum(json.dumps(v), "json")
        for k, v in fields.items()
    }
    try:
        decoded = BlobConverter.decode(Datum(data, "bytes"), trigger_metadata=metadata)
    except Exception:
        assume(False)
    assert isinstance(decoded, func.InputStream)
    return decoded


@FUZZ
@given(stream=blob_streams())
@pytest.mark.anyio
async def test_malformed_blob_triggers_settle_the_blob(stream: func.InputStream) -> None:
    letters = MemorySink()
    result = await FunctionHandler(pipeline(letters), BlobTrigger("in/{name}")).blob(stream)
    check_settled(result, letters, 1)


@st.composite
def queue_messages(draw: st.DrawFn) -> func.QueueMessage:
    fields: dict[str, Any] = {
        "Id": "m-1",
        "DequeueCount": 1,
        "InsertionTime": "2026-01-01T00:00:00+00:00",
        "PopReceipt": "receipt",
    }
    for field in draw(st.sets(st.sampled_from(sorted(fields)), max_size=4)):
        fields[field] = draw(json_value)
    if draw(st.booleans()):  # fields the converter would type, mistyped anyway
        message: func.QueueMessage = worker_message(
            id=fields["Id"],
            body=draw(st.none() | bodies),
            dequeue_count=fields["DequeueCount"],
            insertion_time=fields["InsertionTime"],
            pop_receipt=fields["PopReceipt"],
        )
        return message
    metadata = {
        k: Datum(v, "string")
        if isinstance(v, str)
        else Datum(v, "int")
        if isinstance(v, int) and not isinstance(v, bool)
        else Datum(json.dumps(v), "json")
        for k, v in fields.items()
    }
    try:
        message = QueueMessageInConverter.decode(
            Datum(draw(bodies), "bytes"), trigger_metadata=metadata
        )
    except Exception:
        assume(False)
    assert isinstance(message, func.QueueMessage)
    return message


@FUZZ
@given(message=queue_messages())
@pytest.mark.anyio
async def test_malformed_queue_messages_settle_the_message(message: func.QueueMessage) -> None:
    letters = MemorySink()
    handler = FunctionHandler(pipeline(letters), QueueTrigger("orders"))
    result = await handler.queue(message)
    check_settled(result, letters, 1)


@pytest.mark.anyio
async def test_lone_surrogates_in_properties_and_partition_keys_are_escaped_not_fatal() -> None:
    letters = MemorySink()
    pipe = pipeline(letters)
    events = event_hub_batch(
        [b'{"n": 1}', b'{"n": 2}'],
        partition_keys=["a\ud800", "b"],
        properties=[{"note": "x\udfff"}, {"k\ud800": 1}],
    )
    result = await FunctionHandler(pipe, EventHubTrigger("orders")).event_hub(events)
    assert sorted(result.processed) == ["100", "101"] and letters.values() == []
    from onceflow.adapters.azure.decode import decode_event_hub

    first, second = decode_event_hub(events, event_hub_name="orders")
    assert isinstance(first, Event) and isinstance(second, Event)
    assert first.partition_key == "a\\ud800" and first.attributes["note"] == "x\\udfff"
    assert "k\\ud800" in second.attributes
