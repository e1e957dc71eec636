"""Why an event was handed back for redelivery or dead-lettered: a kind and a sentence.

Behaviour is decided by the kind; the text is for people (logs, dead letters, CLI).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["Failure", "FailureKind"]


class FailureKind(enum.Enum):
    """What went wrong for one event."""

    # Handed back for redelivery: nothing was committed for the event.
    LEASED_ELSEWHERE = "leased_elsewhere"
    """Another worker holds the key's live lease."""
    OUT_OF_TIME = "out_of_time"
    """The time budget or deadline ran out before the event was processed."""
    LEASE_LOST = "lease_lost"
    """The lease was taken over before the commit; the other worker commits instead."""
    STORE_FAILED = "store_failed"
    """The idempotency store could not claim or complete the key."""
    SINK_FAILED = "sink_failed"
    """The sink (or the atomic commit) failed after its retries."""
    HELD_FOR_ORDER = "held_for_order"
    """An earlier event of the same ordered lane failed, so this one waits behind it."""
    NO_DEAD_LETTER_SINK = "no_dead_letter_sink"
    """The event should be dead-lettered but the pipeline has no dead-letter sink."""
    DEAD_LETTER_REFUSED = "dead_letter_refused"
    """The dead-letter sink refused or failed to store the letter."""
    NOT_PROCESSED = "not_processed"
    """The event was not reached (the batch stopped before it)."""
    TRANSIENT = "transient"
    """A transient error outlived the in-process retries: an outage, not a poison pill."""
    CIRCUIT_OPEN = "circuit_open"
    """The circuit breaker held the event back during an outage (no delivery charged)."""

    # Dead-lettered: the key is completed as dead-lettered.
    PERMANENT_ERROR = "permanent_error"
    """The processor raised a permanent error (PermanentError, a validation error, ...)."""
    DELIVERIES_EXHAUSTED = "deliveries_exhausted"
    """A transient error kept failing the event until its deliveries reached the limit."""
    INVALID_RECORD = "invalid_record"
    """The raw record could not be decoded into an event."""
    OUTPUT_REJECTED = "output_rejected"
    """The sink can never store one of the event's outputs."""
    UNDELIVERED = "undelivered"
    """The platform will not deliver the event again (an Event Hubs checkpoint moved on)."""

    @property
    def redelivers(self) -> bool:
        """Whether an event that failed this way is handed back for redelivery."""
        return self in _REDELIVER


_REDELIVER = frozenset(
    {
        FailureKind.LEASED_ELSEWHERE,
        FailureKind.OUT_OF_TIME,
        FailureKind.LEASE_LOST,
        FailureKind.STORE_FAILED,
        FailureKind.SINK_FAILED,
        FailureKind.HELD_FOR_ORDER,
        FailureKind.NO_DEAD_LETTER_SINK,
        FailureKind.DEAD_LETTER_REFUSED,
        FailureKind.NOT_PROCESSED,
        FailureKind.TRANSIENT,
        FailureKind.CIRCUIT_OPEN,
    }
)


class Failure(NamedTuple):
    """One event's failure: its kind and a one-line reason naming the event (never its data)."""

    kind: FailureKind
    text: str

    def __str__(self) -> str:
        return self.text
