"""Backends for onceflow: memory, local (SQLite + files), AWS and Azure; each imported on use."""
