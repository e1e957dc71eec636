"""EventHubSink with the SDK's real EventDataBatch and a producer that records batches.

No Event Hubs server runs locally, so the AMQP send is the one part replaced.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.eventhub import EventDataBatch

from onceflow.adapters.azure.eventhub_sink import EventHubSink
from onceflow.errors import OutputRejected
from onceflow.records import Output


class RecordingProducer:
    """`create_batch` as the SDK builds it offline; `send_batch` keeps what was sent."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self.sent: list[tuple[Any, list[dict[str, Any]]]] = []

    def create_batch(self, **kwargs: Any) -> EventDataBatch:
        kwargs.setdefault("max_size_in_bytes", self.limit)
        return EventDataBatch(**kwargs)

    def send_batch(self, event_data_batch: EventDataBatch, **kwargs: Any) -> None:
        events: list[Any] = list(event_data_batch._internal_events)
        bodies = [json.loads(e.body_as_str()) for e in events]
        self.sent.append((event_data_batch._partition_key, bodies))


def outputs(count: int, lane: str | None, size: int = 10) -> list[Output]:
    return [
        Output(f"src#e{i}#0", f"src#e{i}", f"e{i}", 0, {"pad": "x" * size, "i": i}, lane)
        for i in range(count)
    ]


@pytest.mark.anyio
async def test_outputs_are_batched_by_partition_key_and_size() -> None:
    producer = RecordingProducer(limit=2_000)
    sink = EventHubSink(producer)
    await sink.write(outputs(30, "a", size=100) + outputs(3, "b"))
    lanes = [lane for lane, _ in producer.sent]
    assert set(lanes) == {"a", "b"} and lanes.count("a") > 1
    sent_a = [
        body["value"]["i"] for lane, bodies in producer.sent if lane == "a" for body in bodies
    ]
    assert sent_a == list(range(30))  # every output, in order, split only by size
    first = producer.sent[0][1][0]
    assert first["output_id"] == "src#e0#0" and first["event_key"] == "src#e0"


@pytest.mark.anyio
async def test_output_too_big_for_any_batch_is_refused_and_nothing_sent() -> None:
    producer = RecordingProducer(limit=1_000)
    sink = EventHubSink(producer)
    with pytest.raises(OutputRejected) as caught:
        big = Output("src#big#0", "src#big", "big", 0, "y" * 5000)
        await sink.write([*outputs(2, None), big])
    assert list(caught.value.rejected) == ["src#big#0"]
    assert producer.sent == []


@pytest.mark.anyio
async def test_empty_write_sends_nothing() -> None:
    producer = RecordingProducer()
    await EventHubSink(producer).write([])
    assert producer.sent == []
