"""Tracing across Event Hubs: an EventHubSink feeds an Event Hubs-triggered pipeline.

No Event Hubs emulator runs here: the sink sends through the SDK's real `EventDataBatch`
(the AMQP send recorded), and what it sent becomes a `cardinality="many"` trigger batch
built by the Functions worker's own converter (`event_hub_batch`), body and user
properties as the host hands them over. The second pipeline's event span is the child of
the first one's (OpenTelemetry SDK, in-memory exporter).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra")

from azure.eventhub import EventDataBatch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from onceflow.adapters.azure.decode import decode_event_hub
from onceflow.adapters.azure.eventhub_sink import EventHubSink
from onceflow.adapters.azure.testing import event_hub_batch
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink, MemorySource
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.runner import run_source
from onceflow.tracing import Tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def passthrough(event: Event) -> Any:
    return event.json()


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.anyio
async def test_a_pipeline_fed_by_an_event_hubs_sink_continues_the_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    sent: list[Any] = []

    class Recording:
        def create_batch(self, **options: Any) -> EventDataBatch:
            return EventDataBatch(**options)

        def send_batch(self, event_data_batch: Any, **kwargs: Any) -> None:
            sent.extend(event_data_batch._internal_events)

    first = Pipeline(passthrough, EventHubSink(Recording()), MemoryIdempotencyStore(),
                     name="first", tracing=tracing)  # fmt: skip
    upstream = Event(
        id="e1",
        source="upstream",
        data=json.dumps({"n": 1}).encode(),
        attributes={"traceparent": TRACEPARENT},
    )
    await run_source(first, MemorySource([upstream]))

    [message] = sent
    body = b"".join(message.body)
    properties = {_text(k): _text(v) for k, v in message.properties.items()}
    [event] = decode_event_hub(
        event_hub_batch([body], properties=[properties]), event_hub_name="orders"
    )
    assert isinstance(event, Event)
    assert event.attributes["traceparent"].split("-")[1] == TRACE

    out = MemorySink()
    second = Pipeline(passthrough, out, MemoryIdempotencyStore(), name="second", tracing=tracing)
    result = await second.process_batch([event])
    assert len(result.processed) == 1 and out.values()[0]["value"] == {"n": 1}
    spans = {
        (s.attributes or {})["onceflow.pipeline"]: s
        for s in exporter.get_finished_spans()
        if s.name == "onceflow process"
    }
    up, down = spans["first"], spans["second"]
    assert up.context is not None and down.context is not None
    assert down.context.trace_id == up.context.trace_id == int(TRACE, 16)
    assert down.parent is not None and down.parent.span_id == up.context.span_id
