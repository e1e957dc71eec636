"""`onceflow run` on one large file: chunks on `--workers N`, fan-in, and ids equal to the
unchunked path's (SIGKILLs and reruns: `test_chunk_kills.py`). Files are a few MB, split
into many small chunks with `--chunk-size`."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from onceflow.adapters.local.chunked_run import InputFiles, chunked_ledger
from onceflow.chunks import ChunkPlan

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 15_000
BAD = {7, 13_337, 14_999}  # `"bad": true`: the Doubler refuses them (dead letters)
CHUNK = "50000"
PROCESSOR = "tests.local.processors:Doubler"


def make_input(path: Path) -> None:
    with path.open("w") as handle:
        for n in range(EVENTS):
            handle.write(json.dumps({"n": n, "bad": n in BAD}) + "\n")
        handle.write("{not json\n")  # one broken line, dead-lettered alone


def onceflow(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    command = [
        str(Path(sys.executable).with_name("onceflow")),
        "run",
        "tests.local.processors:Doubler",
    ]
    return subprocess.Popen(
        [*command, *args, "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        **popen,
    )  # fmt: skip


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, (out + err).decode()


def outputs(path: Path) -> list[Any]:
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=str)


def stored(state: Path, table: str) -> int:
    try:
        with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0


def letters(state: Path) -> list[str]:
    query = "SELECT event_id FROM dead_letters ORDER BY event_id"
    with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
        return [row[0] for row in conn.execute(query)]


def ledger_files(state: Path) -> tuple[ChunkPlan | None, set[str]]:
    runs = state / "chunked" / "runs"
    if not runs.exists():
        return None, set()
    files = {p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file()}
    plans = [p for p in runs.rglob("plan.json")]
    plan = ChunkPlan.from_plain(json.loads(plans[0].read_text())) if plans else None
    return plan, files


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """The input, and the outputs of one run of the unchunked path (one file, one reader)."""
    folder = tmp_path_factory.mktemp("large")
    source = folder / "big.jsonl"
    make_input(source)
    out = folder / "clean.jsonl"
    code, text = finish(onceflow("--input", str(source), "--state", str(folder / "clean"),
                                 "--out", str(out)))  # fmt: skip
    assert code == 1, text  # dead letters make the exit status 1
    return source, outputs(out)


@pytest.mark.slow
def test_chunked_run_on_two_workers_equals_one_reader(
    clean: tuple[Path, list[Any]], tmp_path: Path
) -> None:
    source, expected = clean
    state, out = tmp_path / "state", tmp_path / "out.jsonl"
    args = ("--input", str(source), "--state", str(state), "--out", str(out), "--workers", "2")
    code, text = finish(onceflow(*args, "--chunk-size", CHUNK))
    assert code == 1, text
    assert outputs(out) == expected and len(expected) == EVENTS - len(BAD)
    plan, files = ledger_files(state)
    assert plan is not None and len(plan.chunks) > 4
    assert sum(f.endswith("/_SUCCESS") for f in files) == 1
    manifest = json.loads(next((state / "chunked").rglob("manifest.json")).read_text())
    assert (manifest["rows"], manifest["invalid"]) == (EVENTS + 1, 1)
    assert stored(state, "dead_letters") == len(BAD) + 1
    # The same line-numbered ids as the unchunked run: the broken line is the same letter.
    assert letters(state) == letters(source.parent / "clean")
    assert f"big.jsonl:{EVENTS + 1}" in letters(state)
    # Run again: every chunk is skipped, nothing is written again.
    code, text = finish(onceflow(*args, "--chunk-size", CHUNK))
    assert f"{len(plan.chunks)} chunks of big.jsonl: 0 run, {len(plan.chunks)} done" in text
    assert outputs(out) == expected


def test_only_one_large_file_takes_the_chunked_path(tmp_path: Path) -> None:
    from onceflow.adapters.local.chunked_run import wants_chunks
    from onceflow.cli import build_parser

    big = tmp_path / "big.jsonl"
    big.write_text('{"n": 1}\n' * 1000)
    parse = build_parser().parse_args
    base = ["run", "m:C", "--state", str(tmp_path / "s")]
    assert wants_chunks(parse([*base, "--input", str(big), "--chunk-size", "100"]))
    assert not wants_chunks(parse([*base, "--input", str(big)]))  # under 64 MiB
    assert not wants_chunks(parse([*base, "--input", str(big), "--chunk-size", "100", "--ordered"]))
    assert not wants_chunks(
        parse([*base, "--input", str(tmp_path / "*.jsonl"), "--chunk-size", "100"])
    )


def test_the_plan_is_made_from_ranged_reads_of_the_file(tmp_path: Path) -> None:
    import anyio

    (tmp_path / "big.jsonl").write_text('{"n": 1}\n' * 10_000)
    ledger = chunked_ledger(tmp_path / "state")
    plan = anyio.run(lambda: ledger.plan(InputFiles(tmp_path), "big.jsonl", chunk_size=9_000))
    assert len(plan.chunks) == 10 and plan.chunks[-1].end == 90_000
    assert not (tmp_path / ".onceflow-staging").exists()  # nothing written next to the input


@pytest.mark.slow
def test_a_csv_whose_quoted_fields_hold_newlines_runs_chunked_as_it_runs_whole(
    tmp_path: Path,
) -> None:
    source = tmp_path / "notes.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["n", "note"])
        for n in range(3_000):
            writer.writerow([n, f'first\n"second"\n{n}' if n % 4 == 0 else f"note {n}"])
    whole, chunked = tmp_path / "whole.jsonl", tmp_path / "chunked.jsonl"
    code, text = finish(onceflow("--input", str(source), "--state", str(tmp_path / "w"),
                                 "--out", str(whole)))  # fmt: skip
    assert code == 0, text
    args = ("--out", str(chunked), "--workers", "2", "--chunk-size", "5000")
    code, text = finish(onceflow("--input", str(source), "--state", str(tmp_path / "c"), *args))
    assert code == 0, text
    plan, _ = ledger_files(tmp_path / "c")
    assert plan is not None and len(plan.chunks) > 5
    assert outputs(chunked) == outputs(whole) and len(outputs(whole)) == 3_000
