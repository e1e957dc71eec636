"""Clocks: the system's, and a manual one that tests move by hand."""

from __future__ import annotations

import time

import anyio

__all__ = ["ManualClock", "SystemClock"]


class SystemClock:
    """The machine's wall clock; `sleep` really waits."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""
        await anyio.sleep(max(0.0, seconds))


class ManualClock:
    """A deterministic clock: time moves only through `advance` and `sleep`.

    `sleep` advances the clock at once instead of waiting, so retry backoff and lease
    expiry run instantly and reproducibly in tests.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self.slept: list[float] = []

    def now(self) -> float:
        """The current manual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait and advance the clock by it, yielding to other tasks once."""
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self._now += seconds
        await anyio.lowlevel.checkpoint()
