"""The embedded local backend: SQLite state, file sources and a disk object store.

Nothing here needs a server or a cloud account; pyarrow is imported only to read Parquet.

    from onceflow.adapters.local import FileSource, LocalObjectStore
    from onceflow.adapters.local import SqliteIdempotencyStore, SqliteSink

`LocalState(folder)` wires them the way `onceflow run` does: one `state.db` holding keys,
outputs, dead letters and checkpoints, so outputs and markers commit in one transaction;
`run_files(pipeline, source)` drives a file source as `onceflow run` does (what fails is
delivered again; a batch hit by a downstream outage is held until the outage passes).
"""

from onceflow.adapters.local.checkpoints import Checkpoint, Checkpoints
from onceflow.adapters.local.database import Database, StateError
from onceflow.adapters.local.dead_letters import JsonlDeadLetterSink
from onceflow.adapters.local.file_source import DirectorySource, FileSource
from onceflow.adapters.local.objects import LocalObjectStore
from onceflow.adapters.local.runner import run_files
from onceflow.adapters.local.sqlite_sink import SqliteSink
from onceflow.adapters.local.sqlite_store import SqliteIdempotencyStore
from onceflow.adapters.local.state import LocalState

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
    "run_files",
]
