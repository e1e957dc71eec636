"""Durable read positions for file sources, kept in the SQLite state file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from onceflow.adapters.local.database import Database

__all__ = ["Checkpoint", "Checkpoints", "Generations", "shard_checkpoint"]

TABLE = "onceflow_checkpoints"
GENERATIONS = "onceflow_generations"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where reading `name` resumes: everything before `offset` (byte or row) is settled."""

    name: str
    offset: int
    line: int
    """Records (lines or rows) before `offset`, so numbering continues where it stopped."""
    head: str = ""
    """A hash of the file's first bytes, to notice a file replaced by another."""
    finished: bool = False
    """The whole file is settled (a landing-folder file is then never read again)."""
    updated_at: float = 0.0


def shard_checkpoint(name: str, index: int, count: int) -> str:
    """The checkpoint name of worker `index` of `count` reading the file named `name`.

    Each worker of `onceflow run --workers` reads only its own records of a file, so each
    keeps its own read position in it.
    """
    return f"{name}#shard{index}of{count}"


class Checkpoints:
    """Checkpoints by name in table `onceflow_checkpoints`, written in one transaction per ack."""

    def __init__(self, database: Database) -> None:
        self.database = database
        database.ensure(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY, offset INTEGER NOT NULL, "
            "line INTEGER NOT NULL, head TEXT NOT NULL, finished INTEGER NOT NULL, "
            "updated_at REAL NOT NULL) WITHOUT ROWID"
        )

    def get(self, name: str) -> Checkpoint | None:
        """The checkpoint saved under `name`, or None."""
        with self.database.reading() as conn:
            row = conn.execute(
                f"SELECT name, offset, line, head, finished, updated_at FROM {TABLE} WHERE name=?",
                (name,),
            ).fetchone()
        return (
            None
            if row is None
            else Checkpoint(row[0], row[1], row[2], row[3], bool(row[4]), row[5])
        )

    def save(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Store checkpoints, replacing earlier ones of the same name."""
        if not checkpoints:
            return
        now = time.time()
        with self.database.transaction() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO {TABLE} VALUES (?,?,?,?,?,?)",
                [(c.name, c.offset, c.line, c.head, int(c.finished), now) for c in checkpoints],
            )

    def latest(self, limit: int = 5) -> list[Checkpoint]:
        """The most recently written checkpoints, newest first."""
        with self.database.reading() as conn:
            rows = conn.execute(
                f"SELECT name, offset, line, head, finished, updated_at FROM {TABLE} "
                "ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Checkpoint(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]


class Generations:
    """Which generation of a landing-folder file a name holds now, in `onceflow_generations`.

    A file keeps its generation while it grows (its first bytes stay the same), so the
    lines appended to it get new keys and the lines read before keep theirs; a file whose
    first bytes changed, or one landing after the last was moved away, is a new
    generation. Every worker of a run reads the same answer: the first to see a file
    names its generation, and a replacement is a compare-and-swap.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        database.ensure(
            f"CREATE TABLE IF NOT EXISTS {GENERATIONS} (name TEXT PRIMARY KEY, "
            "generation TEXT NOT NULL, head TEXT NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID"
        )

    def get(self, name: str) -> tuple[str, str] | None:
        """(generation, head) of the file now under `name`, or None."""
        with self.database.reading() as conn:
            row = conn.execute(
                f"SELECT generation, head FROM {GENERATIONS} WHERE name=?", (name,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def settle(self, name: str, generation: str, head: str, *, replacing: str | None) -> str:
        """Name `generation` (first bytes `head`) the one under `name`, unless someone named
        another first (the one being replaced was `replacing`, or there was none); which
        generation holds now."""
        with self.database.transaction() as conn:
            if replacing is not None:
                conn.execute(
                    f"UPDATE {GENERATIONS} SET generation=?, head=?, updated_at=? "
                    "WHERE name=? AND generation=?",
                    (generation, head, time.time(), name, replacing),
                )
            conn.execute(
                f"INSERT OR IGNORE INTO {GENERATIONS} VALUES (?,?,?,?)",
                (name, generation, head, time.time()),
            )
            row = conn.execute(
                f"SELECT generation FROM {GENERATIONS} WHERE name=?", (name,)
            ).fetchone()
        return generation if row is None else str(row[0])

    def forget(self, name: str, generation: str) -> None:
        """The file of this generation is gone (moved away): the next one is new."""
        with self.database.transaction() as conn:
            conn.execute(
                f"DELETE FROM {GENERATIONS} WHERE name=? AND generation=?", (name, generation)
            )
