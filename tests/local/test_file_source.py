"""FileSource and DirectorySource: formats, bad records, ids, checkpoints, landing folders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from onceflow.adapters.local import Database, DirectorySource, FileSource, run_files
from onceflow.adapters.local.file_source import Redelivery
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.records import Claim, ClaimStatus, Completion, InvalidRecord
from onceflow.retry import Backoff, RetryPolicy

Record = Event | InvalidRecord


async def drain(
    source: FileSource | DirectorySource,
    size: int = 3,
    fail: set[str] = frozenset(),  # type: ignore[assignment]
    limit: int | None = None,
) -> list[Record]:
    """Everything the source hands out, acking all but `fail`; stops after `limit` batches."""
    seen: list[Record] = []
    batches = 0
    async for batch in source.batches(size):
        seen.extend(batch)
        await source.ack(batch, {r.id for r in batch if r.id in fail})
        batches += 1
        if limit is not None and batches >= limit:
            break
    return seen


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.mark.anyio
async def test_jsonl_records_and_bad_lines_name_file_line_and_cause(tmp_path: Path) -> None:
    write(tmp_path / "in.jsonl", b'{"a":1}\n\n{"a":\n\xff\xfe\n  \n{"a":2}\r\n')
    records = await drain(FileSource(tmp_path / "in.jsonl"))
    assert [r.id for r in records] == ["in.jsonl:1", "in.jsonl:3", "in.jsonl:4", "in.jsonl:6"]
    good = [r for r in records if isinstance(r, Event)]
    assert [e.json() for e in good] == [{"a": 1}, {"a": 2}]
    assert good[0].key == "file:in.jsonl#in.jsonl:1"
    bad = [r for r in records if isinstance(r, InvalidRecord)]
    assert bad[0].reason.startswith("in.jsonl line 3: not valid JSON")
    assert bad[1].reason == "in.jsonl line 4: not valid UTF-8 (byte 0xff at column 1)"
    assert bad[1].raw == b"\xff\xfe" and bad[1].locator == "in.jsonl:4"


@pytest.mark.anyio
async def test_csv_rows_quotes_missing_columns_and_bad_bytes(tmp_path: Path) -> None:
    write(
        tmp_path / "c.csv",
        b'id,page,ms\nc1,"/a,b",5\nc2,/b\nc3,"multi\nline",7\nc4,/\xff,1\n\nc5,/e,9\n',
    )
    records = await drain(FileSource(tmp_path / "c.csv", id_field="id"))
    kinds = [(r.id, type(r).__name__) for r in records]
    assert kinds == [
        ("c1", "Event"),
        ("c.csv:3", "InvalidRecord"),
        ("c3", "Event"),
        ("c.csv:6", "InvalidRecord"),
        ("c5", "Event"),
    ]
    assert records[0].data == b'{"id":"c1","page":"/a,b","ms":"5"}'  # type: ignore[union-attr]
    assert json.loads(records[2].data)["page"] == "multi\nline"  # type: ignore[union-attr]
    missing = records[1]
    assert isinstance(missing, InvalidRecord)
    assert missing.reason == "c.csv line 3: expected 3 columns, found 2 (missing ms)"
    assert isinstance(records[3], InvalidRecord) and "not valid UTF-8" in records[3].reason


@pytest.mark.anyio
async def test_parquet_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": ["a", "b", "c"], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    state = tmp_path / "state.db"
    first = await drain(FileSource(tmp_path / "t.parquet", state=state), size=2, limit=1)
    assert [r.id for r in first] == ["t.parquet:1", "t.parquet:2"]
    rest = await drain(FileSource(tmp_path / "t.parquet", state=state), size=2)
    assert [json.loads(r.data) for r in rest if isinstance(r, Event)] == [{"id": "c", "n": 3}]
    write(tmp_path / "broken.parquet", b"PAR1 nope")
    [bad] = await drain(FileSource(tmp_path / "broken.parquet"))
    assert isinstance(bad, InvalidRecord) and "not a readable Parquet file" in bad.reason


@pytest.mark.anyio
async def test_id_field_and_partition_field(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", '{"oid":"x","u":"u1"}\n{"oid":"y","u":"u2"}\n[1]\n{"u":"u3"}\n')
    write(tmp_path / "b.jsonl", '{"oid":"x","u":"u1"}\n')
    records = await drain(
        FileSource(str(tmp_path / "*.jsonl"), id_field="oid", partition_field="u"), size=10
    )
    events = [r for r in records if isinstance(r, Event)]
    assert [(e.key, e.partition_key) for e in events] == [
        ("files#x", "u1"),
        ("files#y", "u2"),
        ("files#x", "u1"),  # the same id in another file: the same key, a duplicate
    ]
    reasons = [r.reason for r in records if isinstance(r, InvalidRecord)]
    assert reasons == [
        "a.jsonl line 3: expected a JSON object, found an array",
        "a.jsonl line 4: no usable 'oid' field for the event id",
    ]
    assert int(events[2].sequence or 0) > int(events[1].sequence or 0)  # later file, later


@pytest.mark.anyio
async def test_glob_names_are_relative_to_its_base_and_sorted(tmp_path: Path) -> None:
    write(tmp_path / "in" / "day=2" / "x.jsonl", "{}\n")
    write(tmp_path / "in" / "day=1" / "x.jsonl", "{}\n")
    source = FileSource(str(tmp_path / "in" / "**" / "*.jsonl"))
    assert [name for _, name in source.files] == ["day=1/x.jsonl", "day=2/x.jsonl"]
    both = FileSource(
        [tmp_path / "in" / "day=1" / "x.jsonl", tmp_path / "in" / "day=2" / "x.jsonl"]
    )
    assert [name for _, name in both.files] == ["day=1/x.jsonl", "day=2/x.jsonl"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        FileSource(str(tmp_path / "nothing*.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="cannot tell the format"):
        FileSource(write(tmp_path / "x.txt", "hi"))


@pytest.mark.anyio
async def test_checkpoint_resumes_and_never_passes_a_failed_record(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(10))
    path = write(tmp_path / "in.jsonl", lines)
    state = Database(tmp_path / "state.db")
    first = await drain(FileSource(path, state=state), size=3, limit=2)
    assert len(first) == 6
    second = await drain(FileSource(path, state=state), size=3)
    assert [r.id for r in second] == [f"in.jsonl:{n}" for n in range(7, 11)]
    assert await drain(FileSource(path, state=state)) == []  # all settled: nothing to read

    # A record that keeps failing holds the checkpoint; the next run reads from it again.
    other = write(tmp_path / "other.jsonl", lines)
    seen = await drain(FileSource(other, state=state), size=4, fail={"other.jsonl:3"})
    again_seen = [r for r in seen if r.id == "other.jsonl:3"]
    assert len(again_seen) == 2  # first delivery, then handed back once after the pass
    assert [r.delivery_count for r in again_seen if isinstance(r, Event)] == [1, 2]
    again = await drain(FileSource(other, state=state), size=20)
    assert again[0].id == "other.jsonl:3"
    assert len(again) == 8


class LeasedElsewhere:
    """A memory store in which another worker holds some keys' leases for their first claims."""

    def __init__(self, held: dict[str, int]) -> None:
        self.store = MemoryIdempotencyStore()
        self.held = held
        self.claims: list[str] = []

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        self.claims.extend(keys)
        free = [k for k in keys if self.held.get(k, 0) <= 0]
        for key in keys:
            self.held[key] = self.held.get(key, 0) - 1
        granted = dict(zip(free, await self.store.claim(free, lease_seconds), strict=True))
        return [granted.get(k) or Claim(k, ClaimStatus.IN_PROGRESS) for k in keys]

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        return await self.store.complete(completions)

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        await self.store.release(claims)


def pipeline_for(store: LeasedElsewhere, seen: list[Event], *, ordered: bool = False) -> Pipeline:
    def process(event: Event) -> dict[str, object]:
        seen.append(event)
        return {"n": event.json()["n"]}

    no_wait = Backoff(base=0.0, jitter=False)
    return Pipeline(
        process, MemorySink(), store, MemorySink(), ordered=ordered,
        retry=RetryPolicy(attempts=1, backoff=no_wait),
    )  # fmt: skip


@pytest.mark.anyio
async def test_run_files_redelivers_through_the_pipeline_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(10))
    path = write(tmp_path / "in.jsonl", lines)
    state = Database(tmp_path / "state.db")
    stuck = "file:in.jsonl#in.jsonl:3"
    store = LeasedElsewhere({stuck: 99, "file:in.jsonl#in.jsonl:5": 2})
    seen: list[Event] = []
    tally = await run_files(
        pipeline_for(store, seen), FileSource(path, state=state), batch_size=4, redeliveries=3
    )
    assert store.claims.count(stuck) == 4  # the pass, the hand-back, 2 more rounds
    assert len(seen) == 9 and tally.processed == 9
    assert list(tally.failed) == ["in.jsonl:3"]
    assert "another worker holds" in tally.failed["in.jsonl:3"]
    # The checkpoint waits before the record left failed; the next run starts there.
    again = await drain(FileSource(path, state=state), size=20)
    assert [r.id for r in again][:2] == ["in.jsonl:3", "in.jsonl:4"]
    with pytest.raises(ValueError, match="at least 1"):
        await run_files(pipeline_for(store, []), FileSource(path), redeliveries=0)


@pytest.mark.anyio
async def test_redelivered_record_that_succeeds_releases_the_checkpoint(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", '{"a":1}\n{"a":2}\n')
    state = Database(tmp_path / "state.db")
    source = FileSource(path, state=state)
    calls = 0
    async for batch in source.batches(10):
        calls += 1
        assert isinstance(batch, Redelivery) == (calls == 2)
        failed = {"in.jsonl:1"} if calls == 1 else set()
        await source.ack(batch, failed)
    assert calls == 2
    assert await drain(FileSource(path, state=state)) == []


@pytest.mark.anyio
async def test_a_replaced_file_is_read_again_from_the_start(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", '{"a":1}\n{"a":2}\n')
    state = Database(tmp_path / "state.db")
    assert len(await drain(FileSource(path, state=state))) == 2
    write(path, '{"a":1}\n{"a":2}\n{"a":3}\n')  # appended: only the new line
    assert [r.id for r in await drain(FileSource(path, state=state))] == ["in.jsonl:3"]
    write(path, '{"b":9}\n{"b":8}\n{"b":7}\n{"b":6}\n')  # replaced: everything again
    assert len(await drain(FileSource(path, state=state))) == 4


@pytest.mark.anyio
async def test_landing_folder_reads_each_file_once_and_moves_it(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    write(landing / "a.jsonl", '{"a":1}\n{"a":2}\n')
    write(landing / "notes.txt", "not data")
    state = Database(tmp_path / "state.db")
    first = await drain(DirectorySource(landing, state=state))
    assert len(first) == 2
    assert first[0].source.startswith("landing:a.jsonl@")
    assert (landing / "processed" / "a.jsonl").exists() and not (landing / "a.jsonl").exists()
    assert await drain(DirectorySource(landing, state=state)) == []
    write(landing / "a.jsonl", '{"a":3}\n')  # a new file under the old name is new
    [again] = await drain(DirectorySource(landing, state=state))
    assert again.source != first[0].source
    assert len(list((landing / "processed").iterdir())) == 2  # the earlier copy is kept


@pytest.mark.anyio
async def test_landing_folder_by_content_hash_without_moving(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    write(landing / "a.jsonl", '{"a":1}\n')
    state = Database(tmp_path / "state.db")
    [one] = await drain(DirectorySource(landing, state=state, identity="hash", move_to=None))
    (landing / "a.jsonl").touch()  # same content, new mtime: still the same file
    assert await drain(DirectorySource(landing, state=state, identity="hash", move_to=None)) == []
    assert (landing / "a.jsonl").exists()
    assert one.key.startswith("landing:a.jsonl@")


@pytest.mark.anyio
async def test_watch_mode_picks_up_files_that_land_later(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    source = DirectorySource(landing, watch=True, poll_seconds=0.05, settle_seconds=0.0)
    seen: list[Sequence[Record]] = []

    async def consume() -> None:
        async for batch in source.batches(10):
            seen.append(batch)
            await source.ack(batch, set())
            source.stop()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await anyio.sleep(0.1)
        write(landing / "late.jsonl", '{"a":1}\n')
    assert [r.id for batch in seen for r in batch] == ["late.jsonl:1"]


@pytest.mark.anyio
async def test_ordered_source_holds_a_lane_behind_its_failed_record(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"n": n, "lane": f"p{n % 2}"}) + "\n" for n in range(1, 11))
    path = write(tmp_path / "in.jsonl", rows)
    source = FileSource(path, partition_field="lane", ordered=True)
    # 3 is leased elsewhere on its first two deliveries: the pass and the hand-back.
    store = LeasedElsewhere({"file:in.jsonl#in.jsonl:3": 2})
    seen: list[Event] = []
    tally = await run_files(pipeline_for(store, seen, ordered=True), source, batch_size=2)
    done = [event.json()["n"] for event in seen]
    lanes = {lane: [n for n in done if f"p{n % 2}" == lane] for lane in ("p0", "p1")}
    assert lanes["p0"] == [2, 4, 6, 8, 10]
    assert lanes["p1"] == [1, 3, 5, 7, 9]  # 5, 7 and 9 waited for 3
    assert tally.processed == 10 and not tally.failed


@pytest.mark.anyio
async def test_ordered_lane_stays_held_while_its_record_fails(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"n": n, "lane": f"p{n % 2}"}) + "\n" for n in range(1, 11))
    path = write(tmp_path / "in.jsonl", rows)
    state = Database(tmp_path / "state.db")
    source = FileSource(path, state=state, partition_field="lane", ordered=True)
    store = LeasedElsewhere({"file:in.jsonl#in.jsonl:3": 99})
    seen: list[Event] = []
    tally = await run_files(pipeline_for(store, seen, ordered=True), source, batch_size=3)
    assert sorted(event.json()["n"] for event in seen) == [1, 2, 4, 6, 8, 10]
    # 5 and 7, handed back with 3, waited behind it (the pipeline held them); 9 was not
    # handed out at all, as its lane was still held when its chunk was built.
    assert list(tally.failed) == ["in.jsonl:3", "in.jsonl:5", "in.jsonl:7"]
    # The next run reads again from 3 (4, 6, ... done already come back as duplicates).
    again = await drain(FileSource(path, state=state), size=20)
    assert [r.id for r in again] == [f"in.jsonl:{n}" for n in range(3, 11)]


@pytest.mark.anyio
async def test_records_are_the_events_validation_would_build(tmp_path: Path) -> None:
    # The reader builds its events from one EventTemplate per read instead of validating
    # each record (tests/test_event.py holds the template to validated events in general).
    write(tmp_path / "a.jsonl", '{"k":"x","p":7}\n"\\ud800"\n')
    write(tmp_path / "b.jsonl", '{"k":"y","p":null}\n')
    plain, keyed = (
        await drain(FileSource(tmp_path / "*.jsonl")),
        await drain(FileSource(tmp_path / "*.jsonl", id_field="k", partition_field="p")),
    )
    # A lone surrogate escape is valid JSON (json.loads takes it) but not an object.
    assert len(plain) == 3 and isinstance(keyed.pop(1), InvalidRecord)
    events = [e for e in plain + keyed if isinstance(e, Event)]
    assert len(events) == 5
    for event in events:
        built = Event(**{name: getattr(event, name) for name in event.model_fields_set})
        assert event == built and event.model_dump() == built.model_dump()
        assert event.model_fields_set == built.model_fields_set
        assert event.model_dump_json() == built.model_dump_json()
        again = event.model_copy(update={"delivery_count": 2})
        assert again.delivery_count == 2 and event.delivery_count == 1
        assert "delivery_count" in again.model_fields_set  # the copy's own fields set...
        with pytest.raises(ValueError):
            event.delivery_count = 3  # type: ignore[misc]
    # ...and the read's events, which share one, are untouched.
    assert all("delivery_count" not in e.model_fields_set for e in events)
    assert [e.id for e in keyed] == ["x", "y"] and keyed[0].partition_key == "7"
    assert plain[2].sequence == str(1_000_000_000_000 + 1)  # b.jsonl comes second
    assert plain[0].attributes == {"file": "a.jsonl", "line": "1"}
