"""OtelMetrics: the runner's counters through the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import json

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from onceflow import PermanentError
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.otel_metrics import OtelMetrics
from onceflow.pipeline import Pipeline


def process(event: Event) -> dict[str, int]:
    if event.json()["n"] == 0:
        raise PermanentError("zero")
    return event.json()


def test_counters_and_batch_durations_reach_the_meter_with_attributes() -> None:
    reader = InMemoryMetricReader()
    metrics = OtelMetrics(
        pipeline="orders", source="memory", meter_provider=MeterProvider(metric_readers=[reader])
    )
    pipeline = Pipeline(
        process, MemorySink(), MemoryIdempotencyStore(), MemorySink(), metrics=metrics
    )
    events = [Event(id=f"e{n}", source="t", data=json.dumps({"n": n}).encode()) for n in range(3)]
    pipeline.run_batch(events)
    pipeline.run_batch(events)
    data = reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: m
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for m in scope.metrics
    }

    def total(name: str) -> int:
        points = list(found[name].data.data_points)
        assert all(dict(p.attributes) == {"pipeline": "orders", "source": "memory"} for p in points)
        return sum(p.value for p in points)

    assert total("onceflow.received") == 6 and total("onceflow.processed") == 2
    assert total("onceflow.duplicates") == 3 and total("onceflow.dead_lettered") == 1
    [durations] = found["onceflow.batch_seconds"].data.data_points
    assert durations.count == 2 and found["onceflow.batch_seconds"].unit == "s"
