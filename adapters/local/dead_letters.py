"""Dead letters kept in the SQLite state and published as a JSON Lines file."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onceflow.adapters.local.database import Database
from onceflow.adapters.local.sqlite_sink import SqliteSink
from onceflow.interfaces import Clock, IdempotencyStore
from onceflow.records import Completion, LaneCommit, Output

__all__ = ["JsonlDeadLetterSink"]


class JsonlDeadLetterSink(SqliteSink):
    """Dead letters as JSON Lines at `path`, one line per dead-lettered key, never two.

    Why the letters live in SQLite first: appending to a file cannot be made idempotent
    across a crash (a letter appended just before the process died is appended again by
    the redelivery), and it cannot commit together with the completion marker. So each
    letter is a row keyed by `output_id` in table `dead_letters` of the state database,
    written in the same transaction as its key's completion when the store shares the
    file, and the JSONL file is a view of that table, rewritten atomically (temp file +
    rename) by `export()`: at most every `export_every` seconds while letters arrive, and
    when the run ends. The file therefore always holds whole lines, exactly one per key.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        state: str | os.PathLike[str],
        *,
        table: str = "dead_letters",
        export_every: float = 2.0,
        clock: Clock | None = None,
        database: Database | None = None,
    ) -> None:
        super().__init__(state, table, clock=clock, database=database)
        self.jsonl_path = Path(path)
        self.export_every = export_every
        self._dirty = False
        self._exported_at = 0.0

    def __repr__(self) -> str:
        return f"JsonlDeadLetterSink({str(self.jsonl_path)!r}, state={str(self.path)!r})"

    async def write(self, outputs: Sequence[Output]) -> None:
        """Store letters by `output_id`, then refresh the file if it is due."""
        await super().write(outputs)
        self._written(outputs)

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Store letters and complete their keys in one transaction, then refresh the file."""
        accepted = await super().write_and_complete(store, outputs, completions)
        self._written(outputs)
        return accepted

    async def write_and_commit_lanes(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """Store letters with their keys' and lanes' commits in one transaction, then
        refresh the file."""
        accepted = await super().write_and_commit_lanes(store, outputs, completions, lanes)
        self._written(outputs)
        return accepted

    def _written(self, outputs: Sequence[Output]) -> None:
        if outputs:
            self._dirty = True
            if time.monotonic() - self._exported_at >= self.export_every:
                self.export()

    def export(self) -> int:
        """Rewrite the JSONL file from the table; how many letters it holds."""
        count = self.export_jsonl(self.jsonl_path)
        self._dirty = False
        self._exported_at = time.monotonic()
        return count

    def flush(self) -> None:
        """Export if letters arrived since the last export (or the file is missing)."""
        if self._dirty or not self.jsonl_path.exists():
            self.export()

    def letters(self) -> list[dict[str, Any]]:
        """Every stored letter, oldest first."""
        return [value for _, _, value in self.rows()]
