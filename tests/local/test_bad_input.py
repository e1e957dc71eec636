"""One bad record, one bad output: only that event is refused, on SQLite and through the CLI.

Each test here failed before its fix (issue 17 items 7, 9, 10, 11; issue 12 item 6's SQLite
part): a lone surrogate in an id or an output failed the whole claim or commit on every
run, a deeply nested line stopped the run, the dead-letter file missed letters of a killed
run, and a Decimal came back as a float.
"""

from __future__ import annotations

import json
import os
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.local import FileSource, LocalState, run_files
from onceflow.cli import main

DOUBLER = "tests.local.processors:Doubler"
ECHO = "tests.local.processors:Echo"
HALF_EMOJI = "\ud83d"
"""What JavaScript's JSON.stringify writes for half of a surrogate pair: a lone surrogate."""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps at the terminal width; a wide one keeps each message on one line."""
    monkeypatch.setenv("COLUMNS", "200")


def run(*args: str) -> int:
    return main(["run", *args, "--quiet"])


def letters_file(state: Path) -> list[dict[str, Any]]:
    text = (state / "dead-letters.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_lone_surrogate_id_is_one_dead_letter_and_the_summary_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in.jsonl"
    # json.dumps writes the lone surrogate as the escape \ud83d, as JavaScript does.
    rows = [{"id": "a", "n": 1}, {"id": HALF_EMOJI, "n": 271828}, {"id": "c", "n": 3}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = tmp_path / "st"
    assert run(DOUBLER, "-i", str(data), "-s", str(state), "--id-field", "id") == 1
    shown = capsys.readouterr().out
    assert "processed     │      2" in shown and "dead-lettered │      1" in shown
    (letter,) = letters_file(state)
    assert letter["key"] == "file:in.jsonl#in.jsonl:2"
    assert "in.jsonl line 2: the 'id' field holds a lone surrogate" in letter["message"]
    assert "271828" not in letter["message"]  # no payload values in the reason
    # The checkpoint moved past it: a rerun has nothing left to do.
    assert run(DOUBLER, "-i", str(data), "-s", str(state), "--id-field", "id") == 0
    assert "processed     │      0" in capsys.readouterr().out


def test_a_lone_surrogate_partition_value_is_one_dead_letter(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    rows = [{"id": "a", "u": "x"}, {"id": "b", "u": HALF_EMOJI}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = LocalState(tmp_path / "st")
    pipeline = Pipeline(lambda e: e.id, state.sink, state.store, state.dead_letters)
    source = FileSource(data, state=state.database, id_field="id", partition_field="u")
    tally = pipeline_run(pipeline, source)
    assert (tally.processed, tally.dead_lettered) == (1, 1)
    (letter,) = state.dead_letters.letters()
    assert "the 'u' field holds a lone surrogate" in letter["message"]
    state.close()


def pipeline_run(pipeline: Pipeline, source: FileSource) -> Any:
    import anyio

    return anyio.run(lambda: run_files(pipeline, source))


class SurrogateOutput:
    """Event `bad` returns text with a lone surrogate; event `letter` is refused with one."""

    def process(self, event: Event) -> dict[str, Any]:
        if event.id == "letter":
            raise PermanentError(f"cannot price {HALF_EMOJI}")
        text = HALF_EMOJI if event.id == "bad" else "fine"
        return {"id": event.id, "text": text, "nested": [{"t": text}]}


def test_a_lone_surrogate_in_one_output_is_stored_exactly_and_the_batch_commits(
    tmp_path: Path,
) -> None:
    state = LocalState(tmp_path / "st")
    pipeline = Pipeline(SurrogateOutput(), state.sink, state.store, state.dead_letters)
    events = [Event(id=i, source="t", data=b"{}") for i in ("a", "bad", "letter", "c")]
    result = pipeline.run_batch(events)
    assert result.processed == ["a", "bad", "c"] and result.dead_lettered == ["letter"]
    stored = state.sink.contents()
    # The escape is the same JSON value: the text comes back exactly as returned.
    assert stored["t#bad#0"] == {"id": "bad", "text": HALF_EMOJI, "nested": [{"t": HALF_EMOJI}]}
    assert stored["t#a#0"]["text"] == "fine"
    (letter,) = state.dead_letters.letters()
    assert letter["message"].endswith(f"cannot price {HALF_EMOJI} (permanent error)")
    # The JSON Lines exports hold the escapes too, so they are valid UTF-8 and exact.
    assert state.sink.export_jsonl(tmp_path / "out.jsonl") == 3
    exported = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert exported[1]["text"] == HALF_EMOJI
    assert state.dead_letters.export() == 1
    assert pipeline.run_batch(events).duplicates == ["a", "bad", "letter", "c"]
    state.close()


def test_a_line_nested_too_deeply_is_one_dead_letter(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    deep = b"[" * 100_000 + b"]" * 100_000
    deeper_than_pydantic = b'{"n":2,"d":' + b"[" * 500 + b"]" * 500 + b"}"
    data.write_bytes(b'{"n":1}\n' + deep + b"\n" + deeper_than_pydantic + b'\n{"n":3}\n')
    state = tmp_path / "st"
    out = tmp_path / "out.jsonl"
    assert run(ECHO, "-i", str(data), "-s", str(state), "--out", str(out)) == 1
    assert [json.loads(x) for x in out.read_text().splitlines()] == [{"n": 1}, {"n": 3}]
    letters = letters_file(state)
    assert [x["key"] for x in letters] == ["file:in.jsonl#in.jsonl:2", "file:in.jsonl#in.jsonl:3"]
    assert all("not readable JSON (nested too deeply" in x["message"] for x in letters)


def test_the_dead_letter_file_holds_letters_of_a_killed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first.jsonl"
    first.write_text('{"id": "e1", "n": 1, "bad": true}\n')
    state = tmp_path / "st"
    assert run(DOUBLER, "-i", str(first), "-s", str(state), "--id-field", "id") == 1
    # A run killed after committing a letter, before exporting the file: the letter is
    # only in the table.
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute(
            "INSERT INTO dead_letters SELECT 'files#e7#dead-letter', 'files#e7', 'e7', 0, NULL, "
            "json_set(value, '$.key', 'files#e7'), written_at FROM dead_letters LIMIT 1"
        )
    assert len(letters_file(state)) == 1
    capsys.readouterr()
    second = tmp_path / "second.jsonl"
    second.write_text('{"id": "e2", "n": 2}\n')
    assert run(DOUBLER, "-i", str(second), "-s", str(state), "--id-field", "id") == 0
    assert sorted(x["key"] for x in letters_file(state)) == ["files#e1", "files#e7"]
    assert "all 2 letters (every run's)" in capsys.readouterr().out


class Ledger:
    """An amount with more digits than a float holds."""

    def process(self, event: Event) -> dict[str, Any]:
        return {"amount": Decimal("12345678901234567.89"), "fee": Decimal("0.10"), "n": 1,
                "ratio": 0.1}  # fmt: skip


def test_decimals_come_out_of_sqlite_with_every_digit(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "st")
    pipeline = Pipeline(Ledger(), state.sink, state.store, state.dead_letters)
    pipeline.run_batch([Event(id="p1", source="t", data=b"{}")])
    (value,) = state.sink.contents().values()
    # Exact JSON number text in the table; read back as Decimals, floats stay floats.
    assert value == {
        "amount": Decimal("12345678901234567.89"), "fee": Decimal("0.10"), "n": 1, "ratio": 0.1
    }  # fmt: skip
    assert type(value["ratio"]) is float
    assert str(value["fee"]) == "0.10" and type(value["n"]) is int
    state.sink.export_jsonl(tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == (
        '{"amount":12345678901234567.89,"fee":0.10,"n":1,"ratio":0.1}\n'
    )
    state.close()


def test_a_business_key_with_a_lone_surrogate_is_claimed_completed_and_replayed(
    tmp_path: Path,
) -> None:
    state = LocalState(tmp_path / "st")
    refuse = {"on": True}

    def process(event: Event) -> dict[str, Any]:
        if refuse["on"] and event.id == "b":
            raise PermanentError("refused")
        return {"id": event.id}

    pipeline = Pipeline(process, state.sink, state.store, state.dead_letters, key="order")
    events = [
        Event(id=i, source="q", data=json.dumps({"order": f"o{HALF_EMOJI}{i}"}).encode())
        for i in ("a", "b", "c")
    ]
    result = pipeline.run_batch(events)
    assert result.processed == ["a", "c"] and result.dead_lettered == ["b"]
    assert pipeline.run_batch(events).duplicates == ["a", "b", "c"]
    (letter,) = state.dead_letters.letters()
    assert letter["key"] == f"order#o{HALF_EMOJI}b"
    # A replay frees the letter's key and deletes the letter once it succeeded.
    assert state.store.reopen_dead_lettered([letter["key"]]) == {letter["key"]: True}
    refuse["on"] = False
    assert pipeline.run_batch(events[1:2]).processed == ["b"]
    state.dead_letters.delete([f"{letter['key']}#dead-letter"])
    assert state.dead_letters.letters() == []
    state.close()


def test_a_file_name_that_is_not_utf8_is_read_and_named_with_escapes(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    raw_name = os.path.join(os.fsencode(landing), b"\xffx.jsonl")
    with open(raw_name, "wb") as handle:
        handle.write(b'{"n":1}\n{oops\n')
    state = tmp_path / "st"
    out = tmp_path / "out.jsonl"
    assert run(ECHO, "-i", str(landing), "-s", str(state), "--out", str(out)) == 1
    assert out.read_text() == '{"n":1}\n'
    (letter,) = letters_file(state)
    assert letter["message"].endswith("\\xffx.jsonl line 2: not valid JSON "
                                      "(Expecting property name enclosed in double quotes at "
                                      "column 2) (permanent error)")  # fmt: skip
    assert os.listdir(os.fsencode(landing / "processed")) == [b"\xffx.jsonl"]
