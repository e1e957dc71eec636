"""OpenTelemetry tracing (extra `otel`): a span per batch and per event, W3C context carried on.

`Pipeline(tracing=Tracing())` turns it on; without it nothing here is imported or called.

- The batch span (`onceflow batch`, kind CONSUMER) links to every incoming trace context
  of the batch (at most `max_links`), since one batch mixes many traces.
- Each processor attempt gets a span (`onceflow process`, kind CONSUMER) whose parent is
  the event's own trace context, read with the global propagator (W3C `traceparent` and
  `tracestate` by default) from `Event.attributes`: CloudEvents extensions, SQS message
  attributes and Event Hubs properties all land there. An event that brings no context is
  a child of the batch span; one that does links to the batch span.
- The outputs of an event carry its span's context in `Output.attributes` (`traceparent`,
  `tracestate`), and the canary mark `onceflow.canary` when the event had it; sinks pass
  them on (SQS message attributes, Event Hubs properties, the memory sink; Kinesis
  records, EventBridge details and the Queue envelope with `traceparent` as the first
  member of the JSON object, which their decoders read back), so the pipeline fed by this
  one continues the trace.

Span attributes name the event (id, source, key) and never hold its payload.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from onceflow.canary import CANARY
from onceflow.event import Event

if TYPE_CHECKING:
    from onceflow.batch import Item
    from onceflow.records import Output
    from onceflow.results import BatchResult

__all__ = ["CANARY", "Tracing"]

# The trace carriers of the events the current batch processed, by `id()` of the event
# object the processor was handed (the item's own record, alive until the batch ends).
_CARRIERS: ContextVar[dict[int, dict[str, str]] | None] = ContextVar(
    "onceflow_trace_carriers", default=None
)


class Tracing:
    """Spans per batch and per event; W3C trace context read from events, written to outputs."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        max_links: int = 128,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("onceflow")
        self.max_links = max_links

    # -- the batch span: wraps Pipeline.process_batch ------------------------------------

    def batched(
        self, process_batch: Callable[..., Coroutine[Any, Any, BatchResult]], pipeline: str
    ) -> Callable[..., Coroutine[Any, Any, BatchResult]]:
        """`process_batch` inside a batch span linked to the batch's incoming contexts."""
        tracer, max_links = self.tracer, self.max_links

        async def traced_batch(records: Any, **options: Any) -> BatchResult:
            batch = list(records)
            links: list[Link] = []
            for record in batch:
                if len(links) >= max_links:
                    break
                context = _incoming(record)
                if context is not None:
                    links.append(Link(context))
            with tracer.start_as_current_span(
                "onceflow batch",
                kind=SpanKind.CONSUMER,
                links=links,
                attributes={"onceflow.pipeline": pipeline, "onceflow.batch.size": len(batch)},
            ) as span:
                token = _CARRIERS.set({})
                try:
                    result = await process_batch(batch, **options)
                finally:
                    _CARRIERS.reset(token)
                span.set_attributes(
                    {
                        "onceflow.batch.processed": len(result.processed),
                        "onceflow.batch.duplicates": len(result.duplicates),
                        "onceflow.batch.dead_lettered": len(result.dead_lettered),
                        "onceflow.batch.failed": len(result.failed),
                    }
                )
                return result

        return traced_batch

    # -- the event span: wraps the processor, outermost ----------------------------------

    def wrap(self, call: Callable[[Event], Any], pipeline: str) -> Callable[[Event], Any]:
        """`call` inside a span per attempt, child of the event's incoming trace context."""
        tracer = self.tracer

        def start(event: Event) -> trace.Span:
            incoming = _incoming(event)
            batch_span = trace.get_current_span()
            if incoming is None:
                parent, links = None, []  # the current context: the batch span
            else:
                parent = trace.set_span_in_context(trace.NonRecordingSpan(incoming))
                batch = batch_span.get_span_context()
                links = [Link(batch)] if batch.is_valid else []
            attributes = {
                "onceflow.pipeline": pipeline,
                "onceflow.event.id": event.id,
                "onceflow.event.source": event.source,
                "onceflow.event.type": event.type,
                "messaging.message.id": event.id,
            }
            if CANARY in event.attributes:
                attributes[CANARY] = event.attributes[CANARY]
            return tracer.start_span(
                "onceflow process",
                context=parent,
                kind=SpanKind.CONSUMER,
                links=links,
                attributes=attributes,
            )

        def finish(event: Event, span: trace.Span, error: BaseException | None) -> None:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            else:
                carriers = _CARRIERS.get()
                if carriers is not None:
                    carrier: dict[str, str] = {}
                    propagate.inject(carrier, context=trace.set_span_in_context(span))
                    if CANARY in event.attributes:
                        carrier[CANARY] = event.attributes[CANARY]
                    carriers[id(event)] = carrier
            span.end()

        if inspect.iscoroutinefunction(call):

            async def traced_async(event: Event) -> Any:
                span = start(event)
                try:
                    produced = await call(event)
                except BaseException as exc:
                    finish(event, span, exc)
                    raise
                finish(event, span, None)
                return produced

            return traced_async

        def traced(event: Event) -> Any:
            span = start(event)
            try:
                produced = call(event)
            except BaseException as exc:
                finish(event, span, exc)
                raise
            finish(event, span, None)
            return produced

        return traced

    # -- the outputs: the commit's view of an item's outputs -----------------------------

    @staticmethod
    def outputs(item: Item) -> Sequence[Output]:
        """The item's outputs, each carrying its event span's trace context."""
        outputs = item.outputs
        carriers = _CARRIERS.get()
        carrier = None if carriers is None else carriers.get(id(item.record))
        if not carrier or not outputs:
            return outputs
        return [
            o._replace(attributes={**o.attributes, **carrier} if o.attributes else carrier)
            for o in outputs
        ]


def _incoming(record: Any) -> trace.SpanContext | None:
    """The valid remote span context an event brings in its attributes, if any."""
    attributes: Mapping[str, str] | None = getattr(record, "attributes", None)
    if not attributes:
        return None
    context = trace.get_current_span(propagate.extract(attributes)).get_span_context()
    return context if context.is_valid else None
