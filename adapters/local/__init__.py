"""The embedded local backend: SQLite state, file sources and a disk object store.

Nothing here needs a server or a cloud account; pyarrow is imported only to read Parquet.

    from adapters.local import SqliteIdempotencyStore, SqliteSink, FileSource, LocalObjectStore
"""

from adapters.local.database import Database, StateError
from adapters.local.objects import LocalObjectStore
from adapters.local.sqlite_sink import SqliteSink
from adapters.local.sqlite_store import SqliteIdempotencyStore

__all__ = [
    "Database",
    "LocalObjectStore",
    "SqliteIdempotencyStore",
    "SqliteSink",
    "StateError",
]
