"""The Functions entry: indexed by azure-functions, invoked with real trigger objects."""

from __future__ import annotations

import json
import typing
from collections import defaultdict
from typing import Any

import anyio
import azure.functions as func
import pytest
from azure.functions.blob import BlobConverter, InputStream
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.queue import QueueMessageInConverter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onceflow.adapters.azure.entry import (
    BatchFailed,
    BlobTrigger,
    EventHubTrigger,
    FunctionHandler,
    QueueTrigger,
    function_app,
)
from onceflow.adapters.azure.testing import (
    HUB,
    NAMESPACE,
    blob_stream,
    event_hub_batch,
    invocation_context,
    queue_message,
)
from onceflow.adapters.memory import Faults, ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.errors import ConfigurationError, PermanentError
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.identity import dead_letter_id, output_id
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy


class Doubler:
    """Doubles `n`; a body without `n` is invalid; `flaky` ns fail `fails` times first."""

    def __init__(self, flaky: dict[int, int] | None = None) -> None:
        self.flaky = dict(flaky or {})
        self.seen: list[tuple[str | None, int]] = []

    def process(self, event: Event) -> dict[str, Any]:
        body = event.json()
        if "n" not in body:
            raise PermanentError("no n in the body")
        n = int(body["n"])
        if self.flaky.get(n, 0) > 0:
            self.flaky[n] -= 1
            raise ConnectionError(f"downstream busy for {n}")
        self.seen.append((event.partition_key, n))
        return {"n": n, "double": 2 * n}


def pipeline(
    processor: Any = None,
    *,
    clock: ManualClock | None = None,
    store: MemoryIdempotencyStore | None = None,
    letters: MemorySink | None = None,
    ordered: bool = False,
) -> Pipeline:
    clock = clock or ManualClock()
    return Pipeline(
        processor or Doubler(),
        MemorySink(),
        store or MemoryIdempotencyStore(clock=clock),
        letters if letters is not None else MemorySink(),
        clock=clock,
        ordered=ordered,
        retry=RetryPolicy(attempts=3),
        lease_seconds=30,
    )


def bodies(*ns: int) -> list[bytes]:
    return [json.dumps({"n": n}).encode() for n in ns]


def only_function(app: func.FunctionApp) -> Any:
    # azure-functions lets an app be indexed once, as the host does.
    [function] = app.get_functions()
    return function


# -- indexing ------------------------------------------------------------------------------


def test_event_hub_function_binding_and_retry_policy() -> None:
    app = function_app(pipeline(), EventHubTrigger("orders", connection="HubConn"), name="orders")
    function = only_function(app)
    assert function.get_function_name() == "orders"
    [binding] = json.loads(function.get_function_json())["bindings"]
    assert binding == {
        "direction": "IN",
        "dataType": "BINARY",
        "type": "eventHubTrigger",
        "name": "events",
        "connection": "HubConn",
        "eventHubName": "orders",
        "cardinality": "MANY",
        "consumerGroup": "$Default",
    }
    retry = function.get_settings_dict("retry_policy")
    assert retry["strategy"] == "exponential_backoff" and retry["max_retry_count"] == "5"


def test_blob_and_queue_function_bindings() -> None:
    blob = only_function(function_app(pipeline(), BlobTrigger("incoming/{name}")))
    [binding] = json.loads(blob.get_function_json())["bindings"]
    assert binding["type"] == "blobTrigger" and binding["path"] == "incoming/{name}"
    assert blob.get_settings_dict("retry_policy") is None  # the host retries blobs itself
    queue = only_function(function_app(pipeline(), QueueTrigger("orders", connection="Q")))
    [binding] = json.loads(queue.get_function_json())["bindings"]
    assert binding == {
        "direction": "IN",
        "type": "queueTrigger",
        "name": "message",
        "queueName": "orders",
        "connection": "Q",
    }


def test_two_functions_in_one_app() -> None:
    app = function_app(pipeline(), QueueTrigger("a"), name="a")
    function_app(pipeline(), QueueTrigger("b"), name="b", app=app)
    assert sorted(str(f.get_function_name()) for f in app.get_functions()) == ["a", "b"]


def test_event_hubs_needs_a_dead_letter_sink() -> None:
    clock = ManualClock()
    bare = Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(clock=clock), clock=clock)
    with pytest.raises(ConfigurationError, match="dead-letter sink"):
        function_app(bare, EventHubTrigger("orders"))


# -- Event Hubs ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_event_hub_batch_is_processed_once_across_redelivery() -> None:
    pipe = pipeline()
    app = function_app(pipe, EventHubTrigger("orders"))
    run = only_function(app).get_user_function()
    batch = event_hub_batch(bodies(1, 2, 3), partition="3", first_sequence=500)
    await run(batch)
    await run(event_hub_batch(bodies(1, 2, 3), partition="3", first_sequence=500))
    sink = pipe.sink
    assert isinstance(sink, MemorySink)
    assert sink.contents() == {
        f"{NAMESPACE}/{HUB}/3#{500 + i}#0": {"n": n, "double": 2 * n}
        for i, n in enumerate((1, 2, 3))
    }
    assert set(sink.write_counts().values()) == {1}


@pytest.mark.anyio
async def test_event_hub_decoding_keeps_metadata() -> None:
    seen: list[Event] = []
    handler = FunctionHandler(pipeline(seen.append), EventHubTrigger("orders"))
    batch = event_hub_batch(
        bodies(7), partition="1", partition_keys=["user-9"], properties=[{"kind": "order"}]
    )
    await handler.event_hub(batch)
    [event] = seen
    assert event.source == f"{NAMESPACE}/{HUB}/1" and event.id == "100"
    assert event.partition_key == "user-9" and event.sequence == "100"
    assert event.attributes["kind"] == "order"
    assert event.attributes["eventhub.offset"] == "409600"
    assert event.time.year == 2026


@pytest.mark.anyio
async def test_bad_bodies_are_dead_lettered_naming_hub_partition_and_sequence() -> None:
    letters = MemorySink()
    pipe = pipeline(letters=letters)
    handler = FunctionHandler(pipe, EventHubTrigger("orders"))
    result = await handler.event_hub(
        event_hub_batch([b"not json", b'{"x":1}', *bodies(4)], partition="2")
    )
    assert result.processed == ["102"] and sorted(result.dead_lettered) == ["100", "101"]
    messages = [letter["message"] for letter in letters.values()]
    assert any("100" in m and "JSON" in m for m in messages)
    assert all(f"{NAMESPACE}/{HUB}/2" in m and "sequence 10" in m for m in messages)


@pytest.mark.anyio
async def test_key_field_names_the_idempotency_key() -> None:
    letters = MemorySink()
    pipe = pipeline(letters=letters)
    handler = FunctionHandler(pipe, EventHubTrigger("orders", key_field="order_id"))
    first = [json.dumps({"order_id": "A-1", "n": 1}).encode(), b'{"n": 2}']
    await handler.event_hub(event_hub_batch(first, partition="0"))
    # The same order arrives again through another partition: a duplicate by its key.
    again = await handler.event_hub(event_hub_batch(first[:1], partition="5", first_sequence=9))
    assert again.duplicates == ["A-1"]
    sink = pipe.sink
    assert isinstance(sink, MemorySink)
    assert list(sink.contents()) == [f"{NAMESPACE}/{HUB}#A-1#0"]
    [letter] = letters.values()
    assert "partition 0 sequence number 101" in letter["message"]
    assert "order_id" in letter["message"]


@pytest.mark.anyio
async def test_transient_failures_are_retried_in_process() -> None:
    processor = Doubler(flaky={2: 4})  # more failures than the pipeline's 3 attempts
    pipe = pipeline(processor)
    result = await FunctionHandler(pipe, EventHubTrigger("orders")).event_hub(
        event_hub_batch(bodies(1, 2, 3))
    )
    # 2 outlives the pipeline's 3 attempts: an outage, not a poison pill, so it is run
    # again in-process (Pipeline.redeliver) and succeeds on its fourth call.
    assert sorted(result.processed) == ["100", "101", "102"] and result.dead_lettered == []


@pytest.mark.anyio
async def test_held_leases_are_waited_for_and_never_dead_lettered() -> None:
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    letters = MemorySink()
    pipe = pipeline(clock=clock, store=store, letters=letters)
    # Per-key leases: partitions are lanes now, whose takeover has its own tests.
    pipe.watermarks = False
    batch = event_hub_batch(bodies(1, 2))
    # Another instance holds event 101 far longer than the retry budget.
    await store.handle().claim([f"{NAMESPACE}/{HUB}/0#101"], 3600)
    handler = FunctionHandler(pipe, EventHubTrigger("orders", retry_seconds=20))
    with pytest.raises(BatchFailed, match="lease"):  # the retry policy runs it again
        await handler.event_hub(batch, invocation_context(retry_count=0))
    assert letters.values() == []
    # The policy's last retry holds the batch past the pipeline's lease time, then raises
    # rather than write a letter for an event a live worker holds.
    with pytest.raises(BatchFailed, match="another worker holds"):
        await handler.event_hub(batch, invocation_context(retry_count=5))
    assert letters.values() == []
    assert clock.slept and sum(clock.slept) >= pipe.lease_seconds


@pytest.mark.anyio
async def test_store_outage_shorter_than_the_budget_loses_nothing() -> None:
    clock = ManualClock()
    faults = Faults()
    store = MemoryIdempotencyStore(clock=clock, faults=faults)
    pipe = pipeline(clock=clock, store=store)
    faults.fail("store.claim", times=6)
    result = await FunctionHandler(pipe, EventHubTrigger("orders")).event_hub(
        event_hub_batch(bodies(1, 2))
    )
    assert sorted(result.processed) == ["100", "101"]


@pytest.mark.anyio
async def test_failed_dead_letter_write_raises_for_the_host_retry() -> None:
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    letter_faults = Faults()
    letters = MemorySink(faults=letter_faults)
    processor = Doubler(flaky={2: 10**6})  # event 101's downstream is down
    pipe = pipeline(processor, clock=clock, store=store, letters=letters)
    letter_faults.fail("sink.write", times=1000)
    run = only_function(function_app(pipe, EventHubTrigger("orders", retry_seconds=5)))
    last = invocation_context(retry_count=5, max_retry_count=5)
    with pytest.raises(BatchFailed, match="dead-lettered"):
        await run.get_user_function()(event_hub_batch(bodies(1, 2)), last)
    # The host's retry policy runs the batch again later: idempotency absorbs the repeat.
    letter_faults.clear()
    processor.flaky.clear()
    clock.advance(60)
    await run.get_user_function()(event_hub_batch(bodies(1, 2)))
    sink = pipe.sink
    assert isinstance(sink, MemorySink)
    assert sorted(sink.contents()) == [f"{NAMESPACE}/{HUB}/0#{s}#0" for s in (100, 101)]
    assert set(sink.write_counts().values()) == {1}


@pytest.mark.anyio
async def test_ordered_mode_holds_per_partition_key() -> None:
    processor = Doubler(flaky={1: 1})
    pipe = pipeline(processor, ordered=True)
    keys = ["a", "b", "a", "b", "a"]
    await FunctionHandler(pipe, EventHubTrigger("orders")).event_hub(
        event_hub_batch(bodies(0, 1, 2, 3, 4), partition_keys=keys)
    )
    lanes: defaultdict[str | None, list[int]] = defaultdict(list)
    for lane, n in processor.seen:
        lanes[lane].append(n)
    assert lanes == {"a": [0, 2, 4], "b": [1, 3]}


batches = st.lists(
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["ok", "bad", "flaky", "stuck"])),
        min_size=1,
        max_size=12,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=batches,
    store_outage=st.integers(0, 8),
    sink_outage=st.integers(0, 8),
    redeliver=st.booleans(),
)
def test_every_event_of_every_batch_ends_in_the_sink_or_the_dead_letter_sink(
    plan: list[list[tuple[int, str]]], store_outage: int, sink_outage: int, redeliver: bool
) -> None:
    """The Event Hubs guarantee: after the function returns, no event is unaccounted for."""

    clock = ManualClock()
    store_faults, sink_faults = Faults(), Faults()
    store = MemoryIdempotencyStore(clock=clock, faults=store_faults)
    sink = MemorySink(faults=sink_faults, atomic=False)
    letters = MemorySink()
    processor = Doubler(flaky={})
    pipe = Pipeline(
        processor,
        sink,
        store,
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=3),
        lease_seconds=30,
    )
    handler = FunctionHandler(pipe, EventHubTrigger("orders", retry_seconds=30))
    last = invocation_context(retry_count=5, max_retry_count=5)  # the policy's last retry
    other = store.handle()

    async def main() -> None:
        sequence = 0
        for number, batch in enumerate(plan):
            store_faults.fail("store.claim", times=store_outage)
            sink_faults.fail("sink.write", times=sink_outage)
            raw: list[bytes] = []
            keys: list[str] = []
            for n, kind in batch:
                key = f"{NAMESPACE}/{HUB}/0#{sequence + len(raw)}"
                if kind == "bad":
                    raw.append(b'{"m": 1}')
                else:
                    raw.append(json.dumps({"n": n}).encode())
                if kind == "flaky":
                    processor.flaky[n] = 2
                if kind == "stuck":
                    await other.claim([key], 30)  # a worker that died holding the lease
                keys.append(key)
            events = event_hub_batch(raw, first_sequence=sequence)
            await handler.event_hub(events, last)
            if redeliver and number % 2:
                await handler.event_hub(event_hub_batch(raw, first_sequence=sequence), last)
            # Doubler always has one output; a dead letter has its own id.
            outputs, dead = sink.contents(), letters.contents()
            missing = [
                k for k in keys if output_id(k, 0) not in outputs and dead_letter_id(k) not in dead
            ]
            assert not missing, missing
            sequence += len(raw)

    anyio.run(main)


# -- Blob and Queue ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_blob_trigger_processes_a_blob_once() -> None:
    pipe = pipeline()
    run = only_function(function_app(pipe, BlobTrigger("in/{name}"))).get_user_function()
    await run(blob_stream("in/orders/1.json", b'{"n": 21}'))
    await run(blob_stream("in/orders/1.json", b'{"n": 21}'))
    sink = pipe.sink
    assert isinstance(sink, MemorySink)
    assert sink.contents() == {"shop/in#orders/1.json@0x8DC#0": {"n": 21, "double": 42}}
    assert sink.write_counts() == {"shop/in#orders/1.json@0x8DC#0": 1}


@pytest.mark.anyio
async def test_truncated_blob_is_dead_lettered_by_name() -> None:
    letters = MemorySink()
    pipe = pipeline(letters=letters)
    handler = FunctionHandler(pipe, BlobTrigger("in/{name}"))
    result = await handler.blob(blob_stream("in/big.json", b'{"n": 1}', length=999))
    assert result.dead_lettered
    [letter] = letters.values()
    assert "blob in/big.json" in letter["message"] and "999 bytes" in letter["message"]


@pytest.mark.anyio
async def test_blob_that_must_come_again_raises() -> None:
    clock = ManualClock()
    store = MemoryIdempotencyStore(clock=clock)
    pipe = pipeline(clock=clock, store=store)
    await store.handle().claim(["shop/in#x.json@0x8DC"], 60)
    with pytest.raises(BatchFailed, match="lease"):
        await FunctionHandler(pipe, BlobTrigger("in/{name}")).blob(
            blob_stream("in/x.json", b'{"n": 1}')
        )


@pytest.mark.anyio
async def test_a_dead_lettered_blob_does_not_raise() -> None:
    letters = MemorySink()
    result = await FunctionHandler(pipeline(letters=letters), BlobTrigger("in/{name}")).blob(
        blob_stream("in/x.json", b'{"no": "n"}')
    )
    assert result.dead_lettered == ["x.json@0x8DC"]
    assert result.failures["x.json@0x8DC"].kind is FailureKind.PERMANENT_ERROR


@pytest.mark.anyio
async def test_queue_trigger_is_idempotent_by_message_id() -> None:
    letters = MemorySink()
    pipe = pipeline(letters=letters)
    run = only_function(function_app(pipe, QueueTrigger("orders"))).get_user_function()
    await run(queue_message("m-1", b'{"n": 5}'))
    await run(queue_message("m-1", b'{"n": 5}', dequeue_count=2))
    await run(queue_message("m-2", b"{broken"))
    sink = pipe.sink
    assert isinstance(sink, MemorySink)
    assert sink.contents() == {"queue/orders#m-1#0": {"n": 5, "double": 10}}
    [letter] = letters.values()
    assert letter["event"]["id"] == "m-2"


@pytest.mark.anyio
async def test_queue_message_that_keeps_failing_raises_for_redelivery() -> None:
    clock = ManualClock()
    faults = Faults()
    pipe = pipeline(clock=clock, store=MemoryIdempotencyStore(clock=clock, faults=faults))
    faults.fail("store.claim", times=100)
    with pytest.raises(BatchFailed, match="queue/orders#m-9"):
        await FunctionHandler(pipe, QueueTrigger("orders")).queue(queue_message("m-9", b"{}"))


@pytest.mark.anyio
async def test_pipeline_factory_is_built_on_first_invocation() -> None:
    built: list[Pipeline] = []

    def factory() -> Pipeline:
        built.append(pipeline())
        return built[-1]

    run = only_function(function_app(factory, QueueTrigger("q"))).get_user_function()
    assert built == []
    await run(queue_message("a", b'{"n": 1}'))
    await run(queue_message("b", b'{"n": 2}'))
    assert len(built) == 1


class BrokenStream(InputStream):
    """A blob stream whose read fails, as when the blob vanished under the trigger."""

    def read(self, size: int | None = -1) -> bytes:
        raise OSError("the blob was deleted before it could be read")


@pytest.mark.anyio
async def test_unreadable_blob_is_dead_lettered_naming_it() -> None:
    letters = MemorySink()
    pipe = pipeline(letters=letters)
    stream = BrokenStream(
        data=b"", name="in/gone.json", uri="https://shop.blob.core.windows.net/in/gone.json"
    )
    result = await FunctionHandler(pipe, BlobTrigger("in/{name}")).blob(stream)
    assert result.dead_lettered == ["gone.json"]
    [letter] = letters.values()
    assert "blob in/gone.json" in letter["message"] and "deleted" in letter["message"]


@pytest.mark.parametrize(
    ("trigger", "converter"),
    [
        (EventHubTrigger("orders"), EventHubTriggerConverter),
        (BlobTrigger("in/{name}"), BlobConverter),
        (QueueTrigger("orders"), QueueMessageInConverter),
    ],
)
def test_the_worker_accepts_the_functions_annotations(trigger: Any, converter: Any) -> None:
    """The Python worker checks each binding's annotation against its converter at load."""
    function = only_function(function_app(pipeline(), trigger)).get_user_function()
    hints = typing.get_type_hints(function)
    [name] = [n for n in hints if n not in ("return", "context")]
    assert converter.check_input_type_annotation(hints[name])
    # The worker passes the invocation context (its retry context) to a parameter named
    # `context` annotated exactly azure.functions.Context.
    assert hints.get("context", func.Context) is func.Context
