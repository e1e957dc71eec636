"""Counters and timings the runner reports, behind a small interface."""

from __future__ import annotations

from collections import Counter, defaultdict

__all__ = ["CountingMetrics", "NoopMetrics"]


class NoopMetrics:
    """Discards every measurement: the default."""

    def count(self, name: str, value: int = 1) -> None:
        """Do nothing."""

    def timing(self, name: str, seconds: float) -> None:
        """Do nothing."""


class CountingMetrics:
    """Keeps counters and timings in memory, for tests and for summaries."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.timings: defaultdict[str, list[float]] = defaultdict(list)

    def count(self, name: str, value: int = 1) -> None:
        """Add `value` to counter `name`."""
        self.counters[name] += value

    def timing(self, name: str, seconds: float) -> None:
        """Record one duration."""
        self.timings[name].append(seconds)
