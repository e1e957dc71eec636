"""onceflow's provider-neutral core: events, interfaces and the exactly-once runner.

Names are loaded on first use (PEP 562), as pydantic and anyio do, so a Lambda or
Functions cold start pays only for the parts of the core its handler touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corelib.clock import ManualClock, SystemClock
    from corelib.errors import (
        ConfigurationError,
        DecodeError,
        OnceflowError,
        OutputRejected,
        PermanentError,
        SimulatedCrash,
    )
    from corelib.event import Event
    from corelib.interfaces import (
        AtomicSink,
        Clock,
        IdempotencyStore,
        Metrics,
        ObjectStore,
        Processor,
        Sink,
        Source,
    )
    from corelib.logs import JsonFormatter
    from corelib.metrics import CountingMetrics, NoopMetrics
    from corelib.pipeline import BatchResult, Pipeline, Step
    from corelib.records import (
        Claim,
        ClaimStatus,
        Completion,
        InvalidRecord,
        ObjectInfo,
        Outcome,
        OutcomeStatus,
        Output,
    )
    from corelib.retry import Backoff
    from corelib.runner import run_source

_HOMES = {
    "ManualClock": "clock",
    "SystemClock": "clock",
    "ConfigurationError": "errors",
    "DecodeError": "errors",
    "OnceflowError": "errors",
    "OutputRejected": "errors",
    "PermanentError": "errors",
    "SimulatedCrash": "errors",
    "Event": "event",
    "AtomicSink": "interfaces",
    "Clock": "interfaces",
    "IdempotencyStore": "interfaces",
    "Metrics": "interfaces",
    "ObjectStore": "interfaces",
    "Processor": "interfaces",
    "Sink": "interfaces",
    "Source": "interfaces",
    "JsonFormatter": "logs",
    "CountingMetrics": "metrics",
    "NoopMetrics": "metrics",
    "BatchResult": "pipeline",
    "Pipeline": "pipeline",
    "Step": "pipeline",
    "Claim": "records",
    "ClaimStatus": "records",
    "Completion": "records",
    "InvalidRecord": "records",
    "ObjectInfo": "records",
    "Outcome": "records",
    "OutcomeStatus": "records",
    "Output": "records",
    "Backoff": "retry",
    "run_source": "runner",
}

__all__ = [
    "AtomicSink",
    "Backoff",
    "BatchResult",
    "Claim",
    "ClaimStatus",
    "Clock",
    "Completion",
    "ConfigurationError",
    "CountingMetrics",
    "DecodeError",
    "Event",
    "IdempotencyStore",
    "InvalidRecord",
    "JsonFormatter",
    "ManualClock",
    "Metrics",
    "NoopMetrics",
    "ObjectInfo",
    "ObjectStore",
    "OnceflowError",
    "Outcome",
    "OutcomeStatus",
    "Output",
    "OutputRejected",
    "PermanentError",
    "Pipeline",
    "Processor",
    "SimulatedCrash",
    "Sink",
    "Source",
    "Step",
    "SystemClock",
    "run_source",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'corelib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"corelib.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
