"""Chunk planning, chunk reading and fan-in on the memory object store (`onceflow.chunks`,
`onceflow.fan_in`); the local, S3 and Blob stores run the same code in their own suites."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from onceflow import Event, Pipeline
from onceflow.adapters.memory import MemoryIdempotencyStore, MemoryObjectStore, MemorySink
from onceflow.chunks import ChunkPlan, ChunkReader, Record, plan_chunks
from onceflow.fan_in import ChunkIncomplete, ChunkLedger, run_chunk
from onceflow.records import InvalidRecord, ObjectInfo

pytestmark = pytest.mark.anyio


class CountingObjects:
    """A memory store that counts the bytes read, to show planning never reads it whole."""

    def __init__(self, inner: MemoryObjectStore) -> None:
        self.inner = inner
        self.read = 0

    async def head(self, path: str) -> ObjectInfo | None:
        return await self.inner.head(path)

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        data = await self.inner.get_range(path, start, end)
        self.read += len(data)
        return data


def jsonl(count: int, bad: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    lines = [
        b'{"n": ' + str(i).encode() + b", oops\n" if i in bad else
        json.dumps({"n": i, "pad": "x" * (i % 37)}).encode() + b"\n"
        for i in range(count)
    ]  # fmt: skip
    return b"".join(lines)


async def read_all(objects: Any, plan: ChunkPlan, **reader: Any) -> list[Record]:
    records: list[Record] = []
    for chunk in plan.chunks:
        async for batch in ChunkReader(objects, plan, chunk.index, **reader).batches(97):
            records.extend(batch)
    return records


async def test_jsonl_chunks_start_at_line_starts_and_planning_reads_little() -> None:
    store = MemoryObjectStore()
    data = jsonl(20_000)
    await store.put("in/a.jsonl", data)
    counting = CountingObjects(store)
    plan = await plan_chunks(counting, "in/a.jsonl", chunk_size=40_000)
    assert len(plan.chunks) > 10
    assert plan.chunks[0].start == 0 and plan.chunks[-1].end == len(data)
    for before, after in zip(plan.chunks, plan.chunks[1:], strict=False):
        assert before.end == after.start and data[after.start - 1 : after.start] == b"\n"
    assert counting.read < len(data) // 4  # a probe near each boundary, not the object
    records = await read_all(store, plan)
    assert [r.json()["n"] for r in records if isinstance(r, Event)] == list(range(20_000))


async def test_record_ids_do_not_depend_on_the_chunk_size() -> None:
    store = MemoryObjectStore()
    await store.put("a.jsonl", jsonl(3_000))
    small = await read_all(store, await plan_chunks(store, "a.jsonl", chunk_size=5_000))
    whole = await read_all(store, await plan_chunks(store, "a.jsonl", chunk_size=1 << 30))
    assert [r.key for r in small] == [r.key for r in whole]
    assert len({r.key for r in small}) == 3_000


async def test_one_bad_line_is_one_invalid_record_naming_object_and_offset() -> None:
    store = MemoryObjectStore()
    data = jsonl(2_000, bad={1234})
    await store.put("a.jsonl", data)
    records = await read_all(store, await plan_chunks(store, "a.jsonl", chunk_size=4_000))
    invalid = [r for r in records if isinstance(r, InvalidRecord)]
    assert len(records) == 2_000 and len(invalid) == 1
    offset = data.index(b'{"n": 1234, oops')
    assert invalid[0].id == f"a.jsonl@{offset}"  # a plan that did not count lines
    assert f"a.jsonl byte {offset}" in invalid[0].reason and "not valid JSON" in invalid[0].reason
    assert "1234" not in invalid[0].reason.replace(str(offset), "")  # no payload values


@pytest.mark.parametrize("chunk_size", [1, 997, 4_000, 1 << 30])
async def test_a_plan_that_counts_lines_gives_the_unchunked_readers_ids(
    chunk_size: int, tmp_path: Path
) -> None:
    from onceflow.adapters.local.file_records import RecordReader

    data = b"\xef\xbb\xbf" + jsonl(2_000, bad={0, 1234, 1999}).replace(b'{"n": 7,', b'\n{"n": 7,')
    (tmp_path / "a.jsonl").write_bytes(data)
    store = MemoryObjectStore()
    await store.put("a.jsonl", data)
    plan = await plan_chunks(store, "a.jsonl", chunk_size=chunk_size, lines=True)
    assert all(c.first_line is not None for c in plan.chunks)
    chunked = await read_all(store, plan, source="file:a.jsonl")
    whole = [
        p.record
        for p in RecordReader(tmp_path / "a.jsonl", "a.jsonl", "jsonl", "file:a.jsonl").read()
    ]
    assert [(type(r), r.id, r.source) for r in chunked] == [
        (type(r), r.id, r.source) for r in whole
    ]
    bad = [r.id for r in chunked if isinstance(r, InvalidRecord)]
    assert bad == ["a.jsonl:1", "a.jsonl:1236", "a.jsonl:2001"]  # a blank line at 8
    assert [r.key for r in chunked if isinstance(r, Event)] == [
        r.key for r in whole if isinstance(r, Event)
    ]


@pytest.mark.parametrize("chunk_size", [1, 50, 333, 1 << 20])
async def test_csv_boundaries_never_split_a_quoted_field_holding_newlines(
    chunk_size: int, tmp_path: Path
) -> None:
    from onceflow.adapters.local.file_records import RecordReader

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "note"])
    for i in range(300):
        # Every third note spans lines (some with "quoted" words): a planner looking only
        # for newlines would cut such a record in two.
        note = f'line one\n"two"\n\nfour {i}' if i % 3 == 0 else f"plain {i}"
        writer.writerow([i, note])
    data = text.getvalue().encode()
    (tmp_path / "t.csv").write_bytes(data)
    store = MemoryObjectStore()
    await store.put("t.csv", data)
    plan = await plan_chunks(store, "t.csv", chunk_size=chunk_size)
    assert len(plan.chunks) > (1 if chunk_size < 1000 else 0)
    rows = list(csv.reader(io.StringIO(text.getvalue())))
    for chunk in plan.chunks:  # every chunk starts at a record's start
        assert (
            data[: chunk.start].count(b'"') % 2 == 0
            and data[chunk.start - 1 : chunk.start] == b"\n"
        )
    records = await read_all(store, plan, source="file:t.csv")
    assert all(isinstance(r, Event) for r in records)
    assert [list(r.json().values()) for r in records] == rows[1:]
    whole = [
        p.record for p in RecordReader(tmp_path / "t.csv", "t.csv", "csv", "file:t.csv").read()
    ]
    assert [(r.id, r.data) for r in records] == [(r.id, r.data) for r in whole]


async def test_csv_header_is_carried_to_every_chunk() -> None:
    store = MemoryObjectStore()
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["id", "name", "amount"])
    for i in range(3_000):
        writer.writerow([i, f"customer {i}", i * 3])
    text.write("9999,short\n")  # a missing column: dead-lettered alone
    await store.put("t.csv", text.getvalue().encode())
    plan = await plan_chunks(store, "t.csv", chunk_size=8_000)
    assert plan.header == "id,name,amount" and len(plan.chunks) > 5
    records = await read_all(store, plan, id_field="id")
    events = [r for r in records if isinstance(r, Event)]
    assert [e.id for e in events] == [str(i) for i in range(3_000)]
    assert events[-1].json() == {"id": "2999", "name": "customer 2999", "amount": "8997"}
    (bad,) = [r for r in records if isinstance(r, InvalidRecord)]
    assert "expected 3 columns, found 2 (missing amount)" in bad.reason


async def test_parquet_splits_by_row_group_with_ranged_reads() -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buffer = io.BytesIO()
    table = pa.table({"n": list(range(10_000)), "s": [f"v{i}" for i in range(10_000)]})
    pq.write_table(table, buffer, row_group_size=1_000)
    store = MemoryObjectStore()
    await store.put("t.parquet", buffer.getvalue())
    plan = await plan_chunks(store, "t.parquet", chunk_size=1)
    assert len(plan.chunks) == 10
    assert [c.first_row for c in plan.chunks] == list(range(0, 10_000, 1_000))
    records = await read_all(store, plan)
    assert [r.json()["n"] for r in records if isinstance(r, Event)] == list(range(10_000))
    assert records[5].id == "t.parquet:6"  # 1-based, as the unchunked reader numbers rows


async def test_gzip_is_one_chunk_streamed_by_one_worker_even_of_two_members() -> None:
    store = MemoryObjectStore()
    data = jsonl(5_000)
    half = data.index(b"\n", len(data) // 2) + 1
    await store.put("a.jsonl.gz", gzip.compress(data[:half]) + gzip.compress(data[half:]))
    await store.put("plain.jsonl", data)
    plan = await plan_chunks(store, "a.jsonl.gz", chunk_size=1_000)
    assert len(plan.chunks) == 1 and plan.compression == "gzip"
    assert plan.note is not None and "one worker" in plan.note
    zipped = await read_all(store, plan, read_size=4_096)
    plain = await read_all(store, await plan_chunks(store, "plain.jsonl", chunk_size=1_000))
    assert [r.data for r in zipped] == [r.data for r in plain]  # type: ignore[union-attr]


class Flaky:
    """Doubles `n`; fails (transiently) for `n` in `down` while `down` is not empty."""

    def __init__(self) -> None:
        self.down: set[int] = set()
        self.calls = 0

    def process(self, event: Event) -> dict[str, int]:
        self.calls += 1
        n = event.json()["n"]
        if n in self.down:
            raise ConnectionError("the downstream is unreachable")
        return {"n": n, "double": 2 * n}


async def test_fan_in_writes_manifest_and_success_once_after_the_last_chunk() -> None:
    inputs, ledger_store = MemoryObjectStore(), MemoryObjectStore()
    await inputs.put("a.jsonl", jsonl(4_000, bad={17}))
    ledger = ChunkLedger(ledger_store)
    plan = await ledger.plan(inputs, "a.jsonl", chunk_size=10_000)
    processor, sink = Flaky(), MemorySink()
    pipeline = Pipeline(processor, sink, MemoryIdempotencyStore(), MemorySink(), breaker=False)
    *first, last = plan.chunks
    for chunk in first:
        assert not (await run_chunk(pipeline, inputs, ledger, plan, chunk.index)).skipped
        assert await ledger.fan_in(plan) is None  # a chunk is still missing
    assert not await ledger.succeeded(plan)
    processor.down = {3_999}  # the last chunk's last record cannot be written yet
    with pytest.raises(ChunkIncomplete, match="1 record"):
        await run_chunk(pipeline, inputs, ledger, plan, last.index, rounds=0)
    assert await ledger.pending(plan) == [last.index] and await ledger.fan_in(plan) is None
    processor.down = set()
    calls = processor.calls
    rerun = await run_chunk(pipeline, inputs, ledger, plan, last.index)
    assert sum(len(r.duplicates) for r in rerun.results) > 0  # committed records skipped
    assert processor.calls - calls < 4_000 // len(plan.chunks)
    manifest = await ledger.fan_in(plan)
    assert manifest is not None and await ledger.succeeded(plan)
    assert (manifest.rows, manifest.invalid, manifest.bytes) == (4_000, 1, plan.size)
    assert [c.index for c in manifest.chunks] == [c.index for c in plan.chunks]
    assert len(sink) == 3_999
    # A rerun of everything reads nothing and rewrites nothing.
    writes = dict(ledger_store._objects)
    for chunk in plan.chunks:
        assert (await run_chunk(pipeline, inputs, ledger, plan, chunk.index)).skipped
    assert await ledger.fan_in(plan) == manifest
    assert ledger_store._objects == writes


async def test_the_first_saved_plan_wins() -> None:
    inputs, ledger = MemoryObjectStore(), ChunkLedger(MemoryObjectStore())
    await inputs.put("a.jsonl", jsonl(2_000))
    first = await ledger.plan(inputs, "a.jsonl", chunk_size=5_000)
    again = await ledger.plan(inputs, "a.jsonl", chunk_size=50_000)
    assert again == first


def test_chunk_keys_are_per_object_version_and_index() -> None:
    plan = anyio.run(_tiny_plan)
    assert plan.key(0) != plan.key(1)
    assert plan.key(0) != dataclasses.replace(plan, version="other").key(0)


async def _tiny_plan() -> ChunkPlan:
    store = MemoryObjectStore()
    await store.put("a.jsonl", jsonl(100))
    return await plan_chunks(store, "a.jsonl", chunk_size=500)


_ODD_CSV = (
    '{i},a"b,c\n'  # a quote inside an unquoted field is text
    '{i},"quoted ""x"" with , comma",z\n'
    '{i},"multi\nline "" here\n",q\n'
    '{i},"closed"tail,w\n'  # text after a closing quote joins the field
    '{i},b"c"d,"e"\n'
    '{i},"a""","""\n"\n'
    "{i},x,y\r\n"
    '{i},"crlf inside\r\nfield",z\r\n'
    '{i},",",x"\n'
    '{i},"open"  ,"x""y"\n'
    '{i},,"\n\n"\n'
    '""\n'  # a blank row, as csv reads it: skipped
)


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 333, 4096, 1 << 20])
async def test_csv_quotes_inside_unquoted_fields_read_as_the_csv_module_reads_them(
    chunk_size: int, tmp_path: Path
) -> None:
    from onceflow.adapters.local.file_records import RecordReader

    text = "id,note,extra\n" + "".join(_ODD_CSV.format(i=i) for i in range(60))
    text += 'end,"never closed\n'  # the rest of the file is in the open field
    data = text.encode()
    (tmp_path / "q.csv").write_bytes(data)
    store = MemoryObjectStore()
    await store.put("q.csv", data)
    plan = await plan_chunks(store, "q.csv", chunk_size=chunk_size)
    assert len(plan.chunks) > (1 if chunk_size < 4096 else 0)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    records = await read_all(store, plan, source="file:q.csv")
    assert isinstance(records[-1], InvalidRecord)  # two columns, where three are expected
    events = [r for r in records if isinstance(r, Event)]
    assert [list(r.json().values()) for r in events] == [r for r in rows[1:-1] if r != [""]]
    whole = [
        p.record for p in RecordReader(tmp_path / "q.csv", "q.csv", "csv", "file:q.csv").read()
    ]
    assert [(type(r), r.id) for r in records] == [(type(r), r.id) for r in whole]
    assert [r.data for r in events] == [r.data for r in whole if isinstance(r, Event)]


async def test_a_rewritten_object_gets_its_own_plan() -> None:
    inputs, ledger = MemoryObjectStore(), ChunkLedger(MemoryObjectStore())
    await inputs.put("a.jsonl", jsonl(2_000))
    first = await ledger.plan(inputs, "a.jsonl", chunk_size=5_000)
    await inputs.put("a.jsonl", jsonl(5_000))
    second = await ledger.plan(inputs, "a.jsonl", chunk_size=5_000)
    assert second.version != first.version and second.size == len(jsonl(5_000))
    assert await ledger.saved_plan("a.jsonl", first.version) == first
    assert await ledger.plan(inputs, "a.jsonl", chunk_size=50_000) == second


async def test_a_saved_plan_of_other_bytes_under_the_same_version_is_refused() -> None:
    from onceflow.fan_in import ChunkPlanMismatch

    inputs, ledger = MemoryObjectStore(), ChunkLedger(MemoryObjectStore())
    await inputs.put("a.jsonl", jsonl(2_000))
    await ledger.plan(inputs, "a.jsonl", chunk_size=5_000, version="v1")
    await inputs.put("a.jsonl", jsonl(3_000))
    with pytest.raises(ChunkPlanMismatch, match=r"covers .* bytes, the object has"):
        await ledger.plan(inputs, "a.jsonl", chunk_size=5_000, version="v1")


def test_a_chunk_event_names_its_chunk_and_reads_back_from_its_letter() -> None:
    from onceflow.dead_letters import dead_letter
    from onceflow.fan_in import chunk_event, chunk_of

    event = chunk_event("in/a.jsonl", "v1", 3, {"bucket": "b"})
    letter = dead_letter(event, "boom", key="chunk:in/a.jsonl@v1#3", now=0.0, pipeline="p")
    found = chunk_of(json.loads(json.dumps(letter.value)))
    assert found == {"bucket": "b", "key": "in/a.jsonl", "version": "v1", "index": 3}
    assert chunk_of({"event": {"type": "other"}}) is None
