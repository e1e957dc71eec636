"""The runner's counters and timings as OpenTelemetry metrics (extra `otel`).

For Azure Monitor (through its OpenTelemetry distro) and any other OpenTelemetry backend:
each counter becomes a monotonic `Counter` named `onceflow.<name>`, each timing a
`Histogram` in seconds, all with the `pipeline` and `source` attributes.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics as otel

__all__ = ["OtelMetrics"]


class OtelMetrics:
    """Reports to an OpenTelemetry meter (default: the global meter provider's)."""

    def __init__(
        self,
        *,
        pipeline: str = "onceflow",
        source: str = "",
        meter_provider: Any = None,
    ) -> None:
        provider = meter_provider or otel.get_meter_provider()
        self.meter = provider.get_meter("onceflow")
        self.attributes = {"pipeline": pipeline, "source": source}
        self._counters: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}

    def count(self, name: str, value: int = 1) -> None:
        """Add `value` to the counter `onceflow.<name>`."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = self.meter.create_counter(f"onceflow.{name}")
        counter.add(value, self.attributes)

    def timing(self, name: str, seconds: float) -> None:
        """Record one duration in the histogram `onceflow.<name>` (seconds)."""
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = self.meter.create_histogram(
                f"onceflow.{name}", unit="s"
            )
        histogram.record(seconds, self.attributes)
