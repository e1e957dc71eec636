"""The exceptions onceflow raises or understands."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DecodeError",
    "LeaseLostError",
    "OnceflowError",
    "OutputRejected",
    "PermanentError",
    "SimulatedCrash",
]


class OnceflowError(Exception):
    """Base class of onceflow's own errors."""


class PermanentError(OnceflowError):
    """Raised by a processor for an event that can never succeed: it is dead-lettered at once."""


class DecodeError(PermanentError, ValueError):
    """An event's payload or a raw record cannot be decoded."""


class OutputRejected(PermanentError):
    """Raised by a sink, before writing anything, for outputs it can never store."""

    def __init__(self, rejected: dict[str, str]) -> None:
        super().__init__("; ".join(f"{oid}: {why}" for oid, why in list(rejected.items())[:5]))
        self.rejected = rejected
        """Reason per refused `output_id`; the runner dead-letters their events."""


class ConfigurationError(OnceflowError):
    """The pipeline or a backend is set up in a way that cannot work."""


class LeaseLostError(OnceflowError):
    """A worker's claim on a key was taken over, so its commit was refused."""


class SimulatedCrash(BaseException):
    """A fault injected at a pipeline step; it escapes every handler, as a process death would."""

    def __init__(self, step: str) -> None:
        super().__init__(f"simulated crash at step {step!r}")
        self.step = step
