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
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from onceflow.adapters.local.database import Database
from onceflow.adapters.local.sqlite_store import SqliteIdempotencyStore, SqliteWrites
from onceflow.clock import SystemClock
from onceflow.errors import ConfigurationError
from onceflow.interfaces import Clock, IdempotencyStore
from onceflow.records import Completion, LaneCommit, Output
from onceflow.serialization import dumps

__all__ = ["SqliteSink"]

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FLAT = frozenset({str, int, float, bool, type(None)})
# Rows per multi-row INSERT: 700 parameters, below the 999 older SQLite builds allow.
_ROWS_PER_STATEMENT = 100
_EVENT_KEY = 1
"""The column of a row (as `_rows` builds it) holding its output's event key."""
_VALUE = 5
"""The column of a row holding its output's value as JSON text."""
_SURROGATE = re.compile("[\ud800-\udfff]")


class SqliteSink:
    """Outputs in table `table` of a SQLite file, one row per `output_id` (a rewrite overwrites).

    When it shares its file with a `SqliteIdempotencyStore`, `write_and_complete` checks the
    fences, marks the keys completed and writes the outputs in one transaction, so a crash
    leaves either both or neither. Values are stored as JSON text (`onceflow.serialization`);
    rows keep the order their `output_id` was first written.

    Two choices keep every value exactly as the processor gave it:

    - a `Decimal` is stored as exact JSON number text (`12345678901234567.89`, as
      `onceflow.serialization.dumps` writes it), `export_jsonl` copies that text as it is,
      and `rows()` reads a number back as a `Decimal` when its digits are not a float's
      (so every digit, trailing zeros included, comes back; floats stay floats);
    - text holding a lone surrogate (what JavaScript writes for half an emoji) cannot be
      stored as SQLite text, so that output's JSON writes it as its `\\udXXX` escape, which
      `json.loads` reads back as the same string; the other outputs are not touched.
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
        try:
            self._write_rows(conn, rows)
        except UnicodeEncodeError:
            # Text with a lone surrogate fails when bound, before anything is written: the
            # happy path pays nothing for checking, and only this statement's rows are redone.
            self._write_rows(conn, [_storable(row) for row in rows])

    def _write_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
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

    def commits_lanes_with(self, store: IdempotencyStore) -> bool:
        """True for a `SqliteIdempotencyStore` on the same database file."""
        return self.commits_with(store)

    async def write_and_commit_lanes(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """Complete keys, commit lanes and write the outputs of what held, in one transaction.

        One transaction per batch of a lane instead of one for the outputs and one for the
        lane's record (`SqliteIdempotencyStore.complete_with_lanes`): the write lock that
        processes on one file queue for is taken once.
        """
        if not isinstance(store, SqliteIdempotencyStore) or not self.commits_with(store):
            raise ConfigurationError(f"{self!r} cannot commit atomically with {store!r}")
        writes = SqliteWrites(self, self._rows(outputs), key_column=_EVENT_KEY)
        return await store.complete_with_lanes(completions, writes, lanes)

    # -- reading -----------------------------------------------------------------------------

    def rows(self) -> Iterator[tuple[str, str, Any]]:
        """(output_id, event_key, value) for every stored output, in first-write order."""
        for output_id, event_key, value in self._stored():
            yield output_id, event_key, _decode(value)

    def _stored(self) -> Iterator[tuple[str, str, str]]:
        """(output_id, event_key, value as the stored JSON text), in first-write order."""
        # A connection of its own: a long read must not hold the shared one's lock.
        reader = self.database.reader()
        try:
            yield from reader.execute(
                f'SELECT output_id, event_key, value FROM "{self.table}" ORDER BY rowid'
            )
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
                f'DELETE FROM "{self.table}" WHERE output_id=?',
                [(_storable((o,))[0],) for o in output_ids],  # as write_rows stored them
            )

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every stored value as one JSON line to `path`, atomically; how many."""
        # The stored JSON text as it is: exact (decimals, escapes) and nothing to re-encode.
        return _write_jsonl_atomically(path, (value for _, _, value in self._stored()))


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
            pass  # a lone surrogate: dumps lets it through, and write_rows escapes it
    return dumps(value)


def _number(text: str) -> float | Decimal:
    """A stored JSON number with a fraction or exponent: the float written, else a Decimal.

    `dumps` writes a float as its shortest digits and a Decimal as all of its own, so a
    number whose digits are not the float's was a Decimal, and comes back with every digit.
    """
    number = float(text)
    shortest = repr(number)
    if shortest == text or Decimal(shortest).as_tuple() == Decimal(text).as_tuple():
        return number
    return Decimal(text)


# One decoder for every read: json.loads with options builds a new one each call.
_decode = json.JSONDecoder(parse_float=_number).decode


def _escaped(text: str) -> str:
    """JSON text with each lone surrogate written as its escape (the same JSON value)."""
    # In JSON text a lone surrogate can only stand inside a string, where its escape
    # means the same character.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _storable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with text SQLite can store: its value's surrogates escaped, exactly."""
    out = list(row)
    for column, item in enumerate(out):
        if type(item) is str and _SURROGATE.search(item):
            # The value's escape is exact; the other text columns (ids, partition key) say
            # where an output came from and keep a readable `\\udXXX` in their place.
            out[column] = (
                _escaped(item)
                if column == _VALUE
                else item.encode("utf-8", "backslashreplace").decode("utf-8")
            )
    return tuple(out)


def _write_jsonl_atomically(path: str | os.PathLike[str], values: Iterable[str]) -> int:
    """Write JSON texts as lines to a temp file, then rename it over `path`; how many."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for text in values:
                handle.write(text)
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
