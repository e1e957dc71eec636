"""Per-window counts in memory, for users' tests of reconciliation."""

from __future__ import annotations

import time

from onceflow.reconcile import CountRow, Counts, sum_rows

__all__ = ["MemoryWindowCounts"]


class MemoryWindowCounts:
    """Keeps count rows in a dict keyed (pipeline, window, batch); `adds` counts the writes."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int, str], CountRow] = {}
        self.adds = 0

    def put(self, row: CountRow) -> None:
        """Write one row, replacing one of the same key."""
        self.adds += 1
        self.rows[(row.pipeline, row.window, row.batch)] = row

    def read(self, pipeline: str | None = None, *, now: float | None = None) -> Counts:
        """Every window's summed counts (of one pipeline, or all), unexpired at `now`."""
        moment = time.time() if now is None else now
        return sum_rows(
            (row.pipeline, row.window, row.counts)
            for row in self.rows.values()
            if (pipeline is None or row.pipeline == pipeline) and row.expires > moment
        )
