"""The embedded local backend: SQLite state, file sources and a disk object store.

Nothing here needs a server or a cloud account; pyarrow is imported only to read Parquet.

    from adapters.local import SqliteIdempotencyStore, SqliteSink, FileSource, LocalObjectStore

`LocalState(folder)` wires them the way `onceflow run` does: one `state.db` holding keys,
outputs, dead letters and checkpoints, so outputs and markers commit in one transaction.
"""

from adapters.local.checkpoints import Checkpoint, Checkpoints
from adapters.local.database import Database, StateError
from adapters.local.dead_letters import JsonlDeadLetterSink
from adapters.local.file_source import DirectorySource, FileSource
from adapters.local.objects import LocalObjectStore
from adapters.local.sqlite_sink import SqliteSink
from adapters.local.sqlite_store import SqliteIdempotencyStore
from adapters.local.state import LocalState

__all__ = [
    "Checkpoint",
    "Checkpoints",
    "Database",
    "DirectorySource",
    "FileSource",
    "JsonlDeadLetterSink",
    "LocalObjectStore",
    "LocalState",
    "SqliteIdempotencyStore",
    "SqliteSink",
    "StateError",
]
