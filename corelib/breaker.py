"""Downstream protection: a circuit breaker for outages and a token bucket for pace.

Both hold per-worker state in the pipeline's clock, so tests drive them with a
`ManualClock`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

from onceflow.interfaces import Clock

__all__ = ["CircuitBreaker", "CircuitState", "RateLimit"]

log = logging.getLogger("onceflow")


class CircuitState(enum.Enum):
    """Whether the breaker lets processor calls through."""

    CLOSED = "closed"
    """Calls go through."""
    OPEN = "open"
    """Calls are held back until the cool-down passes."""
    HALF_OPEN = "half_open"
    """One probe call is through; its outcome closes or reopens the circuit."""


@dataclass
class CircuitBreaker:
    """Stops calling the processor when transient failures of distinct keys pile up.

    It opens after `failures` consecutive transient failures of distinct keys, or when, of
    the calls a batch made since its first transient failure, at least `min_calls` were
    made and a `ratio` share failed (what an ordered stream with few lanes shows: every
    lane's head failing); `ratio=None` turns that rule off. While open, the pipeline hands
    events back for redelivery without charging them a delivery; after `cool_down` seconds
    one probe call goes through (half-open) and its outcome closes the circuit or opens it
    again. Permanent errors (poison pills) are not outages and do not count.
    """

    failures: int = 10
    ratio: float | None = 0.9
    min_calls: int = 12
    cool_down: float = 30.0
    state: CircuitState = field(default=CircuitState.CLOSED, init=False)
    opened_at: float = field(default=0.0, init=False)
    cause: str = field(default="", init=False)
    """The last transient failure before the circuit opened (type and message)."""
    alert: bool = field(default=False, init=False, repr=False)
    """Whether anything is amiss (failures piling up, or not closed): while False, the
    runner skips telling it of successes, which keeps the breaker free on the happy path."""
    probed: set[str] = field(default_factory=set, init=False, repr=False)
    """Keys whose probe failed while the circuit was open (cleared when it closes)."""
    _failing: set[str] = field(default_factory=set, init=False, repr=False)
    _failed: int = field(default=0, init=False, repr=False)
    _calls: int = field(default=0, init=False, repr=False)

    def start_batch(self) -> None:
        """Reset the per-batch counts the ratio rule reads."""
        self._failed = self._calls = 0

    def allow(self, now: float) -> bool:
        """Whether a processor call may go through now (half-opening after the cool-down)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN and now >= self.opened_at + self.cool_down:
            self.state = CircuitState.HALF_OPEN
            return True  # the probe
        return False

    def probe_first(self, keys: list[str]) -> list[int]:
        """Positions of `keys` in the order to try them when a probe is due: keys not yet
        probed first, so a poison pill does not stand in for the downstream every time."""
        return sorted(range(len(keys)), key=lambda i: keys[i] in self.probed)

    def holding(self, now: float) -> bool:
        """Whether calls are held back now: open, and the cool-down not yet over."""
        return self.state is CircuitState.OPEN and now < self.opened_at + self.cool_down

    def succeeded(self) -> None:
        """A call succeeded (or failed permanently): the downstream answers."""
        self._calls += 1
        self._failing.clear()
        if self.state is CircuitState.HALF_OPEN:
            log.info("circuit closed: the probe call succeeded")
            self.state = CircuitState.CLOSED
            self.probed.clear()
        self.alert = self.state is not CircuitState.CLOSED

    @property
    def probing(self) -> bool:
        """True while the half-open probe is out: its failure is the outage's, not the event's."""
        return self.state is CircuitState.HALF_OPEN

    def failed(self, key: str, cause: str, now: float) -> bool:
        """A call failed transiently; whether that opened the circuit.

        A failed probe reopens the circuit; the key is remembered, so the next probe
        tries another one.
        """
        self._calls += 1
        self._failed += 1
        self._failing.add(key)
        self.alert = True
        if self.state is CircuitState.HALF_OPEN:
            self.probed.add(key)
            return self._open(cause, now)
        if self.state is CircuitState.OPEN:
            return False
        if len(self._failing) >= self.failures:
            return self._open(cause, now)
        if (
            self.ratio is not None
            and self._calls >= self.min_calls
            and self._failed / self._calls >= self.ratio
        ):
            return self._open(cause, now)
        return False

    @property
    def is_open(self) -> bool:
        """True while calls are held back (open, or half-open with its probe out)."""
        return self.state is not CircuitState.CLOSED

    def _open(self, cause: str, now: float) -> bool:
        self.state = CircuitState.OPEN
        self.opened_at = now
        self.cause = cause
        self._failing.clear()
        return True


@dataclass
class RateLimit:
    """A token bucket per worker: at most `per_second` on average, bursts up to `burst`."""

    per_second: float
    burst: float | None = None
    """The bucket's size (default: one second's worth, at least 1)."""
    _tokens: float = field(default=0.0, init=False, repr=False)
    _at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.per_second <= 0:
            raise ValueError(f"RateLimit(per_second={self.per_second}): must be positive")

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds."""
        return self.burst if self.burst is not None else max(1.0, self.per_second)

    async def acquire(self, clock: Clock, tokens: float = 1.0) -> None:
        """Wait in `clock` until `tokens` are available, then take them."""
        now = clock.now()
        if self._at is None:
            self._tokens, self._at = self.capacity, now  # the bucket starts full
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        self._tokens -= tokens
        if self._tokens < 0:
            # Sleep off the debt: the bucket stays empty until it is paid.
            await clock.sleep(-self._tokens / self.per_second)
