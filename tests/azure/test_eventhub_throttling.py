"""EventHubSink when Event Hubs throttles a send (AMQP `com.microsoft:server-busy`).

No Event Hubs server runs locally and the fault proxy speaks HTTP, not AMQP, so the
producer here raises what the SDK raises once its own retries of a server-busy send are
spent: the exception is built by the SDK's own mapping (`PyamqpTransport.
_create_eventhub_exception` of the pyamqp `MessageException` with that condition), and
batches are the SDK's real `EventDataBatch`. What is not covered: the SDK's internal
retry and backoff on the link itself (it needs a live AMQP peer).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.eventhub import EventDataBatch
from azure.eventhub._pyamqp import error as amqp_errors
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport

from onceflow.adapters.azure.eventhub_sink import EventHubSink
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.retry import Backoff, RetryPolicy

SERVER_BUSY = b"com.microsoft:server-busy"


def server_busy() -> Exception:
    """The exception the SDK raises for a send the service refused as server-busy."""
    refused = amqp_errors.MessageException(SERVER_BUSY, description="the entity is throttled")
    error: Exception = PyamqpTransport._create_eventhub_exception(refused)
    return error


class ThrottlingProducer:
    """Real `EventDataBatch`es; the sends numbered in `busy` are refused as server-busy."""

    def __init__(self, busy: set[int]) -> None:
        self.busy, self.calls = busy, 0
        self.sent: list[str] = []

    def create_batch(self, **kwargs: Any) -> EventDataBatch:
        kwargs.setdefault("max_size_in_bytes", 1_000_000)
        return EventDataBatch(**kwargs)

    def send_batch(self, event_data_batch: EventDataBatch, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls in self.busy:
            raise server_busy()
        events = event_data_batch._internal_events
        self.sent += [json.loads(e.body_as_str())["output_id"] for e in events]


def run(producer: ThrottlingProducer, attempts: int) -> tuple[Pipeline, MemorySink]:
    clock = ManualClock()
    letters = MemorySink()
    pipe = Pipeline(
        lambda e: e.json(),
        EventHubSink(producer),
        MemoryIdempotencyStore(clock=clock),
        letters,
        clock=clock,
        backend_retry=RetryPolicy(attempts=attempts, backoff=Backoff(base=0.001, cap=0.01)),
    )
    return pipe, letters


EVENTS = [
    Event(id=f"e{n}", source="s", data=json.dumps({"n": n}).encode(), partition_key=f"p{n % 2}")
    for n in range(6)
]
IDS = sorted(f"s#e{n}#0" for n in range(6))


@pytest.mark.anyio
async def test_a_throttled_send_is_retried_and_fails_no_event() -> None:
    # The second lane's send is refused: the retried write sends the first lane again (an
    # Event Hub cannot overwrite; consumers keep the last event per output_id).
    producer = ThrottlingProducer(busy={2, 3})
    pipe, letters = run(producer, attempts=5)
    result = await pipe.process_batch(EVENTS)
    assert sorted(result.processed) == [e.id for e in EVENTS] and result.failed == []
    assert len(letters) == 0 and sorted(set(producer.sent)) == IDS
    again = await pipe.process_batch(EVENTS)
    assert sorted(again.duplicates) == [e.id for e in EVENTS]
    assert sorted(set(producer.sent)) == IDS


@pytest.mark.anyio
async def test_a_throttle_outliving_the_retries_hands_events_back_not_to_dead_letters() -> None:
    producer = ThrottlingProducer(busy=set(range(1, 100)))
    pipe, letters = run(producer, attempts=2)
    result = await pipe.process_batch(EVENTS)
    assert result.processed == [] and sorted(result.failed) == [e.id for e in EVENTS]
    assert len(letters) == 0 and producer.sent == []
    producer.busy = set()
    retried = await pipe.process_batch(EVENTS)
    assert sorted(retried.processed) == [e.id for e in EVENTS]
    assert sorted(set(producer.sent)) == IDS and len(letters) == 0
