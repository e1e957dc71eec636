"""A user module that raises while importing is one line of error, not a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from onceflow.cli import CliError, load_object


def test_a_module_that_raises_on_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(CliError) as raised:
            load_object("broken_app:Processor")
    finally:
        sys.modules.pop("broken_app", None)
    message = str(raised.value)
    assert "importing module 'broken_app' failed: RuntimeError: no config" in message
    assert "\n" not in message
