"""The SQLite store and sink against every contract suite, atomic and not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from onceflow.adapters.local import Database, SqliteIdempotencyStore, SqliteSink
from onceflow.clock import ManualClock
from onceflow.interfaces import Sink
from onceflow.testing import (
    AtomicSinkContract,
    ExactlyOnceContract,
    SinkContract,
    StoreContract,
)


async def read_sqlite(sink: Sink) -> dict[str, Any]:
    assert isinstance(sink, SqliteSink)
    return sink.contents()


class SqliteFixtures:
    @pytest.fixture
    def db_path(self, tmp_path: Path) -> Path:
        return tmp_path / "state.db"

    @pytest.fixture
    def store(self, db_path: Path, clock: ManualClock) -> SqliteIdempotencyStore:
        return SqliteIdempotencyStore(db_path, clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(self, db_path: Path, clock: ManualClock) -> SqliteIdempotencyStore:
        # Another worker: its own connection to the same file, as a second process has.
        return SqliteIdempotencyStore(
            db_path, clock=clock, ttl_seconds=3600.0, database=Database(db_path)
        )

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_sqlite


class TestSqliteStore(SqliteFixtures, StoreContract):
    @pytest.fixture
    def batch_size(self) -> int:
        return 2000  # over the 900-key statement chunk


class TestSqliteSink(SqliteFixtures, SinkContract):
    @pytest.fixture
    def sink(self, db_path: Path) -> SqliteSink:
        return SqliteSink(db_path, table="outputs")


class TestSqliteAtomicSink(SqliteFixtures, AtomicSinkContract):
    @pytest.fixture
    def sink(self, db_path: Path) -> SqliteSink:
        return SqliteSink(db_path, table="outputs")


@pytest.mark.parametrize("atomic", [True, False], ids=["same-file", "separate-files"])
class TestSqliteExactlyOnce(SqliteFixtures, ExactlyOnceContract):
    max_examples = 40

    @pytest.fixture
    def sink(self, atomic: bool, db_path: Path, tmp_path: Path) -> SqliteSink:
        return SqliteSink(db_path if atomic else tmp_path / "outputs.db", table="outputs")

    @pytest.fixture
    def dead_letter_sink(self, atomic: bool, db_path: Path, tmp_path: Path) -> SqliteSink:
        return SqliteSink(db_path if atomic else tmp_path / "letters.db", table="dead_letters")
