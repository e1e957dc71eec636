"""`onceflow run` then `onceflow reconcile local`: matching counts, a dropped output, bad input."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from onceflow.adapters.local.database import Database
from onceflow.adapters.local.window_counts import LEGACY_TABLE, TABLE, SqliteWindowCounts
from onceflow.cli import main
from onceflow.reconcile import COUNTS, CountRow

DOUBLER = "tests.local.processors:Doubler"
SECRET = "card-4111-1111-1111-1111"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at the terminal width; a wide one keeps each message on one line."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """A state folder after one run: 4 events, one repeated line, one dead letter."""
    rows = [
        {"id": "e1", "n": 1, "card": SECRET},
        {"id": "e2", "n": 2, "card": SECRET},
        {"id": "e1", "n": 1, "card": SECRET},
        {"id": "e3", "n": 3, "bad": True, "card": SECRET},
        {"id": "e4", "n": 4, "card": SECRET},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = tmp_path / "st"
    code = main(
        ["run", DOUBLER, "-i", str(data), "--state", str(state), "--id-field", "id", "--quiet"]
    )
    assert code == 1  # the dead letter
    capsys.readouterr()
    return state, data


def reconcile(*args: str) -> int:
    return main(["reconcile", "local", *args])


def digest(folder: Path) -> str:
    """What the folder holds, byte for byte (nothing may be written by a refused command)."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm")):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_matching_counts_exit_zero(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = ran
    code = reconcile("--state", str(state), "--source-lines", str(data), "--sink", "state")
    shown = capsys.readouterr()
    assert code == 0, shown
    assert "no unexplained gap" in shown.out
    assert "source: 5  processed + dead-lettered: 4  gap: 1 (unexplained: 0)" in shown.out
    assert "sink rows: 3  expected: 3  gap: 0" in shown.out
    assert SECRET not in shown.out + shown.err


def test_json_report_counts_each_outcome(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = ran
    assert reconcile("--state", str(state), "--expected", "4", "--format", "json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"] == {
        "received": 5,
        "processed": 3,
        "duplicates": 1,
        "filtered": 0,
        "dead_lettered": 1,
        "failed": 0,
    }
    assert [w["gap"] for w in report["windows"]] == [0]


def test_a_second_run_adds_duplicates_not_processed(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = ran
    main(
        [
            "run",
            DOUBLER,
            "-i",
            str(data),
            "--state",
            str(state),
            "--id-field",
            "id",
            "--quiet",
            "--from-start",
        ]
    )
    capsys.readouterr()
    assert (
        reconcile("--state", str(state), "--expected", "4", "--sink", "state", "--format", "json")
        == 0
    )
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["processed"] == 3 and totals["dead_lettered"] == 1
    assert totals["received"] == 10 and totals["duplicates"] == 6


def test_a_dropped_output_is_an_unexplained_gap(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, data = ran
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("DELETE FROM outputs WHERE output_id = (SELECT min(output_id) FROM outputs)")
    code = reconcile("--state", str(state), "--source-lines", str(data), "--sink", "state", "--emf")
    shown = capsys.readouterr().out
    assert code == 1
    assert "sink rows: 2  expected: 3  gap: 1" in shown and "unexplained gap" in shown
    emf = json.loads(shown.strip().splitlines()[-1])
    assert emf["ReconciliationGap"] == 1
    assert emf["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"] == "ReconciliationGap"


def test_a_source_event_never_processed_is_an_unexplained_gap(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = ran
    assert reconcile("--state", str(state), "--expected", "7") == 1
    assert "gap: 3 (unexplained: 2)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "cause"),
    [
        (["--window", "2020-01-01T00:00Z"], "window 2020-01-01T00:00Z has no counts"),
        (["--window", "yesterday"], "--window 'yesterday' is not a time"),
        (["--format", "xml"], "--format 'xml': one of table, json"),
        (["--expected", "many"], "--expected 'many' is not a whole number"),
        (["--expected", "-1"], "--expected '-1': at least 0"),
        (["--rows-per-event", "0"], "--rows-per-event '0': at least 1"),
        (["--sink", "redis:x"], "--sink kind 'redis'"),
        (["--sink", "parquet"], "--sink 'parquet': one of"),
        (["--sink", "table:out"], "--sink table:NAME is for the table target"),
        (["--sink", "cosmos:out"], "--sink cosmos:CONTAINER is for the cosmos target"),
        (["--expected", "1", "--source-lines", "x"], "give one of --expected"),
        (["--source-lines", "nowhere.jsonl"], "--source-lines nowhere.jsonl: no such file"),
        (["--pipeline", "other"], "no window counts for pipeline 'other'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str], flags: list[str], cause: str
) -> None:
    state, _ = ran
    before = digest(state)
    assert reconcile("--state", str(state), *flags) == 2
    shown = capsys.readouterr()
    assert shown.out == ""
    [line] = shown.err.splitlines()
    assert cause in line
    assert SECRET not in line
    assert digest(state) == before


def test_a_state_from_before_counts_were_kept(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = ran
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute(f"DROP TABLE {TABLE}")
    before = digest(state)
    assert reconcile("--state", str(state)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "the state holds no window counts" in line
    assert digest(state) == before
    with sqlite3.connect(state / "state.db") as conn:  # reading made no table
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert TABLE not in names and LEGACY_TABLE not in names


def test_a_state_with_the_summed_counts_of_earlier_versions_is_read(
    ran: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = ran
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute(f"DROP TABLE {TABLE}")
        conn.execute(
            f"CREATE TABLE {LEGACY_TABLE} (pipeline TEXT, window INTEGER, received INTEGER, "
            "processed INTEGER, duplicates INTEGER, filtered INTEGER, dead_lettered INTEGER, "
            "failed INTEGER, PRIMARY KEY (pipeline, window))"
        )
        conn.execute(f"INSERT INTO {LEGACY_TABLE} VALUES ('p', 0, 3, 3, 0, 0, 0, 0)")
    assert reconcile("--state", str(state), "--expected", "3") == 0
    assert "no unexplained gap" in capsys.readouterr().out


def test_expired_rows_are_skipped_and_swept_on_a_new_window(tmp_path: Path) -> None:
    database = Database(tmp_path / "state.db")
    counts = SqliteWindowCounts(database)
    counts.put(CountRow("p", 0, "b1", {"received": 1}, 10.0, 100.0))
    counts.put(CountRow("p", 0, "b2", {"received": 2}, 20.0, 200.0))
    assert counts.read(now=150.0) == {("p", 0): {**dict.fromkeys(COUNTS, 0), "received": 2}}
    counts.put(CountRow("p", 0, "b2", {"received": 2}, 20.0, 200.0))  # replaced, not added
    assert counts.read(now=0.0)[("p", 0)]["received"] == 3
    SqliteWindowCounts(database).put(CountRow("p", 3600, "b3", {"received": 4}, 150.0, 9e9))
    with database.reading() as conn:
        left = [r[0] for r in conn.execute(f"SELECT batch FROM {TABLE} ORDER BY batch")]
    assert left == ["b2", "b3"]  # b1 had expired when b3 was written
    database.close()


def test_no_state_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reconcile("--state", str(tmp_path / "none")) == 2
    assert "no onceflow state in" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_no_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile"]) == 2
    assert "name a target" in capsys.readouterr().err


def test_against_a_parquet_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pa = pytest.importorskip("pyarrow")
    from onceflow import Event, Pipeline
    from onceflow.adapters.local import LocalObjectStore
    from onceflow.adapters.local.database import Database
    from onceflow.adapters.local.window_counts import SqliteWindowCounts
    from onceflow.adapters.memory import MemoryIdempotencyStore
    from onceflow.lake import ParquetSink
    from onceflow.reconcile import count_windows

    sink = ParquetSink(
        LocalObjectStore(tmp_path / "lake"), "ds", schema=pa.schema([("n", pa.int64())])
    )
    database = Database(tmp_path / "st" / "state.db")
    pipe = Pipeline(lambda e: {"n": e.json()["n"]}, sink, MemoryIdempotencyStore(), name="lake")
    count_windows(pipe, SqliteWindowCounts(database))
    pipe.run_batch([Event(id=f"e{n}", source="s", data=b'{"n": %d}' % n) for n in range(5)])
    database.close()
    args = ["--state", str(tmp_path / "st"), "--expected", "5"]
    assert reconcile(*args, "--sink", f"parquet:{tmp_path / 'lake' / 'ds'}") == 0
    assert "sink rows: 5  expected: 5  gap: 0" in capsys.readouterr().out


def test_source_objects_in_a_folder(
    ran: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = ran
    landing = tmp_path / "landing"
    (landing / "sub").mkdir(parents=True)
    for n in range(4):
        (landing / ("sub" if n else "") / f"o{n}.json").write_text("{}")
    (landing / ".hidden").write_text("")  # a file being written, not an object yet
    assert reconcile("--state", str(state), "--source-objects", str(landing)) == 0
    assert "source: 4  processed + dead-lettered: 4  gap: 0" in capsys.readouterr().out
