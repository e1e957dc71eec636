"""Kill tests (issue 16 item 3): SIGKILL `onceflow run`, `run --workers 2` and
`onceflow dead-letters replay` at seeded random moments, five times each, then let a last
run finish: the state equals one clean run's (outputs, dead letters, one completion per key).

A kill lands once the state shows a seeded random share of the work done, so it falls
mid-run whatever the machine's speed; `--workers` runs are killed as a process group (the
parent and its workers together, as a closed terminal or an OOM kill of the group would).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 6_000
BAD = set(range(5, EVENTS, 97))  # marked bad: dead letters, fixed later by a replay
BROKEN = {EVENTS // 2}  # a broken JSON line: a dead letter a replay cannot fix
KILLS = 5
ONCEFLOW = str(Path(sys.executable).with_name("onceflow"))


def make_input(path: Path, bad: set[int] = BAD) -> None:
    with path.open("w") as handle:
        for n in range(1, EVENTS + 1):
            row = {"id": f"e{n}", "n": n, "u": f"u{n % 5}", **({"bad": True} if n in bad else {})}
            handle.write("{oops\n" if n in BROKEN else json.dumps(row) + "\n")


def count(state: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0


def killed_then_finished(
    argv: list[str], state: Path, *, target: int, seed: int, env: dict[str, str] | None = None
) -> int:
    """Run `argv` KILLS times, each SIGKILLed once the outputs grew by a random share of
    what is left to reach `target` (or, one time in three, after a random moment of its
    start-up and first batches); then once to its end. How many kills hit a live run."""
    rng = random.Random(seed)
    landed = 0
    for _ in range(KILLS):
        start = count(state, "outputs")
        goal = start + max(1, int((target - start) * rng.uniform(0.05, 0.5)))
        wait = rng.uniform(0.1, 1.0) if rng.random() < 1 / 3 else None
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        if wait is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait)
        else:
            while proc.poll() is None and count(state, "outputs") < goal:
                time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait()
    last = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert last.returncode in (0, 1), last.stderr.decode()
    return landed


def outputs(state: Path) -> dict[str, object]:
    with sqlite3.connect(state / "state.db") as conn:
        return {k: json.loads(v) for k, v in conn.execute("SELECT output_id, value FROM outputs")}


def outcomes(state: Path) -> dict[str, int]:
    with sqlite3.connect(state / "state.db") as conn:
        return dict(conn.execute("SELECT outcome, count(*) FROM onceflow_keys GROUP BY outcome"))


def letter_keys(state: Path) -> list[str]:
    text = (state / "dead-letters.jsonl").read_text()
    return sorted(json.loads(line)["key"] for line in text.splitlines())


def good(numbers: set[int] | range) -> dict[str, object]:
    return {f"files#e{n}#0": {"n": n, "double": 2 * n} for n in numbers}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_killed_runs_then_one_to_the_end_equal_one_clean_run(tmp_path: Path, workers: int) -> None:
    source = tmp_path / "in.jsonl"
    make_input(source)
    state = tmp_path / "st"
    argv = [ONCEFLOW, "run", "tests.local.processors:Doubler", "-i", str(source), "-s",
            str(state), "--id-field", "id", "--partition-field", "u", "--batch-size", "100",
            "--workers", str(workers), "--quiet"]  # fmt: skip
    valid = set(range(1, EVENTS + 1)) - BAD - BROKEN
    assert killed_then_finished(argv, state, target=len(valid), seed=workers) >= 1
    assert outputs(state) == good(valid)
    assert outcomes(state) == {"succeeded": len(valid), "dead_lettered": len(BAD | BROKEN)}
    broken = [f"file:in.jsonl#in.jsonl:{n}" for n in BROKEN]
    assert letter_keys(state) == sorted([f"files#e{n}" for n in BAD] + broken)


@pytest.mark.slow
def test_killed_replays_then_one_to_the_end_apply_each_letter_once(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    bad = set(range(2, EVENTS, 3))  # 2,000 letters: four replay batches
    make_input(source, bad)
    state = tmp_path / "st"
    run = [ONCEFLOW, "run", "tests.local.processors:Doubler", "-i", str(source), "-s",
           str(state), "--id-field", "id", "--batch-size", "500", "--quiet"]  # fmt: skip
    first = subprocess.run(run, check=False, cwd=ROOT, capture_output=True, timeout=300)
    assert first.returncode == 1, first.stderr.decode()
    valid = set(range(1, EVENTS + 1)) - bad - BROKEN
    fixed = {**os.environ, "ONCEFLOW_TEST_FIXED": "1"}
    replay = [ONCEFLOW, "dead-letters", "replay", "-s", str(state)]
    assert killed_then_finished(replay, state, target=len(valid | bad), seed=3, env=fixed) >= 1
    assert outputs(state) == good(valid | bad)
    assert outcomes(state) == {"succeeded": len(valid | bad), "dead_lettered": len(BROKEN)}
    assert letter_keys(state) == [f"file:in.jsonl#in.jsonl:{n}" for n in BROKEN]
