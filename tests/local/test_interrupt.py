"""Ctrl-C on `onceflow run`: the run stops at the next batch, says what it kept, and the
state is consistent (every committed batch checkpointed), so the next run finishes it.

A local run never waits for anything, so the cancellation `asyncio.run` makes of SIGINT
would land only when the input ends (the whole file processed first); `run_files`
checkpoints between batches for it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ONCEFLOW = str(Path(sys.executable).with_name("onceflow"))
EVENTS = 3_000
# SIGINT as a terminal sends it, even when the tests run with SIGINT ignored (a shell's
# background job): exec resets a handled signal, not an ignored one.
_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _count(state: Path, query: str) -> int:
    try:
        with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
            return int(conn.execute(query).fetchone()[0])
    except (sqlite3.Error, TypeError):
        return 0


def _run(state: Path, source: Path, *extra: str, slow: float = 0.0) -> subprocess.Popen[str]:
    argv = [ONCEFLOW, "run", "tests.local.processors:Slow", "-i", str(source), "-s", str(state),
            "--id-field", "id", "--batch-size", "100", "--quiet", *extra]  # fmt: skip
    env = {**os.environ, "ONCEFLOW_TEST_SLOW": str(slow)}
    return subprocess.Popen(
        [sys.executable, "-c", _DEFAULT_SIGINT, *argv], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def test_ctrl_c_stops_the_run_at_the_next_batch_and_the_rerun_finishes(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"e{n}", "n": n}) + "\n" for n in range(EVENTS)))
    state = tmp_path / "st"
    run = _run(state, source, slow=0.005)  # 15 s of work: Ctrl-C lands well before its end
    while run.poll() is None and _count(state, "SELECT count(*) FROM outputs") < 200:
        time.sleep(0.02)
    assert run.poll() is None, run.communicate()
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, (out, err)
    assert "interrupted after" in err and "Traceback" not in err, err
    kept = _count(state, "SELECT count(*) FROM outputs")
    assert 200 <= kept < EVENTS  # stopped at a batch, not at the end of the input
    # Consistent: every committed event is completed and behind the file's checkpoint.
    assert _count(state, "SELECT count(*) FROM onceflow_keys WHERE status='completed'") == kept
    assert _count(state, "SELECT max(line) FROM onceflow_checkpoints") == kept
    rerun = _run(state, source)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, (out, err)
    assert _count(state, "SELECT count(*) FROM outputs") == EVENTS
    assert _count(state, "SELECT count(*) FROM onceflow_keys WHERE status='completed'") == EVENTS


def test_ctrl_c_stops_a_chunked_run_and_its_workers(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"e{n}", "n": n}) + "\n" for n in range(EVENTS)))
    state = tmp_path / "st"
    chunked = ("--workers", "2", "--chunk-size", str(source.stat().st_size // 6))
    run = _run(state, source, *chunked, slow=0.005)
    while run.poll() is None and _count(state, "SELECT count(*) FROM outputs") < 200:
        time.sleep(0.02)
    assert run.poll() is None, run.communicate()
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, (out, err)
    assert "interrupted" in err and "Traceback" not in err, err
    assert _count(state, "SELECT count(*) FROM outputs") < EVENTS
    rerun = _run(state, source, *chunked)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, (out, err)
    assert _count(state, "SELECT count(*) FROM outputs") == EVENTS
