"""Tracing across an Azure Storage queue (Azurite): a QueueSink feeds a Queue-triggered pipeline.

The first pipeline's `QueueSink` sends its envelope, `traceparent` first; the message is
received from Azurite and handed to the Queue decoder as the Functions host would (the
base64 content decoded into the body), then to the second pipeline, whose event span is
the child of the first one's (OpenTelemetry SDK, in-memory exporter).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import azure.functions as func
import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from onceflow.adapters.azure.decode import decode_queue_message
from onceflow.adapters.azure.queue_sink import QueueSink, decode_queue_output
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink, MemorySource
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.runner import run_source
from onceflow.tracing import Tracing
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def passthrough(event: Event) -> Any:
    return event.json()


def envelope_value(event: Event) -> Any:
    return json.loads(event.data)["value"]


@pytest.mark.anyio
async def test_a_pipeline_fed_by_a_queue_sink_continues_the_trace(azurite_server: Azurite) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    name = f"trace-{uuid.uuid4().hex[:12]}"
    sink = QueueSink(name, connection_string=azurite_server.connection_string, create=True)
    first = Pipeline(passthrough, sink, MemoryIdempotencyStore(), name="first", tracing=tracing)
    upstream = Event(
        id="e1",
        source="upstream",
        data=json.dumps({"n": 1}).encode(),
        attributes={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    )
    await run_source(first, MemorySource([upstream]))

    [message] = list(sink.queue.receive_messages(visibility_timeout=60))
    envelope = await decode_queue_output(message.content)
    assert envelope["value"] == {"n": 1} and envelope["tracestate"] == "vendor=1"
    trigger = func.QueueMessage(id=message.id, body=base64.b64decode(message.content))
    event = decode_queue_message(trigger, queue_name=name)
    assert isinstance(event, Event)
    assert event.attributes["traceparent"].split("-")[1] == TRACE

    out = MemorySink()
    second = Pipeline(envelope_value, out, MemoryIdempotencyStore(), name="second", tracing=tracing)
    result = await second.process_batch([event])
    assert len(result.processed) == 1 and out.values() == [{"n": 1}]

    spans = {
        (s.attributes or {})["onceflow.pipeline"]: s
        for s in exporter.get_finished_spans()
        if s.name == "onceflow process"
    }
    up, down = spans["first"], spans["second"]
    assert up.context is not None and down.context is not None
    assert down.context.trace_id == up.context.trace_id == int(TRACE, 16)
    assert down.parent is not None and down.parent.span_id == up.context.span_id


def test_a_message_that_does_not_lead_with_a_traceparent_has_none() -> None:
    body = json.dumps({"output_id": "x", "traceparent": TRACEPARENT}).encode()
    event = decode_queue_message(func.QueueMessage(id="m1", body=body), queue_name="q")
    assert isinstance(event, Event) and "traceparent" not in event.attributes
