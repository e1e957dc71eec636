"""Backends for onceflow: memory, local (SQLite + files), AWS and Azure; each imported on use."""

# Each backend is a subpackage, imported only when used: nothing is re-exported here.
__all__: list[str] = []
