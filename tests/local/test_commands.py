"""`onceflow run`, `dead-letters` and `state`, driven through the real command line."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from onceflow.cli import main
from tests.local import processors

DOUBLER = "tests.local.processors:Doubler"


def lines(path: Path, rows: list[object], raw: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + raw)
    return path


def outputs(state: Path) -> dict[str, object]:
    with sqlite3.connect(state / "state.db") as conn:
        return {k: json.loads(v) for k, v in conn.execute("SELECT output_id, value FROM outputs")}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at the terminal width; a wide one keeps each message on one line."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows: list[object] = [{"id": f"e{n}", "n": n} for n in range(5)]
    rows += [{"id": "e1", "n": 1}, {"id": "e9", "n": 9, "bad": True}]
    return lines(tmp_path / "in.jsonl", rows, raw=b"{broken\n")


def run(*args: str) -> int:
    return main(["run", *args, "--quiet"])


def test_run_counts_exit_status_and_a_second_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "st"
    out = tmp_path / "out.jsonl"
    code = run(
        DOUBLER, "-i", str(data), "--state", str(state), "--id-field", "id", "--out", str(out)
    )
    shown = capsys.readouterr().out
    assert code == 1  # two dead letters
    assert "processed     │      5" in shown and "duplicates    │      1" in shown
    assert "dead-lettered │      2" in shown
    assert "in.jsonl line 8: not valid JSON" in shown and "n=9 is marked bad" in shown
    assert len(out.read_text().splitlines()) == 5
    assert outputs(state)["files#e3#0"] == {"n": 3, "double": 6}
    letters = (state / "dead-letters.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["key"] for x in letters) == [
        "file:in.jsonl#in.jsonl:8",
        "files#e9",
    ]
    # The checkpoint is at the end: nothing is read again; from the start all are duplicates.
    assert run(DOUBLER, "-i", str(data), "--state", str(state), "--id-field", "id") == 0
    assert "processed     │      0" in capsys.readouterr().out
    assert run(DOUBLER, "-i", str(data), "-s", str(state), "--id-field", "id", "--from-start") == 0
    assert "duplicates    │      8" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nowhere.module:X", "cannot import module 'nowhere.module'"),
        ("tests.local.processors:Missing", "has no 'Missing'"),
        ("tests.local.processors", "is not MODULE:NAME"),
        ("tests.local.processors:Broken", "cannot create tests.local.processors:Broken()"),
        ("tests.local.processors:NOT_A_PROCESSOR", "has no process(event) method"),
        ("tests.local.processors:NoSetup", "the run stopped: RuntimeError: cannot reach"),
    ],
)
def test_bad_processor_is_one_line(
    spec: str, message: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(spec, "-i", str(data), "--state", str(tmp_path / "st")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_input_and_corrupt_state_are_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(DOUBLER, "-i", str(tmp_path / "nope.jsonl"), "-s", str(tmp_path / "a")) == 2
    assert "input file" in capsys.readouterr().err
    corrupt = tmp_path / "bad"
    corrupt.mkdir()
    (corrupt / "state.db").write_bytes(b"garbage" * 1000)
    assert run(DOUBLER, "-i", str(data), "--state", str(corrupt)) == 2
    err = capsys.readouterr().err
    assert "state.db is corrupt or not a SQLite file" in err and "Traceback" not in err
    assert main(["--verbose", "run", DOUBLER, "-i", str(data), "-s", str(corrupt), "-q"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["state", "--state", str(tmp_path / "never")]) == 2
    assert "no onceflow state in" in capsys.readouterr().err


def test_dead_letters_list_show_and_replay(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "st"
    run(DOUBLER, "-i", str(data), "--state", str(state), "--id-field", "id")
    capsys.readouterr()
    assert main(["dead-letters", "list", "--state", str(state)]) == 0
    listed = capsys.readouterr().out
    assert "files#e9" in listed and "in.jsonl:8" in listed
    assert main(["dead-letters", "show", "e9", "--state", str(state)]) == 0
    shown = capsys.readouterr().out
    assert '"error_type": "PermanentError"' in shown and "Traceback" in shown
    assert main(["dead-letters", "show", "zzz", "--state", str(state)]) == 2

    # After the fix, a replay applies e9 once; the broken line stays a dead letter.
    monkeypatch.setenv("ONCEFLOW_TEST_FIXED", "1")
    processors.CALLS.clear()
    assert main(["dead-letters", "replay", "--state", str(state)]) == 1
    assert processors.CALLS == ["e9"]
    assert outputs(state)["files#e9#0"] == {"n": 9, "double": 18}
    letters = (state / "dead-letters.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in letters] == ["file:in.jsonl#in.jsonl:8"]

    # A letter whose key has succeeded since (a replay that crashed before tidying up)
    # is dropped without running the processor again.
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute(
            "INSERT INTO dead_letters SELECT 'files#e9#dead-letter', 'files#e9', 'e9', 0, NULL, "
            "json_set(value, '$.key', 'files#e9'), written_at FROM dead_letters LIMIT 1"
        )
    processors.CALLS.clear()
    capsys.readouterr()
    main(["dead-letters", "replay", DOUBLER, "--state", str(state), "--key", "files#e9"])
    assert processors.CALLS == []
    assert "1 had already succeeded" in capsys.readouterr().out


def test_state_shows_counts_lease_and_checkpoint(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "st"
    run(DOUBLER, "-i", str(data), "--state", str(state), "--id-field", "id")
    capsys.readouterr()
    assert main(["state", "--state", str(state)]) == 0
    shown = capsys.readouterr().out
    assert "succeeded" in shown and "│ 5 " in shown.replace("5  ", "5 ")
    assert "file:in.jsonl: line 8" in shown
    assert "#1 tests.local.processors:Doubler" in shown
    assert main(["state", "--state", str(state), "--purge-expired"]) == 0
    assert "purged 0 expired records" in capsys.readouterr().out


def test_landing_folder_and_csv_through_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.csv").write_text("id,n\na,1\nb\nc,3\n")
    state = tmp_path / "st"
    assert run(DOUBLER, "-i", str(landing), "--state", str(state), "--id-field", "id") == 1
    assert "expected 2 columns, found 1 (missing n)" in capsys.readouterr().out
    assert (landing / "processed" / "a.csv").exists()


def _row(shown: str, name: str, count: int) -> bool:
    """Whether the run summary shows `count` in row `name`, however wide its column."""
    return re.search(rf"{re.escape(name)}\s*│\s*{count:,} │", shown) is not None


def test_workers_split_the_input_and_apply_each_event_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows: list[object] = [{"id": f"e{n}", "n": n, "u": f"u{n % 7}"} for n in range(400)]
    data = lines(tmp_path / "in.jsonl", rows + rows[:50], raw=b"{broken\n")
    state = tmp_path / "st"
    code = run(DOUBLER, "-i", str(data), "-s", str(state), "--id-field", "id",
               "--partition-field", "u", "--ordered", "--workers", "2")  # fmt: skip
    shown = capsys.readouterr().out
    assert code == 1
    # The summary's column is as wide as its widest cell (a loaded machine's wall time).
    assert _row(shown, "processed", 400) and _row(shown, "duplicates", 50)
    assert _row(shown, "dead-lettered", 1)
    assert len(outputs(state)) == 400
    assert len((state / "dead-letters.jsonl").read_text().splitlines()) == 1
    code = run(DOUBLER, "-i", str(data), "-s", str(state), "--id-field", "id",
               "--partition-field", "u", "--workers", "2", "--from-start")  # fmt: skip
    assert code == 0
    assert _row(capsys.readouterr().out, "duplicates", 451)


FLAKY = "tests.local.processors:FlakyReplay"


def one_key_of_letters(tmp_path: Path) -> Path:
    """A state whose four dead letters are events e0..e3 of one partition key, in order."""
    rows = [{"id": f"e{n}", "n": n, "lane": "p", "bad": True} for n in range(4)]
    data = lines(tmp_path / "lane.jsonl", rows)
    state = tmp_path / "st"
    run(
        DOUBLER,
        "-i",
        str(data),
        "-s",
        str(state),
        "--id-field",
        "id",
        "--partition-field",
        "lane",
        "--ordered",
    )
    letters = (state / "dead-letters.jsonl").read_text().splitlines()
    assert len(letters) == 4
    return state


def test_replay_keeps_a_keys_order_across_batches_and_deliveries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from onceflow.adapters.local import dead_letter_commands

    state = one_key_of_letters(tmp_path)
    monkeypatch.setattr(dead_letter_commands, "_REPLAY_BATCH", 2)
    processors.REPLAY.update(fail_once={"e0"}, always=set(), applied=[])
    capsys.readouterr()
    code = main(
        [
            "dead-letters",
            "replay",
            FLAKY,
            "-s",
            str(state),
            "--max-deliveries",
            "3",
            "--max-attempts",
            "1",
            "--retry-wait",
            "0",
        ]
    )
    # e0 failed on the first delivery: e1 (same batch) and e2, e3 (the next batch) waited.
    assert processors.REPLAY["applied"] == ["e0", "e1", "e2", "e3"]
    assert code == 0, capsys.readouterr().out
    assert (state / "dead-letters.jsonl").read_text() == ""


def test_replay_dead_letters_again_after_max_deliveries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = one_key_of_letters(tmp_path)
    processors.REPLAY.update(fail_once=set(), always={"e0"}, applied=[])
    capsys.readouterr()
    code = main(
        [
            "dead-letters",
            "replay",
            FLAKY,
            "-s",
            str(state),
            "--max-deliveries",
            "2",
            "--retry-wait",
            "0",
        ]
    )
    assert code == 1
    assert processors.REPLAY["applied"] == ["e1", "e2", "e3"]
    [letter] = [json.loads(x) for x in (state / "dead-letters.jsonl").read_text().splitlines()]
    assert letter["key"].endswith("e0") and "failed 2 deliveries" in letter["message"]
    assert "ConnectionError" in letter["message"]
