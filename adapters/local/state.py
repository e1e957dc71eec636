"""A state folder: the SQLite database, the dead-letter file, and a log of runs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from onceflow.adapters.local.checkpoints import Checkpoints
from onceflow.adapters.local.database import Database
from onceflow.adapters.local.dead_letters import JsonlDeadLetterSink
from onceflow.adapters.local.sqlite_sink import SqliteSink
from onceflow.adapters.local.sqlite_store import SqliteIdempotencyStore
from onceflow.interfaces import Clock

__all__ = ["LocalState", "RunRecord"]

DATABASE = "state.db"
DEAD_LETTERS = "dead-letters.jsonl"
RUNS = "onceflow_runs"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One `onceflow run` as the state folder remembers it."""

    id: int
    processor: str
    inputs: list[str]
    options: dict[str, Any]
    started_at: float
    finished_at: float | None
    counts: dict[str, int]


class LocalState:
    """Everything a local run keeps in `folder`: `state.db` (keys, outputs, dead letters,
    checkpoints, runs) and `dead-letters.jsonl`, all sharing one SQLite connection so
    outputs, dead letters and completion markers commit in one transaction.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        ttl_seconds: float = 30 * 86_400.0,
        busy_timeout: float = 10.0,
        create: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not create and not (self.folder / DATABASE).exists():
            raise FileNotFoundError(
                f"no onceflow state in {self.folder} (expected {self.folder / DATABASE})"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        """The store's clock (a `ManualClock` in tests); the system clock when None."""
        self.database = Database(self.folder / DATABASE, busy_timeout=busy_timeout)
        self.database.ensure(
            f"CREATE TABLE IF NOT EXISTS {RUNS} (id INTEGER PRIMARY KEY, processor TEXT NOT NULL, "
            "inputs TEXT NOT NULL, options TEXT NOT NULL, started_at REAL NOT NULL, "
            "finished_at REAL, counts TEXT NOT NULL)"
        )

    @cached_property
    def store(self) -> SqliteIdempotencyStore:
        """The idempotency store."""
        return SqliteIdempotencyStore(
            self.database.path,
            ttl_seconds=self.ttl_seconds,
            clock=self.clock,
            database=self.database,
        )

    @cached_property
    def sink(self) -> SqliteSink:
        """The outputs, in table `outputs`."""
        return SqliteSink(self.database.path, "outputs", database=self.database)

    @cached_property
    def dead_letters(self) -> JsonlDeadLetterSink:
        """The dead letters, in table `dead_letters` and `dead-letters.jsonl`."""
        return JsonlDeadLetterSink(
            self.folder / DEAD_LETTERS, self.database.path, database=self.database
        )

    @cached_property
    def checkpoints(self) -> Checkpoints:
        """The file sources' read positions."""
        return Checkpoints(self.database)

    def close(self) -> None:
        """Flush the dead-letter file and close the database."""
        if "dead_letters" in self.__dict__:
            self.dead_letters.flush()
        if "store" in self.__dict__:
            self.store.close()
        self.database.close()

    # -- the run log -------------------------------------------------------------------------

    def start_run(self, processor: str, inputs: list[str], options: dict[str, Any]) -> int:
        """Record a run that starts now; its id."""
        with self.database.transaction() as conn:
            cursor = conn.execute(
                f"INSERT INTO {RUNS} (processor, inputs, options, started_at, counts) "
                "VALUES (?,?,?,?,?)",
                (processor, json.dumps(inputs), json.dumps(options), time.time(), "{}"),
            )
            return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, counts: dict[str, int]) -> None:
        """Record how a run ended."""
        with self.database.transaction() as conn:
            conn.execute(
                f"UPDATE {RUNS} SET finished_at=?, counts=? WHERE id=?",
                (time.time(), json.dumps(counts), run_id),
            )

    def runs(self, limit: int = 10) -> list[RunRecord]:
        """The latest runs, newest first."""
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT id, processor, inputs, options, started_at, finished_at, counts "
                f"FROM {RUNS} ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            RunRecord(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4], r[5], json.loads(r[6]))
            for r in rows
        ]
