"""Outages through the Functions Event Hubs app: held in-process, raised for the retry
policy, dead-lettered as undelivered only on its last retry; nothing is lost.

A simulated host invokes the function with each partition's batches in turn, with the
retry context the Python worker passes; when the function raises it waits the policy's
exponential interval and invokes it again with the same events, and moves the
checkpoint on only when the function returns. The downstream goes down for 60 seconds
(a manual clock) once half the events have been processed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from onceflow.adapters.azure import TableIdempotencyStore, TableSink
from onceflow.adapters.azure.entry import BatchFailed, EventHubTrigger, function_app
from onceflow.adapters.azure.testing import HUB, NAMESPACE, event_hub_batch, invocation_context
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.failures import FailureKind
from onceflow.identity import dead_letter_id
from onceflow.interfaces import IdempotencyStore, Sink
from onceflow.pipeline import Pipeline
from onceflow.retry import RetryPolicy
from tests.support.servers import Azurite

OUTAGE = 60.0
MAX_RETRIES = 5


class Downstream:
    """A database the processor writes through: down for `OUTAGE` seconds from call `down_at`.

    Events named in `poison` fail with a transient-looking error every time.
    """

    def __init__(self, clock: ManualClock, down_at: int, poison: set[str] | None = None) -> None:
        self.clock = clock
        self.down_at = down_at
        self.down_from: float | None = None
        self.poison = poison or set()
        self.calls = self.calls_while_down = 0
        self.applied: defaultdict[str | None, list[int]] = defaultdict(list)

    def down(self) -> bool:
        now = self.clock.now()
        if self.down_from is None and self.calls >= self.down_at:
            self.down_from = now
        return self.down_from is not None and now < self.down_from + OUTAGE

    def process(self, event: Event) -> dict[str, Any]:
        self.calls += 1
        if self.down():
            self.calls_while_down += 1
            raise ConnectionError("database is unreachable")
        if f"{event.partition_key}#{event.sequence}" in self.poison:
            raise ValueError("this order breaks the downstream's parser")
        self.applied[event.partition_key].append(int(event.json()["n"]))
        return {"n": event.json()["n"]}


Run = Callable[..., Awaitable[None]]


async def host(
    run: Run, clock: ManualClock, *, partitions: int, per_partition: int, batch: int
) -> dict[str, int]:
    """Deliver every partition's events batch by batch, as the Functions host does."""
    seen = {"invocations": 0, "raised": 0}
    for start in range(0, per_partition, batch):
        for p in range(partitions):
            count = min(batch, per_partition - start)
            bodies = [
                json.dumps({"n": p * per_partition + start + i}).encode() for i in range(count)
            ]
            for retry in range(MAX_RETRIES + 1):
                events = event_hub_batch(
                    bodies, partition=str(p), first_sequence=start, partition_keys=[f"p{p}"] * count
                )
                seen["invocations"] += 1
                try:
                    await run(events, invocation_context(retry, MAX_RETRIES))
                    break
                except BatchFailed:
                    seen["raised"] += 1
                    clock.advance(min(5.0 * 2**retry, 300.0))  # the policy's interval
            else:
                raise AssertionError("the last retry raised: the checkpoint would move on")
            clock.advance(0.05)
    return seen


def expected(partitions: int, per_partition: int) -> dict[str | None, list[int]]:
    return {
        f"p{p}": [p * per_partition + i for i in range(per_partition)] for p in range(partitions)
    }


def outage_pipeline(
    downstream: Downstream, sink: Sink, store: IdempotencyStore, letters: Sink, clock: ManualClock
) -> Pipeline:
    return Pipeline(
        downstream, sink, store, letters, clock=clock, ordered=True, retry=RetryPolicy(attempts=3)
    )


@pytest.mark.anyio
async def test_a_60_second_outage_in_10000_events_loses_and_dead_letters_nothing() -> None:
    clock = ManualClock()
    downstream = Downstream(clock, down_at=5_000)
    sink, letters = MemorySink(), MemorySink()
    pipe = outage_pipeline(downstream, sink, MemoryIdempotencyStore(clock=clock), letters, clock)
    [function] = function_app(pipe, EventHubTrigger("orders")).get_functions()
    seen = await host(
        function.get_user_function(), clock, partitions=4, per_partition=2_500, batch=100
    )
    assert downstream.down_from is not None and clock.now() > downstream.down_from + OUTAGE
    assert letters.values() == []
    assert dict(downstream.applied) == expected(4, 2_500)  # each effect once, in order
    assert len(sink.contents()) == 10_000 and set(sink.write_counts().values()) == {1}
    assert seen["raised"] >= 1  # the outage outlived an invocation's hold
    # Held in-process, the outage costs a probe per cool-down, not a call per event.
    assert downstream.calls_while_down < 40


@pytest.mark.anyio
async def test_a_poison_pill_inside_the_outage_is_dead_lettered_once_after_max_deliveries() -> None:
    clock = ManualClock()
    downstream = Downstream(clock, down_at=1_000, poison={"p1#260"})
    sink, letters = MemorySink(), MemorySink()
    pipe = outage_pipeline(downstream, sink, MemoryIdempotencyStore(clock=clock), letters, clock)
    [function] = function_app(pipe, EventHubTrigger("orders")).get_functions()
    await host(function.get_user_function(), clock, partitions=4, per_partition=500, batch=100)
    pill = f"{NAMESPACE}/{HUB}/1#260"
    [letter] = letters.values()
    assert letter["event"]["id"] == "260" and dead_letter_id(pill) in letters.contents()
    assert "failed 5 deliveries" in letter["message"]
    want = expected(4, 500)
    want["p1"].remove(1 * 500 + 260)
    assert dict(downstream.applied) == want
    assert set(sink.write_counts().values()) == {1}


@pytest.mark.emulator
@pytest.mark.anyio
async def test_an_outage_through_an_azurite_table_store(azurite_server: Azurite) -> None:
    conn = azurite_server.connection_string
    table = f"outage{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(conn).create_table(table)
    clock = ManualClock()
    downstream = Downstream(clock, down_at=500)
    store = TableIdempotencyStore(table, connection_string=conn, clock=clock)
    sink, letters = TableSink(table, connection_string=conn), MemorySink()
    pipe = outage_pipeline(downstream, sink, store, letters, clock)
    [function] = function_app(pipe, EventHubTrigger("orders")).get_functions()
    # 1,000 events in `make test`, 10,000 in `make soak` (ONCEFLOW_OUTAGE_EVENTS).
    per_partition = int(os.environ.get("ONCEFLOW_OUTAGE_EVENTS", "1000")) // 2
    seen = await host(
        function.get_user_function(), clock, partitions=2, per_partition=per_partition, batch=50
    )
    assert downstream.down_from is not None and seen["raised"] >= 1
    assert letters.values() == []
    assert dict(downstream.applied) == expected(2, per_partition)
    assert len(await sink.contents()) == 2 * per_partition


# -- the re-invocation semantics -------------------------------------------------------------


def down_pipeline(clock: ManualClock, letters: MemorySink) -> tuple[Pipeline, Downstream]:
    downstream = Downstream(clock, down_at=0)
    downstream.down = lambda: True  # type: ignore[method-assign]
    store = MemoryIdempotencyStore(clock=clock)
    return Pipeline(downstream, MemorySink(), store, letters, clock=clock), downstream


def bodies(count: int) -> list[bytes]:
    return [json.dumps({"n": n}).encode() for n in range(count)]


@pytest.mark.anyio
async def test_the_function_raises_until_the_last_retry_then_dead_letters_undelivered() -> None:
    clock, letters = ManualClock(), MemorySink()
    pipe, downstream = down_pipeline(clock, letters)
    trigger = EventHubTrigger("orders", retry_seconds=60, max_retry_count=3)
    [function] = function_app(pipe, trigger).get_functions()
    run = function.get_user_function()
    for retry in range(3):
        started = clock.now()
        with pytest.raises(BatchFailed, match="retry policy runs the batch again"):
            await run(event_hub_batch(bodies(30)), invocation_context(retry, 3))
        assert clock.now() - started == pytest.approx(60)  # held for retry_seconds
        assert letters.values() == []
    await run(event_hub_batch(bodies(30)), invocation_context(3, 3))
    assert len(letters.values()) == 30
    assert {letter["error_type"] for letter in letters.values()} == {"Undelivered"}
    assert all("last retry" in letter["message"] for letter in letters.values())
    assert all("unreachable" in letter["message"] for letter in letters.values())
    # The open circuit let one probe per cool-down through, not 30 events' attempts.
    assert downstream.calls_while_down < 4 * 3 * 12


@pytest.mark.anyio
async def test_the_last_retry_result_names_undelivered_failures() -> None:
    clock, letters = ManualClock(), MemorySink()
    pipe, _ = down_pipeline(clock, letters)
    handler_app = function_app(pipe, EventHubTrigger("orders", retry_seconds=5))
    [function] = handler_app.get_functions()
    await function.get_user_function()(event_hub_batch(bodies(2)), invocation_context(7, 5))
    assert [letter["event"]["id"] for letter in letters.values()] == ["100", "101"]


@pytest.mark.anyio
async def test_without_a_retry_context_the_worker_counts_invocations_of_the_batch() -> None:
    from onceflow.adapters.azure.entry import FunctionHandler

    clock, letters = ManualClock(), MemorySink()
    pipe, _ = down_pipeline(clock, letters)
    handler = FunctionHandler(pipe, EventHubTrigger("orders", retry_seconds=5, max_retry_count=2))
    for _ in range(2):
        with pytest.raises(BatchFailed):
            await handler.event_hub(event_hub_batch(bodies(3)))
    result = await handler.event_hub(event_hub_batch(bodies(3)))
    assert sorted(result.dead_lettered) == ["100", "101", "102"]
    assert {f.kind for f in result.failures.values()} == {FailureKind.UNDELIVERED}
    # Settled, the batch is forgotten: the count starts again for a new delivery of it.
    with pytest.raises(BatchFailed):
        await handler.event_hub(event_hub_batch(bodies(3)))


@pytest.mark.emulator
@pytest.mark.anyio
async def test_throttled_store_requests_fail_no_event(azurite_server: Azurite) -> None:
    from azure.data.tables import TableClient

    from tests.azure.test_table_store import Throttle

    conn = azurite_server.connection_string
    table = f"throttle{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(conn).create_table(table)
    throttle = Throttle(6)  # 429 Too Many Requests with Retry-After, at the wire
    client = TableClient.from_connection_string(
        conn, table, per_retry_policies=[throttle], retry_backoff_factor=0.01
    )
    clock = ManualClock()
    downstream = Downstream(clock, down_at=10**9)
    letters = MemorySink()
    pipe = outage_pipeline(
        downstream, MemorySink(), TableIdempotencyStore(client, clock=clock), letters, clock
    )
    [function] = function_app(pipe, EventHubTrigger("orders")).get_functions()
    await host(function.get_user_function(), clock, partitions=1, per_partition=60, batch=20)
    assert throttle.answered == 6 and letters.values() == []
    assert dict(downstream.applied) == expected(1, 60)
