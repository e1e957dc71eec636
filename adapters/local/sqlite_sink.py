"""A sink that keeps outputs in a SQLite table, committing atomically with the SQLite store."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from onceflow.adapters.local.database import Database
from onceflow.adapters.local.sqlite_store import SqliteIdempotencyStore, SqliteWrites
from onceflow.clock import SystemClock
from onceflow.errors import ConfigurationError
from onceflow.interfaces import Clock, IdempotencyStore
from onceflow.records import Completion, Output
from onceflow.serialization import dumps

__all__ = ["SqliteSink"]

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FLAT = frozenset({str, int, float, bool, type(None)})
# Rows per multi-row INSERT: 700 parameters, below the 999 older SQLite builds allow.
_ROWS_PER_STATEMENT = 100
_EVENT_KEY = 1
"""The column of a row (as `_rows` builds it) holding its output's event key."""


class SqliteSink:
    """Outputs in table `table` of a SQLite file, one row per `output_id` (a rewrite overwrites).

    When it shares its file with a `SqliteIdempotencyStore`, `write_and_complete` checks the
    fences, marks the keys completed and writes the outputs in one transaction, so a crash
    leaves either both or neither. Values are stored as JSON text (`onceflow.serialization`);
    rows keep the order their `output_id` was first written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str = "outputs",
        *,
        clock: Clock | None = None,
        busy_timeout: float = 10.0,
        database: Database | None = None,
    ) -> None:
        if not _TABLE_NAME.match(table):
            raise ConfigurationError(
                f"table name {table!r} must be letters, digits and underscores, not starting "
                "with a digit"
            )
        self.database = database or Database.shared(path, busy_timeout=busy_timeout)
        self.path = self.database.path
        self.table = table
        self.clock: Clock = clock or SystemClock()
        self.database.ensure(
            f'CREATE TABLE IF NOT EXISTS "{table}" ('
            "output_id TEXT NOT NULL UNIQUE, event_key TEXT NOT NULL, event_id TEXT NOT NULL, "
            "idx INTEGER NOT NULL, partition_key TEXT, value TEXT NOT NULL, "
            "written_at REAL NOT NULL)"
        )
        # The upsert keeps the row (and so its rowid, the first-write order) and replaces the rest.
        insert = (
            f'INSERT INTO "{table}" '
            "(output_id, event_key, event_id, idx, partition_key, value, written_at) VALUES "
        )
        upsert = (
            " ON CONFLICT(output_id) DO UPDATE SET "
            "event_key=excluded.event_key, event_id=excluded.event_id, idx=excluded.idx, "
            "partition_key=excluded.partition_key, value=excluded.value, "
            "written_at=excluded.written_at"
        )
        self._upsert = f"{insert}(?,?,?,?,?,?,?){upsert}"
        # Many rows per statement cost a quarter less than one row per executemany step; a
        # row conflicting with an earlier one of the same statement is upserted just the same.
        self._upsert_many = f"{insert}{','.join(['(?,?,?,?,?,?,?)'] * _ROWS_PER_STATEMENT)}{upsert}"

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r}, table={self.table!r})"

    def _rows(self, outputs: Sequence[Output]) -> list[tuple[Any, ...]]:
        now = self.clock.now()
        return [
            (o.output_id, o.event_key, o.event_id, o.index, o.partition_key, _json(o.value), now)
            for o in outputs
        ]

    def write_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert rows of this table through `conn` (a `RowTable` of the store's file)."""
        whole = len(rows) - len(rows) % _ROWS_PER_STATEMENT
        for start in range(0, whole, _ROWS_PER_STATEMENT):
            chunk = rows[start : start + _ROWS_PER_STATEMENT]
            conn.execute(self._upsert_many, list(itertools.chain.from_iterable(chunk)))
        if whole < len(rows):
            conn.executemany(self._upsert, rows[whole:])

    # -- the Sink and AtomicSink protocols ---------------------------------------------------

    async def write(self, outputs: Sequence[Output]) -> None:
        """Store outputs in one transaction, overwriting by `output_id`."""
        if not outputs:
            return
        rows = self._rows(outputs)
        with self.database.transaction() as conn:
            self.write_rows(conn, rows)

    def commits_with(self, store: IdempotencyStore) -> bool:
        """True for a `SqliteIdempotencyStore` on the same database file."""
        return isinstance(store, SqliteIdempotencyStore) and store.path == self.path

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Complete the keys whose fence holds and write their outputs, in one transaction.

        The outputs go to the store as rows of this table filed by event key
        (`SqliteIdempotencyStore.complete_with`), so a refused key's outputs are not written.
        """
        if not isinstance(store, SqliteIdempotencyStore) or not self.commits_with(store):
            raise ConfigurationError(f"{self!r} cannot commit atomically with {store!r}")
        writes = SqliteWrites(self, self._rows(outputs), key_column=_EVENT_KEY)
        return await store.complete_with(completions, writes)

    # -- reading -----------------------------------------------------------------------------

    def rows(self) -> Iterator[tuple[str, str, Any]]:
        """(output_id, event_key, value) for every stored output, in first-write order."""
        # A connection of its own: a long read must not hold the shared one's lock.
        reader = self.database.reader()
        try:
            cursor = reader.execute(
                f'SELECT output_id, event_key, value FROM "{self.table}" ORDER BY rowid'
            )
            for output_id, event_key, value in cursor:
                yield output_id, event_key, json.loads(value)
        finally:
            reader.close()

    def contents(self) -> dict[str, Any]:
        """Stored values by output_id."""
        return {output_id: value for output_id, _, value in self.rows()}

    def count(self) -> int:
        """How many outputs are stored."""
        with self.database.reading() as conn:
            return int(conn.execute(f'SELECT count(*) FROM "{self.table}"').fetchone()[0])

    def delete(self, output_ids: Sequence[str]) -> None:
        """Remove outputs by id (dead letters once replayed)."""
        with self.database.transaction() as conn:
            conn.executemany(
                f'DELETE FROM "{self.table}" WHERE output_id=?', [(o,) for o in output_ids]
            )

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every stored value as one JSON line to `path`, atomically; how many."""
        return _write_jsonl_atomically(path, (value for _, _, value in self.rows()))


def _json(value: Any) -> str:
    """`value` as `onceflow.serialization.dumps` writes it, a flat object several times faster."""
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str or type(item) not in _FLAT:
                return dumps(value)
        # pydantic-core writes such an object as dumps does (compact, text as it is,
        # NaN and Infinity as constants); decimals and bytes, which it writes differently,
        # take the general path above.
        try:
            return to_json(value).decode()
        except PydanticSerializationError:
            pass  # a lone surrogate: dumps lets it through, so the error is SQLite's, as before
    return dumps(value)


def _write_jsonl_atomically(path: str | os.PathLike[str], values: Iterable[Any]) -> int:
    """Write values as JSON lines to a temp file, then rename it over `path`; how many."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for value in values:
                handle.write(dumps(value))
                handle.write("\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return count
