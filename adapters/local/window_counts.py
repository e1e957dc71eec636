"""Per-window counts in the local state's SQLite file, in their own table beside the keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from onceflow.adapters.local.database import Database
from onceflow.reconcile import COUNTS

__all__ = ["TABLE", "SqliteWindowCounts"]

TABLE = "onceflow_window_counts"
_COLUMNS = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in COUNTS)


class SqliteWindowCounts:
    """Adds each batch's counts with one UPSERT per window, in the state file's own transaction
    discipline (BEGIN IMMEDIATE), so workers on one file add up rather than overwrite."""

    def __init__(self, database: Database, *, create: bool = True) -> None:
        self.database = database
        if create:
            database.ensure(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (pipeline TEXT NOT NULL, "
                f"window INTEGER NOT NULL, {_COLUMNS}, PRIMARY KEY (pipeline, window))"
            )

    def add(self, pipeline: str, window: int, counts: Mapping[str, int]) -> None:
        """Add `counts` to one window (one statement)."""
        names = [n for n in COUNTS if counts.get(n)]
        if not names:
            return
        columns = ", ".join(names)
        marks = ", ".join("?" for _ in names)
        updates = ", ".join(f"{n} = {n} + excluded.{n}" for n in names)
        with self.database.transaction() as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (pipeline, window, {columns}) VALUES (?, ?, {marks}) "
                f"ON CONFLICT (pipeline, window) DO UPDATE SET {updates}",
                (pipeline, window, *(int(counts[n]) for n in names)),
            )

    def read(self, pipeline: str | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        query = f"SELECT pipeline, window, {', '.join(COUNTS)} FROM {TABLE}"
        params: tuple[str, ...] = ()
        if pipeline is not None:
            query += " WHERE pipeline = ?"
            params = (pipeline,)
        with self.database.reading() as conn:
            try:
                rows = conn.execute(query + " ORDER BY pipeline, window", params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return {}  # a state written before counts were kept
                raise
        return {(row[0], int(row[1])): dict(zip(COUNTS, row[2:], strict=True)) for row in rows}
