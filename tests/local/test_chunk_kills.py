"""SIGKILL of `onceflow run --workers 2` on a chunked input at seeded random moments, then a
rerun: its outputs and dead letters equal one clean unchunked run's, no committed chunk is
run again, and `_SUCCESS` appears only once every chunk is committed (issue 13).

A few kills here (`ONCEFLOW_KILLS`, default 5; `make soak` runs 20). Each kill lands at a
seeded random moment: once a random share of what is left of the outputs is written, or
(one time in three) a random time after the start if that comes first, which may fall in
start-up, planning or between chunks. The process group is killed (the parent and its
workers together).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from onceflow.chunks import ChunkPlan

ROOT = Path(__file__).resolve().parents[2]
ONCEFLOW = str(Path(sys.executable).with_name("onceflow"))
KILLS = int(os.environ.get("ONCEFLOW_KILLS", "5"))
EVENTS = 12_000
BAD = {3, 4_321, 11_999}  # refused by the Doubler: dead letters
BROKEN = 7_000  # a line that is not JSON: one dead letter, by its line number either way
CHUNK = "30000"  # ~20 chunks


def make_input(path: Path) -> None:
    with path.open("w") as handle:
        for n in range(EVENTS):
            if n == BROKEN:
                handle.write('{"n": oops\n')
            handle.write(json.dumps({"n": n, "bad": n in BAD}) + "\n")


def onceflow(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    command = [ONCEFLOW, "run", "tests.local.processors:Doubler", *args, "--quiet"]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen
    )


def rows(state: Path, query: str) -> list[tuple[Any, ...]]:
    try:
        with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
            return list(conn.execute(query))
    except sqlite3.Error:
        return []  # not made yet


def ledger(state: Path) -> tuple[ChunkPlan | None, dict[str, int]]:
    """The saved plan and the ledger's files, each with its inode (a rewrite changes it)."""
    runs = state / "chunked" / "runs"
    if not runs.exists():
        return None, {}
    files = {p.relative_to(runs).as_posix(): p.stat().st_ino for p in runs.rglob("*")}
    plans = [p for p in runs.rglob("plan.json")]
    plan = ChunkPlan.from_plain(json.loads(plans[0].read_text())) if plans else None
    return plan, {name: ino for name, ino in files.items() if (runs / name).is_file()}


def receipts(files: dict[str, int]) -> set[int]:
    return {int(Path(f).stem) for f in files if "/chunks/" in f}


def chunk_of(plan: ChunkPlan, event_id: str) -> int:
    line = int(event_id.rsplit(":", 1)[1])
    return max(c.index for c in plan.chunks if c.first_line is not None and c.first_line <= line)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    make_input(source)
    clean, clean_out = tmp_path / "clean", tmp_path / "clean.jsonl"
    run = onceflow("--input", str(source), "--state", str(clean), "--out", str(clean_out))
    text = run.communicate(timeout=300)[0].decode()
    assert run.returncode == 1, text  # 1: the dead letters
    expected = sorted(clean_out.read_text().splitlines())
    letters = sorted(r[0] for r in rows(clean, "SELECT event_id FROM dead_letters"))
    assert len(expected) == EVENTS - len(BAD) and len(letters) == len(BAD) + 1

    state = tmp_path / "state"
    args = ("--input", str(source), "--state", str(state), "--workers", "2", "--chunk-size", CHUNK)
    rng = random.Random(13)
    landed = 0
    after: list[str] = []  # committed chunks of all, after each kill
    frozen: dict[str, int] = {}  # ledger files seen: never rewritten
    settled: dict[str, float] = {}  # outputs of committed chunks: never written again
    lanes: dict[str, int] = {}  # lane records of committed chunks: never claimed again
    for _ in range(KILLS):
        start = len(rows(state, "SELECT 1 FROM outputs"))
        # A share of what is left, smaller the more kills there are, so most land mid-run.
        goal = start + max(1, int((EVENTS - start) * rng.uniform(0.02, min(0.6, 3 / KILLS))))
        wait = rng.uniform(0.2, 3.0) if rng.random() < 1 / 3 else None
        proc = onceflow(*args, start_new_session=True)
        began = time.monotonic()
        while proc.poll() is None and time.monotonic() - began < 120:
            if wait is not None and time.monotonic() - began >= wait:
                break
            if len(rows(state, "SELECT 1 FROM outputs")) >= goal:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, at once
            landed += 1
        proc.communicate()
        plan, files = ledger(state)
        for name, ino in frozen.items():
            assert files.get(name) == ino, f"{name} was rewritten"
        frozen = files
        if plan is None:
            continue
        done = receipts(files)
        after.append(f"{len(done)}/{len(plan.chunks)}")
        success = any(f.endswith("/_SUCCESS") for f in files)
        manifest = any(f.endswith("/manifest.json") for f in files)
        assert not success or (done == {c.index for c in plan.chunks} and manifest)
        for event_id, output_id, written in rows(
            state, "SELECT event_id, output_id, written_at FROM outputs"
        ):
            if chunk_of(plan, event_id) in done:
                assert settled.setdefault(output_id, written) == written, f"{event_id} again"
        for lane, version in rows(state, "SELECT lane, version FROM onceflow_lanes"):
            if int(lane.rsplit("#", 1)[1]) in done:
                assert lanes.setdefault(lane, version) == version, f"{lane} run again"
    print(f"{landed} of {KILLS} kills landed mid-run; chunks committed after each: {after}")
    assert landed >= KILLS // 2

    out = tmp_path / "out.jsonl"
    final = onceflow(*args, "--out", str(out))
    text = final.communicate(timeout=300)[0].decode()
    # 1: the input's dead letters, written now; 0: the killed runs had finished every chunk.
    assert final.returncode in (0, 1), text
    assert sorted(out.read_text().splitlines()) == expected  # nothing lost, nothing doubled
    assert sorted(r[0] for r in rows(state, "SELECT event_id FROM dead_letters")) == letters
    plan, files = ledger(state)
    assert plan is not None and receipts(files) == {c.index for c in plan.chunks}
    assert sum(f.endswith("/_SUCCESS") for f in files) == 1
    for name, ino in frozen.items():
        assert files.get(name) == ino, f"{name} was rewritten"
    manifest = json.loads(next((state / "chunked").rglob("manifest.json")).read_text())
    assert (manifest["rows"], manifest["invalid"]) == (EVENTS + 1, 1)
