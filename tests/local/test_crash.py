"""Crash safety: SIGKILL `onceflow run` mid-run, run it again, and nothing is lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 30_000
INVALID = set(range(7, EVENTS, 1000))  # line numbers (1-based) holding broken JSON


def make_input(path: Path, events: int = EVENTS) -> None:
    with path.open("w") as handle:
        for line in range(1, events + 1):
            handle.write("{oops\n" if line in INVALID else json.dumps({"n": line}) + "\n")


def onceflow(input_: Path, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).with_name("onceflow")), "run",
            "tests.local.processors:Doubler", "--input", str(input_), "--state", str(state),
            "--batch-size", "250", "--quiet",
        ],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def stored(state: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    make_input(source)
    state = tmp_path / "state"
    first = onceflow(source, state)
    deadline = time.monotonic() + 60
    while stored(state, "outputs") < EVENTS // 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.stderr is not None
    first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    partial = stored(state, "outputs")
    assert 0 < partial < EVENTS - len(INVALID), "the kill should land mid-run"

    second = onceflow(source, state)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 1, err.decode()  # 1: the invalid lines are dead letters

    with sqlite3.connect(state / "state.db") as conn:
        rows = dict(conn.execute("SELECT output_id, value FROM outputs"))
        keys = dict(conn.execute("SELECT outcome, count(*) FROM onceflow_keys GROUP BY outcome"))
    expected = {
        f"file:in.jsonl#in.jsonl:{line}#0": {"n": line, "double": 2 * line}
        for line in range(1, EVENTS + 1)
        if line not in INVALID
    }
    assert {k: json.loads(v) for k, v in rows.items()} == expected
    assert keys == {"succeeded": EVENTS - len(INVALID), "dead_lettered": len(INVALID)}
    letters = [json.loads(x) for x in (state / "dead-letters.jsonl").read_text().splitlines()]
    assert sorted(letter["key"] for letter in letters) == sorted(
        f"file:in.jsonl#in.jsonl:{line}" for line in INVALID
    )


@pytest.mark.slow
def test_two_runs_on_the_same_input_apply_each_event_once(tmp_path: Path) -> None:
    events = 8_000
    invalid = [line for line in INVALID if line <= events]
    source = tmp_path / "in.jsonl"
    make_input(source, events)
    state = tmp_path / "state"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    command = [
        str(Path(sys.executable).with_name("onceflow")),
        "run",
        "tests.local.processors:Doubler",
        "--input",
        str(source),
        "--state",
        str(state),
        "--batch-size",
        "100",
        "--quiet",
    ]
    runs = [
        subprocess.Popen(
            [*command, "--report", str(report)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for report in reports
    ]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
    tallies = [json.loads(report.read_text()) for report in reports]
    valid = events - len(invalid)
    assert sum(t["processed"] for t in tallies) == valid  # each event applied by one run
    assert sum(t["dead_lettered"] for t in tallies) == len(invalid)
    assert all(not t["failed"] for t in tallies)
    assert stored(state, "outputs") == valid
    assert stored(state, "dead_letters") == len(invalid)
