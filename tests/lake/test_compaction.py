"""Compaction merges small files through the manifest; readers never see a row twice or miss one."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from onceflow.adapters.aws import S3ObjectStore
from onceflow.adapters.azure import BlobObjectStore
from onceflow.adapters.local import LocalObjectStore
from onceflow.adapters.memory import MemoryObjectStore
from onceflow.cli import main
from onceflow.interfaces import ObjectStore
from onceflow.lake import Hourly, ManifestConflict, ManifestLog, ParquetSink, read_dataset
from onceflow.lake.compaction import compact_dataset, plan, vacuum_dataset
from onceflow.records import Output
from tests.lake.conftest import query
from tests.support.servers import Azurite, MotoServer

SCHEMA = pa.schema([("n", pa.int64()), ("time", pa.timestamp("us", "UTC"))])


def outputs(numbers: range) -> list[Output]:
    return [
        Output(
            f"s#e{n}#0", f"s#e{n}", f"e{n}", 0, {"n": n, "time": f"2024-05-01T{10 + n % 2}:00:00Z"}
        )
        for n in numbers
    ]


async def small_files(store: ObjectStore, batches: int = 30, size: int = 10) -> ParquetSink:
    sink = ParquetSink(store, "ds", schema=SCHEMA, partition_by=Hourly())
    for b in range(batches):
        await sink.write(outputs(range(b * size, (b + 1) * size)))
    return sink


@pytest.mark.anyio
async def test_small_files_merge_to_one_per_partition_with_every_row_once(
    lake_store: ObjectStore,
) -> None:
    await small_files(lake_store)
    # A redelivered batch regrouped: its outputs sit in two files before compaction.
    sink = ParquetSink(lake_store, "ds", schema=SCHEMA, partition_by=Hourly())
    await sink.write(outputs(range(5, 15)))
    before = await ManifestLog(lake_store, "ds").snapshot()
    assert {p: len(f) for p, f in before.partitions().items()} == {
        "dt=2024-05-01/hr=10": 31,
        "dt=2024-05-01/hr=11": 31,
    }
    seen: list[int] = []
    report = await compact_dataset(lake_store, "ds", progress=lambda g: seen.append(len(g.files)))
    assert report.files_before == 62 and report.files_after == 2 and seen == [31, 31]
    after = await ManifestLog(lake_store, "ds").snapshot()
    assert [len(f) for f in after.partitions().values()] == [1, 1]
    rows = await read_dataset(lake_store, "ds", verify=True)
    sql = "select count(*), count(distinct _output_id), min(n), max(n) from t"
    assert query(sql, t=rows) == [(300, 300, 0, 299)]
    # Readers of the old version still find every file until the vacuum.
    assert (await read_dataset(lake_store, "ds", version=before.version)).num_rows == 300
    deleted = (await vacuum_dataset(lake_store, "ds", retain=timedelta(0))).deleted
    assert len(deleted) == 62
    assert (await read_dataset(lake_store, "ds")).num_rows == 300


@pytest.mark.anyio
async def test_target_size_bounds_the_merged_files() -> None:
    store = MemoryObjectStore()
    await small_files(store, batches=20)
    snapshot = await ManifestLog(store, "ds").snapshot()
    one = max(f.bytes for f in snapshot.files.values())
    groups = plan(snapshot, target_bytes=one * 5)
    assert all(len(g.files) <= 5 and g.bytes <= one * 5 for g in groups)
    report = await compact_dataset(store, "ds", target_bytes=one * 5)
    assert report.files_after == len(groups)
    assert (await read_dataset(store, "ds")).num_rows == 200


@pytest.mark.anyio
async def test_concurrent_compactions_cannot_both_swap_the_same_files() -> None:
    store = MemoryObjectStore()
    await small_files(store, batches=4)
    log = ManifestLog(store, "ds")
    base = await log.snapshot()
    await compact_dataset(store, "ds")
    stale = list(base.files)[:2]
    with pytest.raises(ManifestConflict, match="already replaced"):
        await ManifestLog(store, "ds").commit([], stale, base_version=base.version)
    assert (await read_dataset(store, "ds")).num_rows == 40


def test_compact_info_vacuum_and_close_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import anyio

    anyio.run(small_files, LocalObjectStore(tmp_path), 10)
    store_path = str(tmp_path / "ds")
    assert main(["lake", "compact", store_path]) == 0
    assert "20 files" in capsys.readouterr().out
    assert main(["lake", "info", store_path]) == 0
    info = capsys.readouterr().out
    assert "dt=2024-05-01/hr=10\t1 files\t50 rows" in info
    assert main(["lake", "vacuum", "--retain-hours", "0", store_path]) == 0
    assert "deleted 20 files" in capsys.readouterr().out
    assert main(["lake", "close", store_path]) == 0
    assert "closed dt=2024-05-01/hr=10" in capsys.readouterr().out
    assert main(["lake", "compact", "nope://x"]) == 2
    assert "nope:// is not a known store" in capsys.readouterr().err
    assert main(["lake", "compact", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["lake", "info", str(tmp_path)]) == 2
    assert "holds no committed dataset" in capsys.readouterr().err


def test_sizing_and_help_give_the_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lake", "sizing", "--events-per-second", "100", "--window-seconds", "300"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "each flush: 10,000 rows, ~244.1 KiB per file; 36.0 files per partition-hour" in out
    with pytest.raises(SystemExit):
        main(["lake", "--help"])
    assert "MaximumBatchingWindowInSeconds" in capsys.readouterr().out


@pytest.mark.emulator
def test_compact_an_s3_dataset_by_url(
    moto: MotoServer,
    lake_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import anyio

    for name, value in {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": moto.access_key,
        "AWS_SECRET_ACCESS_KEY": moto.secret_key,
        "AWS_DEFAULT_REGION": moto.region,
    }.items():
        monkeypatch.setenv(name, value)
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    store = S3ObjectStore(lake_bucket, prefix, client=moto.client("s3"))
    anyio.run(small_files, store, 6)
    assert main(["lake", "compact", f"s3://{lake_bucket}/{prefix}/ds"]) == 0
    assert "12 files" in capsys.readouterr().out
    assert anyio.run(read_dataset, store, "ds").num_rows == 60


@pytest.mark.emulator
def test_info_on_an_azure_dataset_by_url(
    azurite_server: Azurite,
    lake_container: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import anyio

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    store = BlobObjectStore(
        lake_container, f"{prefix}/", connection_string=azurite_server.connection_string
    )
    anyio.run(small_files, store, 3)
    assert main(["lake", "info", f"az://{lake_container}/{prefix}/ds"]) == 0
    assert "dt=2024-05-01/hr=10\t3 files\t15 rows" in capsys.readouterr().out


@pytest.mark.anyio
async def test_compaction_streams_files_of_two_schema_versions_into_one() -> None:
    store = MemoryObjectStore()
    await small_files(store, batches=3)
    wider = SCHEMA.append(pa.field("country", pa.string()))
    later = ParquetSink(store, "ds", schema=wider, partition_by=Hourly())
    await later.write(
        [
            Output(
                f"s#w{n}#0",
                f"s#w{n}",
                f"w{n}",
                0,
                {"n": 100 + n, "time": "2024-05-01T10:00:00Z", "country": "DE"},
            )
            for n in range(4)
        ]
    )
    await compact_dataset(store, "ds")
    snapshot = await ManifestLog(store, "ds").snapshot()
    merged = snapshot.partitions()["dt=2024-05-01/hr=10"]
    assert len(merged) == 1 and merged[0].rows == 19
    body = await store.get(f"ds/{merged[0].path}")
    assert pq.ParquetFile(pa.BufferReader(body)).num_row_groups == 1
    rows = await read_dataset(store, "ds", partitions={"hr": "10"})
    assert query("select count(*), count(country) from t", t=rows) == [(19, 4)]


class LostReplies(MemoryObjectStore):
    """A store whose first manifest put lands but whose reply is lost (raised or retried)."""

    def __init__(self, *, retried: bool) -> None:
        super().__init__()
        self.retried = retried
        self.lost = 0

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        landed = await super().put_if_absent(path, data)
        if "_manifest/" in path and landed and not self.lost:
            self.lost += 1
            if not self.retried:
                raise ConnectionResetError("reply lost")
            # The client retried the put it never heard back from: the object is there now.
            return await super().put_if_absent(path, data)
        return landed


@pytest.mark.anyio
@pytest.mark.parametrize("retried", [False, True], ids=["raised", "retried"])
async def test_a_compaction_whose_manifest_reply_was_lost_recognises_its_own_entry(
    retried: bool,
) -> None:
    plain = MemoryObjectStore()
    await small_files(plain, batches=6)
    store = LostReplies(retried=retried)
    store._objects.update(plain._objects)
    before = await ManifestLog(store, "ds").snapshot()
    report = await compact_dataset(store, "ds")
    assert store.lost == 1 and report.files_after == 2
    after = await ManifestLog(store, "ds").snapshot()
    # One entry per partition's swap, not a second copy of one at the next version.
    assert after.version == before.version + 2
    assert (await read_dataset(store, "ds", verify=True)).num_rows == 60
