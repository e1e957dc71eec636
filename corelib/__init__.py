"""onceflow's provider-neutral core: events, interfaces and the exactly-once runner."""

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
