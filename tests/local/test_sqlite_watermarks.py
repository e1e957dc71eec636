"""The SQLite store against the lane watermark contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from onceflow.adapters.local.database import Database
from onceflow.adapters.local.sqlite_store import SqliteIdempotencyStore
from onceflow.clock import ManualClock
from onceflow.testing.contracts import LaneStoreContract


class TestSqliteLaneStore(LaneStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path, clock: ManualClock) -> SqliteIdempotencyStore:
        return SqliteIdempotencyStore(tmp_path / "state.db", clock=clock, ttl_seconds=3600.0)

    @pytest.fixture
    def other_store(self, tmp_path: Path, clock: ManualClock) -> SqliteIdempotencyStore:
        # Another worker: its own connection to the same file, as a second process has.
        path = tmp_path / "state.db"
        return SqliteIdempotencyStore(
            path, clock=clock, ttl_seconds=3600.0, database=Database(path)
        )
