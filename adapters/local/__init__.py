"""The embedded local backend: SQLite state, file sources and a disk object store.

Nothing here needs a server or a cloud account; pyarrow is imported only to read Parquet.

    from adapters.local import LocalObjectStore
"""

from adapters.local.objects import LocalObjectStore

__all__ = [
    "LocalObjectStore",
]
