"""The runnable examples: orders and clickstream on the local backend, and `make demo`'s script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.clickstream.aggregates import UserStats, per_user
from onceflow.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def letters(state: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (state / "dead-letters.jsonl").read_text().splitlines()]


def test_orders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, out = tmp_path / "st", tmp_path / "totals.jsonl"
    code = main(
        [
            "run", "examples.orders.processor:OrderProcessor", "--quiet",
            "--input", str(ROOT / "examples/orders/orders.jsonl"),
            "--id-field", "order_id", "--state", str(state), "--out", str(out),
        ]
    )  # fmt: skip
    shown = capsys.readouterr().out
    assert code == 1
    for row in ("processed     │     12", "duplicates    │      3", "dead-lettered │      4"):
        assert row in shown
    totals = {t["order_id"]: t for t in map(json.loads, out.read_text().splitlines())}
    assert len(totals) == 12
    assert totals["o-1002"] == {"order_id": "o-1002", "user_id": "u-2", "items": 4, "total": 25.5}
    where = sorted(
        str(letter["event"].get("line") or letter["event"]["locator"]) for letter in letters(state)
    )
    assert where == ["12", "6", "orders.jsonl:14", "orders.jsonl:9"]


def test_clickstream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "st"
    args = [
        "run", "examples.clickstream.processor:ClickProcessor", "--quiet",
        "--input", str(ROOT / "examples/clickstream/clicks.csv"),
        "--id-field", "event_id", "--state", str(state),
    ]  # fmt: skip
    assert main(args) == 1
    shown = capsys.readouterr().out
    assert "processed     │      9" in shown and "duplicates    │      2" in shown
    assert len(letters(state)) == 4
    stats = {s.user_id: s for s in per_user(state)}
    assert stats["u-1"] == UserStats(
        "u-1", 3, 15600, 3, "2026-11-20T10:00:00+00:00", "2026-11-20T10:04:00+00:00"
    )
    assert sum(s.clicks for s in stats.values()) == 9
    # A second pass over the same file changes no aggregate.
    assert main([*args, "--from-start"]) == 0
    assert {s.user_id: s for s in per_user(state)} == stats


def test_demo_script(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DEMO_STATE": str(tmp_path / "demo"),
        "ONCEFLOW": str(Path(sys.executable).with_name("onceflow")),
        "COLUMNS": "200",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "examples/orders/demo.sh")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exit status 1, as expected: the 4 invalid records are dead letters" in done.stdout
    assert "duplicates    │     19" in done.stdout
