"""Input fuzzing (issue 16 item 4, local part): JSON Lines and CSV files with BOMs, NUL
bytes, very long lines, odd encodings, lone surrogates and deep nesting, read by
`FileSource` and run on the SQLite state.

Every record is settled (processed or dead-lettered, none left failed), no exception
escapes the run, each bad record's reason names its file and line, and no reason carries
the payload's values (each generated value holds a marker the test looks for).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onceflow import Event, Pipeline
from onceflow.adapters.local import FileSource, LocalState, run_files

MARK = "Zq7"
"""In every generated value: a reason or log line quoting a value would show it."""


def _object(text: str, n: int) -> bytes:
    return json.dumps({"id": f"{MARK}{text}", "n": n, "s": f"{MARK}{text}"}).encode()


_text = st.text(max_size=12)
_line = st.one_of(
    st.builds(_object, _text, st.integers()),  # valid (lone surrogates written as escapes)
    st.builds(lambda t: _object(t, 1).replace(b"\\u", b"\\x"), _text),  # a bad escape
    st.builds(lambda t: f'{{"s":"{MARK}{t}"}}'.encode("utf-16"), _text),  # UTF-16 with its BOM
    st.builds(lambda t: f'{{"s":"{MARK}é{t}"}}'.encode("latin-1", "replace"), _text),
    st.builds(lambda b: MARK.encode() + b.replace(b"\n", b""), st.binary(max_size=20)),
    st.builds(lambda t: b'{"s":"' + MARK.encode() + b"\x00" + t.encode() + b'"}', _text),
    st.just(b"\xef\xbb\xbf" + _object("bom", 2)),  # a BOM, which only a first line may carry
    st.just(b'{"s":"' + MARK.encode() * 40_000 + b'"}'),  # a 120 KB line
    st.just(b"[" * 5_000 + b"]" * 5_000),
    st.just(b'{"id":"' + MARK.encode() + b'\\ud83d","n":1}'),  # half an emoji as the id
    st.sampled_from([b"", b"  ", b"\r", b"null", b"[1]", b'{"id":{}}', b'{"id":""}']),
)


def _settle(path: Path, *, fmt: str, id_field: str | None) -> tuple[Any, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory() as folder:
        state = LocalState(Path(folder) / "st")
        pipeline = Pipeline(_Echo(), state.sink, state.store, state.dead_letters)
        source = FileSource(path, state=state.database, fmt=fmt, id_field=id_field)  # type: ignore[arg-type]
        tally = anyio.run(lambda: run_files(pipeline, source, batch_size=7))
        letters = state.dead_letters.letters()
        state.close()
    return tally, letters


class _Echo:
    def process(self, event: Event) -> Any:
        return event.json()


def _check(tally: Any, letters: list[dict[str, Any]], name: str) -> None:
    assert not tally.failed and not tally.stopped
    assert tally.dead_lettered == len(letters)
    for letter in letters:
        message = letter["message"]
        assert MARK not in message, message  # no payload value in a reason
        assert f"{name} line " in message or f"{name}:" in message  # which record


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=12), crlf=st.booleans(), id_field=st.booleans())
def test_any_jsonl_file_settles_every_record_naming_line_and_cause(
    lines: list[bytes], crlf: bool, id_field: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.jsonl"
        data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
        path.write_bytes(data)
        tally, letters = _settle(path, fmt="jsonl", id_field="id" if id_field else None)
    _check(tally, letters, "in.jsonl")
    # One record per line that is not blank (a first line's BOM is not content).
    bodies = data.split(b"\n")[:-1]
    if bodies and bodies[0].startswith(b"\xef\xbb\xbf"):
        bodies[0] = bodies[0][3:]
    records = [b for b in bodies if b.rstrip(b"\r") and not b.rstrip(b"\r").isspace()]
    assert tally.events == len(records)


_cell = st.one_of(
    _text.map(lambda t: f"{MARK}{t}".replace("\n", " ")),
    st.just(f'"{MARK},quoted\nacross lines"'),
    st.just(MARK + "\x00nul"),
    st.just(MARK * 30_000),
)
_row = st.one_of(
    st.lists(_cell, min_size=1, max_size=4).map(lambda cells: ",".join(cells).encode()),
    st.binary(max_size=16).map(lambda b: MARK.encode() + b.replace(b"\n", b"")),
    st.builds(lambda t: f"{MARK},{t}".encode("utf-16"), _text),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, max_size=10), bom=st.booleans())
def test_any_csv_file_settles_every_record_naming_line_and_cause(
    rows: list[bytes], bom: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.csv"
        head = (b"\xef\xbb\xbf" if bom else b"") + b"id,a,b\n"
        path.write_bytes(head + b"".join(row + b"\n" for row in rows))
        tally, letters = _settle(path, fmt="csv", id_field=None)
    _check(tally, letters, "in.csv")
