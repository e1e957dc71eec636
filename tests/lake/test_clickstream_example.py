"""The clickstream lake example: raw clicks once in Parquet, hourly totals once in Delta."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.clickstream.lake import QUERY, run
from onceflow.adapters.local import LocalObjectStore
from onceflow.lake import read_dataset, read_delta
from tests.lake.conftest import query


@pytest.mark.anyio
async def test_example_commits_each_click_and_hour_once_across_reruns(tmp_path: Path) -> None:
    first = await run(tmp_path)
    assert first == {
        "clicks": 9,
        "duplicates": 2,
        "dead_lettered": 4,
        "hours": 1,
        "hours_already_done": 0,
    }
    again = await run(tmp_path)
    assert again["clicks"] == 0 and again["hours_already_done"] == 1
    clicks = await read_dataset(LocalObjectStore(tmp_path), "clicks")
    user_hours = read_delta(str(tmp_path / "user_hours"))
    rows = query(QUERY, clicks=clicks, user_hours=user_hours)
    assert sum(r[3] for r in rows) == 9
    assert all(r[3] == r[5] for r in rows)  # each total matches the raw clicks behind it
