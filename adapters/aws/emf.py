"""CloudWatch Embedded Metric Format: the runner's counters as one log document per batch.

Lambda sends a function's stdout to CloudWatch Logs, which extracts metrics from lines in
EMF (a JSON object with an `_aws.CloudWatchMetrics` directive) with no PutMetricData call,
so metrics cost no request and no latency in the handler.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["EmfMetrics"]

# Counters worth a metric even when zero, so alarms see 0 rather than missing data.
ALWAYS = ("received", "processed", "duplicates", "dead_lettered", "failed")
_cold = True


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class EmfMetrics:
    """Collects a batch's counters and writes them as one EMF document when the batch ends.

    The runner reports `batch_seconds` last in every batch; that timing closes the document.
    Dimensions are `pipeline` (default: the Lambda function's name) and `source` (left out
    when empty, since CloudWatch takes no empty dimension value); the first
    document a process writes carries `ColdStart = 1`.
    """

    def __init__(
        self,
        *,
        namespace: str = "onceflow",
        pipeline: str | None = None,
        source: str = "",
        write: Callable[[str], None] = _stdout,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.namespace = namespace
        self.pipeline = pipeline or os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "onceflow")
        self.source = source
        self.write = write
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.timings: dict[str, list[float]] = {}

    def count(self, name: str, value: int = 1) -> None:
        """Add `value` to counter `name` in the open document."""
        self.counters[name] += value

    def timing(self, name: str, seconds: float) -> None:
        """Record one duration (in milliseconds); `batch_seconds` closes the document."""
        self.timings.setdefault(name, []).append(round(seconds * 1000, 3))
        if name == "batch_seconds":
            self.flush()

    def flush(self) -> None:
        """Write the open document (nothing when no batch ran) and start a new one."""
        global _cold
        if not self.counters and not self.timings:
            return
        values: dict[str, float | list[float]] = {name: 0 for name in ALWAYS}
        values.update(self.counters)
        units = dict.fromkeys(values, "Count")
        for name, samples in self.timings.items():
            # EMF takes up to 100 values per metric in one document.
            metric = "BatchDuration" if name == "batch_seconds" else name
            values[metric] = samples[0] if len(samples) == 1 else samples[:100]
            units[metric] = "Milliseconds"
        if _cold:
            values["ColdStart"] = 1
            units["ColdStart"] = "Count"
            _cold = False
        document: dict[str, object] = {
            "_aws": {
                "Timestamp": int(self.clock() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        # CloudWatch refuses an empty dimension value: no source, no
                        # source dimension (rather than the whole document dropped).
                        "Dimensions": [["pipeline", "source"] if self.source else ["pipeline"]],
                        "Metrics": [{"Name": n, "Unit": units[n]} for n in values],
                    }
                ],
            },
            "pipeline": self.pipeline,
            **({"source": self.source} if self.source else {}),
            **values,
        }
        self.write(json.dumps(document, separators=(",", ":")))
        self.counters.clear()
        self.timings.clear()
