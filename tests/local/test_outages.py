"""An outage of the processor's downstream during a local run: wait it out, lose nothing.

10,000 events in 8 lanes on SQLite, a downstream that goes down for 60 seconds in the
middle of the run. `run_files` runs in a `ManualClock` (the pipeline's and the store's),
so the minute and every backoff pass at once; the command-line tests use wall time with
a short cool-down.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from onceflow import Backoff, CircuitBreaker, Event, Pipeline, RetryPolicy
from onceflow.adapters.local import FileSource, LocalState, run_files
from onceflow.adapters.local.console import Progress
from onceflow.adapters.local.totals import Tally
from onceflow.cli import main
from onceflow.clock import ManualClock
from tests.local import processors

LANES = 8
EVENTS = 10_000
UNREACHABLE = "tests.local.processors:Unreachable"


class Downstream:
    """Down for `seconds` of the clock from its `after`-th good call on; poison always fails."""

    def __init__(
        self,
        clock: ManualClock,
        *,
        after: int,
        seconds: float,
        poison: frozenset[str] = frozenset(),
    ) -> None:
        self.clock = clock
        self.after, self.seconds, self.poison = after, seconds, poison
        self.good = 0
        self.down_from: float | None = None
        self.calls_while_down = 0
        self.calls: dict[str, int] = {}

    def process(self, event: Event) -> dict[str, object]:
        self.calls[event.id] = self.calls.get(event.id, 0) + 1
        if event.id in self.poison:
            raise ValueError("this order breaks the downstream's parser")  # transient-looking
        now = self.clock.now()
        if self.down_from is None and self.good >= self.after:
            self.down_from = now
        if self.down_from is not None and now < self.down_from + self.seconds:
            self.calls_while_down += 1
            raise ConnectionError("database is unreachable")
        self.good += 1
        return {"n": event.json()["n"], "lane": event.partition_key}


def write_events(path: Path, count: int = EVENTS) -> Path:
    rows = (json.dumps({"id": f"e{n}", "n": n, "lane": f"a{n % LANES}"}) for n in range(count))
    path.write_text("\n".join(rows) + "\n")
    return path


def committed(state: Path, table: str = "outputs") -> list[tuple[str, Any]]:
    """(event id, value) of every row, in the order they were first written."""
    with sqlite3.connect(state / "state.db") as conn:
        return [
            (event_id, json.loads(value))
            for event_id, value in conn.execute(
                f"SELECT event_id, value FROM {table} ORDER BY rowid"
            )
        ]


def in_lane_order(rows: list[tuple[str, Any]]) -> bool:
    by_lane: dict[str, list[int]] = {}
    for _, value in rows:
        by_lane.setdefault(value["lane"], []).append(value["n"])
    return all(ns == sorted(ns) for ns in by_lane.values())


def run_through_outage(
    tmp_path: Path, downstream: Downstream, clock: ManualClock, *, ordered: bool
) -> tuple[Tally, LocalState, list[tuple[int, float]]]:
    state = LocalState(tmp_path / "state", clock=clock)
    pipeline = Pipeline(
        downstream,
        state.sink,
        state.store,
        state.dead_letters,
        ordered=ordered,
        clock=clock,
        retry=RetryPolicy(attempts=3, backoff=Backoff(base=0.1, jitter=False)),
    )
    source = FileSource(
        write_events(tmp_path / "in.jsonl"),
        state=state.database,
        ordered=ordered,
        id_field="id",
        partition_field="lane",
    )
    waits: list[tuple[int, float]] = []
    tally = anyio.run(
        lambda: run_files(pipeline, source, on_wait=lambda n, s: waits.append((n, s)))
    )
    state.dead_letters.flush()
    return tally, state, waits


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_minute_long_outage_mid_run_dead_letters_nothing_and_loses_nothing(
    tmp_path: Path, ordered: bool
) -> None:
    clock = ManualClock()
    started = clock.now()
    downstream = Downstream(clock, after=EVENTS // 2, seconds=60.0)
    tally, state, waits = run_through_outage(tmp_path, downstream, clock, ordered=ordered)
    assert downstream.down_from is not None and clock.now() >= downstream.down_from + 60
    assert tally.counts() == {"processed": EVENTS, "duplicates": 0, "failed": 0, "dead_lettered": 0}
    assert tally.stopped is None
    rows = committed(state.folder)
    assert sorted(event_id for event_id, _ in rows) == sorted(f"e{n}" for n in range(EVENTS))
    assert committed(state.folder, "dead_letters") == []
    assert state.store.counts() == {"in_progress": 0, "succeeded": EVENTS, "dead_lettered": 0}
    if ordered:
        assert in_lane_order(rows)
    # The run held the batch the outage hit, hundreds of events, and waited it out...
    assert waits and max(n for n, _ in waits) >= 400
    # ...and the downstream saw the calls that opened the circuit (with their retries)
    # and about one probe per 30-second cool-down, not thousands.
    assert downstream.calls_while_down <= CircuitBreaker().failures * 3 + 60 / 30 + 2
    assert clock.now() - started < 120


def test_a_poison_pill_inside_the_outage_is_dead_lettered_once_after_max_deliveries(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    poison = "e5003"  # in the first batch the outage hits, not the head of its first lane
    downstream = Downstream(clock, after=EVENTS // 2, seconds=60.0, poison=frozenset({poison}))
    tally, state, _ = run_through_outage(tmp_path, downstream, clock, ordered=True)
    assert tally.dead_lettered == 1 and not tally.failed and tally.processed == EVENTS - 1
    [(event_id, letter)] = committed(state.folder, "dead_letters")
    assert event_id == poison
    assert "failed 5 deliveries" in letter["message"] and "ValueError" in letter["message"]
    rows = committed(state.folder)
    assert len(rows) == EVENTS - 1 and len({e for e, _ in rows}) == EVENTS - 1
    assert in_lane_order(rows)  # its lane went on after it, in order
    # Five deliveries (one may have been cut short when the circuit opened mid-retries).
    assert 5 * 3 - 2 <= downstream.calls[poison] <= 5 * 3


def test_an_outage_longer_than_the_wait_stops_the_run_and_the_next_run_finishes(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    downstream = Downstream(clock, after=1_000, seconds=3_600.0)
    state = LocalState(tmp_path / "state", clock=clock)
    path = write_events(tmp_path / "in.jsonl", 3_000)

    def pipeline() -> Pipeline:
        return Pipeline(
            downstream, state.sink, state.store, state.dead_letters, ordered=True, clock=clock
        )

    def source() -> FileSource:
        return FileSource(
            path, state=state.database, ordered=True, id_field="id", partition_field="lane"
        )

    started = clock.now()
    tally = anyio.run(lambda: run_files(pipeline(), source(), outage_wait=300.0))
    assert tally.stopped is not None and "more than 300 s" in tally.stopped
    assert tally.processed == 1_000 and tally.dead_lettered == 0 and tally.failed
    assert clock.now() - started <= 300 + 30 + 5  # the wait, and not a batch's worth more
    clock.advance(3_600)  # the downstream is back
    again = anyio.run(lambda: run_files(pipeline(), source()))
    assert again.stopped is None and not again.failed and again.dead_lettered == 0
    assert again.processed == 2_000 and again.duplicates == 0  # the checkpoint held
    rows = committed(state.folder)
    assert len({e for e, _ in rows}) == len(rows) == 3_000 and in_lane_order(rows)


# -- through the command line, in wall time ------------------------------------------------


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def cli_run(state: Path, data: Path, *extra: str) -> int:
    return main(
        [
            "run",
            UNREACHABLE,
            "-i",
            str(data),
            "--state",
            str(state),
            "--id-field",
            "id",
            "--partition-field",
            "lane",
            "--ordered",
            "--quiet",
            "--batch-size",
            "100",
            "--cool-down",
            "0.05",
            *extra,
        ]
    )


def test_onceflow_run_waits_for_the_downstream_and_applies_everything_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    processors.reset_outage(after=400, seconds=0.4, poison={"e450"})
    state, data = tmp_path / "st", write_events(tmp_path / "in.jsonl", 1_000)
    code = cli_run(state, data, "--max-deliveries", "3", "--max-attempts", "2")
    shown = capsys.readouterr().out
    assert code == 1, shown  # the poison pill
    assert "dead-lettered │      1" in shown and "failed        │      0" in shown
    assert "failed 3 deliveries of 2 attempts" in shown
    rows = committed(state)
    assert len(rows) == len({e for e, _ in rows}) == 999 and in_lane_order(rows)


def test_onceflow_run_stops_after_outage_wait_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    processors.reset_outage(after=200, seconds=3_600.0)
    state, data = tmp_path / "st", write_events(tmp_path / "in.jsonl", 500)
    assert cli_run(state, data, "--outage-wait", "0.3") == 1
    shown = capsys.readouterr().out
    assert "the run stopped early" in shown and "downstream stayed down" in shown
    assert "dead-lettered │      0" in shown
    processors.reset_outage(after=0, seconds=0.0)  # it is back
    assert cli_run(state, data) == 0
    rows = committed(state)
    assert len(rows) == len({e for e, _ in rows}) == 500 and in_lane_order(rows)


def test_the_progress_line_says_it_waits_for_the_downstream() -> None:
    with Progress(quiet=False, total=None) as show:
        show.waiting(1_234, 30.0)
        task = show.progress.tasks[0]
        assert "waiting for the downstream" in task.description
        assert "1,234 events held back" in task.fields["failures"]
        show(Tally(), 0)
        assert show.progress.tasks[0].description == "running"
