"""Tracing across a real queue: one pipeline's SQS sink feeds another's SQS source (moto server).

Exercised: the SQS sink sends the output's `traceparent` as a message attribute, the SQS
source decodes it into `Event.attributes` as the Lambda trigger does, and the second
pipeline's event span is the child of the first one's (OpenTelemetry SDK, in-memory
exporter). Not exercised: X-Ray's own header (AWSTraceHeader), which is not W3C.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from onceflow.adapters.aws import SQSSink, SQSSource
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink, MemorySource
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.runner import run_source
from onceflow.tracing import CANARY, Tracing
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def passthrough(event: Event) -> Any:
    return event.json()


@pytest.mark.anyio
async def test_a_pipeline_fed_by_an_sqs_sink_continues_the_trace(moto: MotoServer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    sqs = moto.client("sqs")
    url = sqs.create_queue(QueueName=f"trace-{uuid.uuid4().hex[:8]}")["QueueUrl"]

    first = Pipeline(
        passthrough, SQSSink(url, client=sqs), MemoryIdempotencyStore(), name="first",
        tracing=tracing,
    )  # fmt: skip
    upstream = Event(
        id="e1",
        source="upstream",
        data=json.dumps({"n": 1}).encode(),
        attributes={"traceparent": TRACEPARENT, CANARY: "c-1"},
    )
    await run_source(first, MemorySource([upstream]))

    sink = MemorySink()
    second = Pipeline(passthrough, sink, MemoryIdempotencyStore(), name="second", tracing=tracing)
    seen: list[Event] = []
    source = SQSSource(url, client=sqs, wait_seconds=0, stop_when_empty=True)
    original = second.process_batch

    async def spy(records: Any, **options: Any) -> Any:
        batch = list(records)
        seen.extend(r for r in batch if isinstance(r, Event))
        return await original(batch, **options)

    second.process_batch = spy  # type: ignore[method-assign]
    total = await run_source(second, source)
    assert len(total.processed) == 1
    assert sink.values() == [{"n": 1}]
    # The message attributes came through the queue and the decoder.
    (delivered,) = seen
    assert delivered.attributes[CANARY] == "c-1"
    assert delivered.attributes["traceparent"].split("-")[1] == TRACE

    spans = {
        (s.attributes or {})["onceflow.pipeline"]: s
        for s in exporter.get_finished_spans()
        if s.name == "onceflow process"
    }
    upstream_span, downstream_span = spans["first"], spans["second"]
    assert upstream_span.context is not None and downstream_span.context is not None
    assert downstream_span.context.trace_id == upstream_span.context.trace_id == int(TRACE, 16)
    assert downstream_span.parent is not None
    assert downstream_span.parent.span_id == upstream_span.context.span_id
    assert (downstream_span.attributes or {})[CANARY] == "c-1"
