"""onceflow's provider-neutral core: events, interfaces and the exactly-once runner.

Names are loaded on first use (PEP 562), as pydantic and anyio do, so a Lambda or
Functions cold start pays only for the parts of the core its handler touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.breaker import CircuitBreaker, CircuitState, RateLimit
    from onceflow.clock import ManualClock, SystemClock
    from onceflow.errors import (
        ConfigurationError,
        DecodeError,
        OnceflowError,
        OutputRejected,
        PermanentError,
        SimulatedCrash,
    )
    from onceflow.event import Event, EventTemplate
    from onceflow.failures import Failure, FailureKind
    from onceflow.filters import Filter
    from onceflow.interfaces import (
        AtomicSink,
        Clock,
        IdempotencyStore,
        Metrics,
        ObjectStore,
        Processor,
        Sink,
        Source,
        TransactionalStore,
    )
    from onceflow.logs import JsonFormatter
    from onceflow.masking import Mask, Masked, MaskingKey
    from onceflow.metrics import CountingMetrics, NoopMetrics
    from onceflow.pipeline import BatchResult, Pipeline, Step
    from onceflow.records import (
        Claim,
        ClaimStatus,
        Completion,
        InvalidRecord,
        ObjectInfo,
        Outcome,
        OutcomeStatus,
        Output,
    )
    from onceflow.retry import Backoff, RetryPolicy
    from onceflow.routing import RoutedSinks, To
    from onceflow.runner import run_source
    from onceflow.typed import InvalidPayload, current_event

_HOMES = {
    "CircuitBreaker": ".breaker",
    "CircuitState": ".breaker",
    "RateLimit": ".breaker",
    "ManualClock": ".clock",
    "SystemClock": ".clock",
    "ConfigurationError": ".errors",
    "DecodeError": ".errors",
    "OnceflowError": ".errors",
    "OutputRejected": ".errors",
    "PermanentError": ".errors",
    "SimulatedCrash": ".errors",
    "Event": ".event",
    "EventTemplate": ".event",
    "Failure": ".failures",
    "FailureKind": ".failures",
    "AtomicSink": ".interfaces",
    "Clock": ".interfaces",
    "IdempotencyStore": ".interfaces",
    "Metrics": ".interfaces",
    "ObjectStore": ".interfaces",
    "Processor": ".interfaces",
    "Sink": ".interfaces",
    "Source": ".interfaces",
    "TransactionalStore": ".interfaces",
    "JsonFormatter": ".logs",
    "CountingMetrics": ".metrics",
    "NoopMetrics": ".metrics",
    "BatchResult": ".pipeline",
    "Pipeline": ".pipeline",
    "Step": ".pipeline",
    "Claim": ".records",
    "ClaimStatus": ".records",
    "Completion": ".records",
    "InvalidRecord": ".records",
    "ObjectInfo": ".records",
    "Outcome": ".records",
    "OutcomeStatus": ".records",
    "Output": ".records",
    "Backoff": ".retry",
    "RetryPolicy": ".retry",
    "run_source": ".runner",
    "Filter": ".filters",
    "Mask": ".masking",
    "Masked": ".masking",
    "MaskingKey": ".masking",
    "RoutedSinks": ".routing",
    "To": ".routing",
    "InvalidPayload": ".typed",
    "current_event": ".typed",
}

__all__ = [
    "AtomicSink",
    "Backoff",
    "BatchResult",
    "CircuitBreaker",
    "CircuitState",
    "Claim",
    "ClaimStatus",
    "Clock",
    "Completion",
    "ConfigurationError",
    "CountingMetrics",
    "DecodeError",
    "Event",
    "EventTemplate",
    "Failure",
    "FailureKind",
    "Filter",
    "IdempotencyStore",
    "InvalidPayload",
    "InvalidRecord",
    "JsonFormatter",
    "ManualClock",
    "Mask",
    "Masked",
    "MaskingKey",
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
    "RateLimit",
    "RetryPolicy",
    "RoutedSinks",
    "SimulatedCrash",
    "Sink",
    "Source",
    "Step",
    "SystemClock",
    "To",
    "TransactionalStore",
    "current_event",
    "run_source",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
