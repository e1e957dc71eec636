"""Landing folders whose files grow or are still being written (issue 17 items 3 and 4).

Before the fix a file that grew was a new file (its size and mtime were in its event keys),
so `--keep-files` applied its first lines again, and `--watch` read a file whose writer had
paused mid-line, dead-lettered the cut line and moved the file away from its writer. Writers
here are open file handles of this process: `/proc` shows them as open for writing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from onceflow.adapters.local import Database, DirectorySource
from onceflow.cli import main
from onceflow.event import Event
from onceflow.records import InvalidRecord

ECHO = "tests.local.processors:Echo"


def lines(*numbers: int) -> bytes:
    return b"".join(json.dumps({"n": n}).encode() + b"\n" for n in numbers)


def run(*args: str) -> int:
    return main(["run", *args, "--quiet"])


def exported(path: Path) -> list[int]:
    return [json.loads(x)["n"] for x in path.read_text().splitlines()]


def test_keep_files_applies_only_the_lines_a_file_gained(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    grows = landing / "a.jsonl"
    grows.write_bytes(lines(1, 2, 3))
    state, out = str(tmp_path / "st"), tmp_path / "out.jsonl"
    args = (ECHO, "-i", str(landing), "-s", state, "--keep-files", "--out", str(out))
    assert run(*args) == 0
    with grows.open("ab") as handle:
        handle.write(lines(4, 5))
    assert run(*args) == 0
    assert exported(out) == [1, 2, 3, 4, 5]
    assert run(*args) == 0  # nothing new
    # A file whose first bytes changed is another file under the same name: read in full.
    grows.write_bytes(lines(7, 8))
    assert run(*args) == 0
    assert exported(out) == [1, 2, 3, 4, 5, 7, 8]


def test_a_file_still_written_is_read_to_its_last_whole_line_and_not_moved(
    tmp_path: Path,
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    state, out = str(tmp_path / "st"), tmp_path / "out.jsonl"
    args = (ECHO, "-i", str(landing), "-s", state, "--out", str(out))
    with (landing / "a.jsonl").open("wb") as writer:
        writer.write(lines(1, 2) + b'{"n":')  # the writer pauses mid-line
        writer.flush()
        assert run(*args) == 0  # nothing dead-lettered
        assert exported(out) == [1, 2]
        assert (landing / "a.jsonl").exists()  # left with its writer
        writer.write(b"3}\n" + lines(4))
    assert run(*args) == 0
    assert exported(out) == [1, 2, 3, 4]
    assert (landing / "processed" / "a.jsonl").read_bytes() == lines(1, 2) + b'{"n":3}\n' + lines(4)
    assert not (landing / "a.jsonl").exists()


@pytest.mark.anyio
async def test_watch_waits_for_a_writer_that_pauses_mid_line(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    source = DirectorySource(
        landing, state=Database(tmp_path / "state.db"), watch=True, poll_seconds=0.02,
        settle_seconds=0.0,
    )  # fmt: skip
    seen: list[Event | InvalidRecord] = []

    async def consume() -> None:
        async for batch in source.batches(10):
            seen.extend(batch)
            await source.ack(batch, set())

    async def until(done: int) -> None:
        while len(seen) < done:
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        with (landing / "a.jsonl").open("wb") as writer:
            writer.write(lines(1) + b'{"n":')
            writer.flush()
            await until(1)
            for _ in range(10):  # several polls while the writer holds the file
                await anyio.sleep(0.02)
            assert (landing / "a.jsonl").exists()
            writer.write(b"2}\n" + lines(3))
            writer.flush()
            await until(3)
            writer.write(lines(4))
        await until(4)
        while (landing / "a.jsonl").exists():
            await anyio.sleep(0.02)
        source.stop()
    assert all(isinstance(r, Event) for r in seen)
    assert [r.json()["n"] for r in seen if isinstance(r, Event)] == [1, 2, 3, 4]
    assert len({r.key for r in seen}) == 4
    assert (landing / "processed" / "a.jsonl").read_bytes() == (
        lines(1) + b'{"n":2}\n' + lines(3, 4)
    )


@pytest.mark.anyio
async def test_keep_files_watch_reads_appended_lines_with_new_keys_only(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.jsonl").write_bytes(lines(1, 2))
    source = DirectorySource(
        landing, state=Database(tmp_path / "state.db"), watch=True, poll_seconds=0.02,
        settle_seconds=0.0, move_to=None,
    )  # fmt: skip
    batches: list[Sequence[Event | InvalidRecord]] = []

    async def consume() -> None:
        async for batch in source.batches(10):
            batches.append(batch)
            await source.ack(batch, set())

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        while not batches:
            await anyio.sleep(0.02)
        with (landing / "a.jsonl").open("ab") as handle:
            handle.write(lines(3))
        while sum(map(len, batches)) < 3:
            await anyio.sleep(0.02)
        source.stop()
    ids = [r.id for batch in batches for r in batch]
    assert ids == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3"]
    assert len({r.source for batch in batches for r in batch}) == 1


def test_workers_agree_on_a_growing_files_generation(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    grows = landing / "a.jsonl"
    grows.write_bytes(lines(*range(1, 41)))
    state, out = str(tmp_path / "st"), tmp_path / "out.jsonl"
    args = (ECHO, "-i", str(landing), "-s", state, "--keep-files", "--workers", "2")
    assert run(*args) == 0
    with grows.open("ab") as handle:
        handle.write(lines(*range(41, 61)))
    assert run(*args, "--out", str(out)) == 0
    assert sorted(exported(out)) == list(range(1, 61))
