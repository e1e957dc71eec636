"""Importing the core, or the lake package itself, never loads pyarrow, deltalake or pyiceberg."""

from __future__ import annotations

import subprocess
import sys

from onceflow import lake


def test_import_corelib_and_lake_loads_no_table_format_library() -> None:
    code = (
        "import sys, onceflow, onceflow.lake, onceflow.lake.manifest, onceflow.lake.cli; "
        "heavy = ('pyarrow', 'deltalake', 'pyiceberg', 'duckdb'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lake_names_load_on_first_use() -> None:
    assert lake.ParquetSink.__name__ == "ParquetSink"
    assert len(set(lake.__all__)) == len(lake.__all__)
    assert all(getattr(lake, name, None) is not None for name in lake.__all__)
    assert all(
        getattr(lake, name).__name__ == name for name in lake.__all__ if name != "EVENT_TIME"
    )
