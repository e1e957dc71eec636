"""Per-window counts in the local state's SQLite file, in their own table beside the keys."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from onceflow.adapters.local.database import Database
from onceflow.reconcile import COUNTS, CountRow, Counts, sum_rows

__all__ = ["LEGACY_TABLE", "TABLE", "SqliteWindowCounts"]

TABLE = "onceflow_batch_counts"
LEGACY_TABLE = "onceflow_window_counts"
"""Summed counts (one row per window) of states written before rows were per batch: read, never
written, never expired."""
_COLUMNS = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in COUNTS)


class SqliteWindowCounts:
    """One row per (pipeline, window, batch), written with INSERT OR REPLACE in its own
    transaction: a second write of a batch's row replaces it. Expired rows are deleted when
    this writer first writes to a new window (so at most once per window per process)."""

    def __init__(self, database: Database, *, create: bool = True) -> None:
        self.database = database
        self._swept: int | None = None
        if create:
            database.ensure(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (pipeline TEXT NOT NULL, "
                f"window INTEGER NOT NULL, batch TEXT NOT NULL, {_COLUMNS}, "
                "expires REAL NOT NULL, PRIMARY KEY (pipeline, window, batch))",
                f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires)",
            )

    def put(self, row: CountRow) -> None:
        """Write one batch's row for one window (one statement; a sweep on a new window)."""
        values = [int(row.counts.get(n, 0)) for n in COUNTS]
        with self.database.transaction() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO {TABLE} (pipeline, window, batch, {', '.join(COUNTS)}, "
                f"expires) VALUES (?, ?, ?, {', '.join('?' for _ in COUNTS)}, ?)",
                (row.pipeline, row.window, row.batch, *values, row.expires),
            )
            if self._swept != row.window:
                conn.execute(f"DELETE FROM {TABLE} WHERE expires <= ?", (row.written,))
        self._swept = row.window

    def read(self, pipeline: str | None = None, *, now: float | None = None) -> Counts:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        moment = time.time() if now is None else now
        where, params = ("WHERE pipeline = ?", (pipeline,)) if pipeline is not None else ("", ())
        rows: list[Any] = []
        with self.database.reading() as conn:
            for table, live in ((TABLE, True), (LEGACY_TABLE, False)):
                clause = where
                args: tuple[Any, ...] = params
                if live:
                    clause = f"{where} {'AND' if where else 'WHERE'} expires > ?"
                    args = (*params, moment)
                try:
                    rows += conn.execute(
                        f"SELECT pipeline, window, {', '.join(COUNTS)} FROM {table} {clause}", args
                    ).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise  # a state written before counts were kept has neither table
        return sum_rows((r[0], r[1], dict(zip(COUNTS, r[2:], strict=True))) for r in rows)
