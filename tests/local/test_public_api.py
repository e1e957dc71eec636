"""The local backend's public names, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import onceflow.adapters.local

EXPECTED = [
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


def test_all_lists_the_public_names() -> None:
    assert onceflow.adapters.local.__all__ == EXPECTED
    for name in EXPECTED:
        assert getattr(onceflow.adapters.local, name).__doc__


def test_import_pulls_in_neither_pyarrow_nor_rich_nor_cloud_sdks() -> None:
    code = (
        "import sys, onceflow.adapters.local, onceflow.adapters.local.cli; "
        "print(sorted(m for m in ('pyarrow', 'rich', 'boto3', 'azure') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
