"""Tracing: spans per batch and per event, W3C context read from events and written to outputs.

Two pipelines joined by a memory sink and a memory source, spans exported by the
OpenTelemetry SDK's in-memory exporter: the second pipeline's spans continue the trace
the first one's event brought.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the otel extra")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from onceflow import Event, PermanentError, Pipeline, run_source
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink, MemorySource
from onceflow.tracing import CANARY, Tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture
def spans() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(tracer_provider=provider), exporter


def double(event: Event) -> dict[str, Any]:
    return {"n": event.json()["n"] * 2}


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def hop(sink: MemorySink, source: str) -> list[Event]:
    """The first pipeline's outputs as the second one's source delivers them."""
    return [
        Event(
            id=oid,
            source=source,
            data=b'{"n": %d}' % value["n"],
            attributes=dict(sink.attributes.get(oid, {})),
        )
        for oid, value in sink.contents().items()
    ]


def test_two_pipelines_joined_by_a_sink_and_a_source_share_one_trace(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    first_sink, second_sink = MemorySink(), MemorySink()
    first = Pipeline(double, first_sink, MemoryIdempotencyStore(), name="first", tracing=tracing)
    second = Pipeline(double, second_sink, MemoryIdempotencyStore(), name="second", tracing=tracing)
    incoming = Event(
        id="e1", source="upstream", data=b'{"n": 1}', attributes={"traceparent": TRACEPARENT}
    )
    plain = Event(id="e2", source="upstream", data=b'{"n": 2}')
    first.run_batch([incoming, plain])
    (traced_oid,) = [o for o, m in first_sink.meta.items() if m[1] == "e1"]
    carried = first_sink.attributes[traced_oid]["traceparent"]
    assert carried.split("-")[1] == TRACE

    source = MemorySource(hop(first_sink, "memory:first"))
    anyio.run(lambda: run_source(second, source))
    assert second_sink.values() == [{"n": 4}, {"n": 8}]

    processes = {
        (s.attributes or {})["onceflow.pipeline"]: s for s in named(exporter, "onceflow process")
    }
    first_e1 = next(
        s
        for s in named(exporter, "onceflow process")
        if (s.attributes or {})["onceflow.event.id"] == "e1"
    )
    # The first pipeline's span for e1 is the child of the context the event brought.
    assert trace_id(first_e1) == TRACE
    assert first_e1.parent is not None and format(first_e1.parent.span_id, "016x") == PARENT
    assert first_e1.kind is SpanKind.CONSUMER
    # The second pipeline's span for e1's output is the child of the first one's span.
    second_e1 = next(
        s
        for s in named(exporter, "onceflow process")
        if (s.attributes or {})["onceflow.event.id"] == traced_oid
    )
    assert trace_id(second_e1) == TRACE
    assert first_e1.context is not None and second_e1.parent is not None
    assert second_e1.parent.span_id == first_e1.context.span_id
    assert "second" in processes
    # Each traced event span links to the batch span it ran in.
    batches = named(exporter, "onceflow batch")
    assert len(batches) == 2
    first_batch = next(b for b in batches if (b.attributes or {})["onceflow.pipeline"] == "first")
    assert first_batch.context is not None
    assert [link.context.span_id for link in first_e1.links] == [first_batch.context.span_id]
    # The batch span links to the incoming contexts and counts what the batch came to.
    assert [format(link.context.trace_id, "032x") for link in first_batch.links] == [TRACE]
    assert (first_batch.attributes or {})["onceflow.batch.processed"] == 2


def test_an_event_without_context_is_a_child_of_its_batch_span(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    sink = MemorySink()
    pipeline = Pipeline(double, sink, MemoryIdempotencyStore(), tracing=tracing)
    pipeline.run_batch([Event(id="e1", source="s", data=b'{"n": 1}')])
    (batch,) = named(exporter, "onceflow batch")
    (event,) = named(exporter, "onceflow process")
    assert batch.context is not None and event.parent is not None
    assert event.parent.span_id == batch.context.span_id
    assert trace_id(event) == trace_id(batch)
    # Its output carries the event span's context for the next pipeline.
    (attributes,) = sink.attributes.values()
    assert event.context is not None
    assert attributes["traceparent"].startswith(
        f"00-{trace_id(event)}-{event.context.span_id:016x}-"
    )


def test_an_async_processor_is_traced_and_a_failure_is_recorded(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans

    async def refuse(event: Event) -> dict[str, Any]:
        raise PermanentError("never")

    dead = MemorySink()
    pipeline = Pipeline(refuse, MemorySink(), MemoryIdempotencyStore(), dead, tracing=tracing)
    result = pipeline.run_batch(
        [Event(id="e1", source="s", data=b"{}", attributes={"traceparent": TRACEPARENT})]
    )
    assert result.dead_lettered == ["e1"]
    (event,) = named(exporter, "onceflow process")
    assert event.status.status_code is StatusCode.ERROR
    assert [e.name for e in event.events] == ["exception"]
    assert trace_id(event) == TRACE
    # A dead letter carries no trace context: it is not an output the next pipeline reads.
    assert dead.attributes == {}


def test_a_canary_mark_is_on_the_span_and_the_outputs(
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    sink = MemorySink()
    pipeline = Pipeline(double, sink, MemoryIdempotencyStore(), tracing=tracing)
    pipeline.run_batch([Event(id="c", source="s", data=b'{"n": 1}', attributes={CANARY: "c-1"})])
    (event,) = named(exporter, "onceflow process")
    assert (event.attributes or {})[CANARY] == "c-1"
    (attributes,) = sink.attributes.values()
    assert attributes[CANARY] == "c-1"


def test_cloudevents_carry_the_trace_context_both_ways() -> None:
    doc = {
        "specversion": "1.0",
        "id": "1",
        "source": "s",
        "type": "t",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
    }
    event = Event.from_cloudevent(doc)
    assert event.attributes["traceparent"] == TRACEPARENT
    back = event.to_cloudevent()
    assert back["traceparent"] == TRACEPARENT
    assert back["tracestate"] == "vendor=1"


def test_without_tracing_outputs_carry_no_attributes() -> None:
    sink = MemorySink()
    Pipeline(double, sink, MemoryIdempotencyStore()).run_batch(
        [Event(id="e1", source="s", data=b'{"n": 1}', attributes={"traceparent": TRACEPARENT})]
    )
    assert sink.attributes == {}


def test_event_hubs_outputs_carry_the_trace_context_as_properties() -> None:
    """The Event Hubs sink with the SDK's real EventDataBatch; the AMQP send is recorded."""
    pytest.importorskip("azure.eventhub", reason="the Event Hubs sink needs the azure extra")
    from azure.eventhub import EventDataBatch

    from onceflow.adapters.azure.eventhub_sink import EventHubSink
    from onceflow.records import Output

    sent: list[Any] = []

    class Recording:
        def create_batch(self, **options: Any) -> EventDataBatch:
            return EventDataBatch(**options)

        def send_batch(self, event_data_batch: Any, **kwargs: Any) -> None:
            sent.extend(event_data_batch._internal_events)

    output = Output("s#e1#0", "s#e1", "e1", 0, {"n": 1}, attributes={"traceparent": TRACEPARENT})
    anyio.run(EventHubSink(Recording()).write, [output])
    (event,) = sent
    properties = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in event.properties.items()
    }
    assert properties["traceparent"] == TRACEPARENT
    assert properties["output_id"] == "s#e1#0"
