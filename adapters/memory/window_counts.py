"""Per-window counts in memory, for users' tests of reconciliation."""

from __future__ import annotations

from collections.abc import Mapping

from onceflow.reconcile import COUNTS

__all__ = ["MemoryWindowCounts"]


class MemoryWindowCounts:
    """Keeps per-window counts in a dict; `adds` counts the writes (one per window per batch)."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, int], dict[str, int]] = {}
        self.adds = 0

    def add(self, pipeline: str, window: int, counts: Mapping[str, int]) -> None:
        """Add `counts` to one window."""
        self.adds += 1
        tally = self.windows.setdefault((pipeline, window), dict.fromkeys(COUNTS, 0))
        for name, value in counts.items():
            tally[name] = tally.get(name, 0) + value

    def read(self, pipeline: str | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """Every window's counts (of one pipeline, or all)."""
        return {
            key: dict(tally)
            for key, tally in sorted(self.windows.items())
            if pipeline is None or key[0] == pipeline
        }
