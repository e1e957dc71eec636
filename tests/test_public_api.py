"""The public API is what `__all__` exports, and importing the core stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import onceflow
import onceflow.adapters.memory

CORE_API = {
    "AtomicSink", "Backoff", "BatchResult", "CircuitBreaker", "CircuitState", "RateLimit",
    "Claim", "ClaimStatus", "Clock", "Completion",
    "ConfigurationError", "CountingMetrics", "DecodeError", "Event", "EventTemplate", "Failure",
    "FailureKind",
    "IdempotencyStore",
    "InvalidRecord", "JsonFormatter", "ManualClock", "Metrics", "NoopMetrics", "ObjectInfo",
    "ObjectStore", "OnceflowError", "Outcome", "OutcomeStatus", "Output", "OutputRejected",
    "PermanentError", "Pipeline", "Processor", "RetryPolicy", "SimulatedCrash", "Sink", "Source",
    "Step", "SystemClock", "TransactionalStore", "run_source",
    # the processor toolkit (docs/toolkit.md)
    "Filter", "InvalidPayload", "Mask", "Masked", "MaskingKey", "RoutedSinks", "To",
    "current_event",
}  # fmt: skip


def test_core_exports_exactly_its_api() -> None:
    assert set(onceflow.__all__) == CORE_API
    for name in onceflow.__all__:
        assert getattr(onceflow, name) is not None
    assert set(dir(onceflow)) >= CORE_API
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        onceflow.Nope  # noqa: B018


def test_memory_backend_exports() -> None:
    assert set(onceflow.adapters.memory.__all__) == {
        "Faults", "ManualClock", "MemoryIdempotencyStore", "MemoryObjectStore", "MemorySink",
        "MemorySource",
    }  # fmt: skip


def test_core_imports_no_cloud_sdk_and_no_pyarrow() -> None:
    code = (
        "import sys, onceflow; from onceflow import Event, Pipeline; import onceflow.testing;"
        "import onceflow.cli; import onceflow.adapters.memory;"
        "heavy = {'boto3', 'botocore', 'azure', 'pyarrow', 'deltalake', 'duckdb'};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
