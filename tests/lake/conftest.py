"""Lake fixtures: one `lake_store` parametrised over every object store, and a crash injector."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from onceflow.adapters.aws import S3ObjectStore
from onceflow.adapters.azure import BlobObjectStore
from onceflow.adapters.local import LocalObjectStore
from onceflow.adapters.memory import ManualClock, MemoryObjectStore
from onceflow.errors import SimulatedCrash
from onceflow.event import Event
from onceflow.interfaces import ObjectStore
from onceflow.pipeline import Pipeline, Step
from onceflow.records import ObjectInfo
from onceflow.testing.exactly_once import CrashAt, deliver
from tests.support.servers import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, MotoServer

BACKENDS = [
    "memory",
    "local",
    pytest.param("s3", marks=pytest.mark.emulator),
    pytest.param("blob", marks=pytest.mark.emulator),
]


@pytest.fixture(scope="session")
def lake_bucket(moto: MotoServer) -> str:
    """One S3 bucket on the moto server for every lake test; paths inside are unique."""
    name = f"lake-{uuid.uuid4().hex[:10]}"
    moto.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def lake_container(azurite_server: Azurite) -> str:
    """One Azurite container for every lake test."""
    name = f"lake-{uuid.uuid4().hex[:10]}"
    BlobObjectStore(name, connection_string=azurite_server.connection_string, create=True)
    return name


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A fresh, empty object store of `kind`."""
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    if kind == "memory":
        return MemoryObjectStore()
    if kind == "local":
        return LocalObjectStore(tmp_path / "objects")
    if kind == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        bucket = request.getfixturevalue("lake_bucket")
        return S3ObjectStore(bucket, prefix, client=moto.client("s3"))
    if kind == "blob":
        azurite: Azurite = request.getfixturevalue("azurite_server")
        container = request.getfixturevalue("lake_container")
        return BlobObjectStore(container, prefix, connection_string=azurite.connection_string)
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def lake_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """An empty object store: memory, local disk, S3 on moto, Blob on Azurite."""
    yield make_store(request.param, request, tmp_path)


class CrashingStore:
    """An object store that dies (SimulatedCrash) on chosen writes, as a killed process would."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.crash_next_commit = False
        self.crashes = 0

    async def get(self, path: str) -> bytes:
        return await self.inner.get(path)

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        return await self.inner.get_range(path, start, end)

    async def put(self, path: str, data: bytes) -> None:
        await self.inner.put(path, data)

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        if self.crash_next_commit and "/_manifest/" in f"/{path}":
            # The data files are written; the process dies before the manifest commit.
            self.crash_next_commit = False
            self.crashes += 1
            raise SimulatedCrash("between file write and manifest commit")
        return await self.inner.put_if_absent(path, data)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await self.inner.list(prefix)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def head(self, path: str) -> ObjectInfo | None:
        return await self.inner.head(path)


START = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def click_batches(count: int, size: int = 10) -> list[list[Event]]:
    """`count` batches of `size` click events, seven minutes apart per batch."""
    return [
        [
            Event(
                id=f"e{b * size + i}",
                source="clicks",
                time=START + timedelta(minutes=7 * b + i),
                data=json.dumps({"n": b * size + i}).encode(),
            )
            for i in range(size)
        ]
        for b in range(count)
    ]


async def crash_and_redeliver(
    pipeline: Pipeline,
    batches: list[list[Event]],
    clock: ManualClock,
    crash_commit: Callable[[], None],
    lease: float = 30.0,
    regroup: int = 0,
) -> int:
    """The lake tests' schedule: crashes, then every batch again, shuffled and regrouped.

    Every fifth batch (from the second) dies between writing its files and committing them
    (`crash_commit` arms that); every fifth from the fourth commits and dies before its
    keys are completed. After the leases lapse, every batch is delivered again with its
    events shuffled, in a shuffled order; with `regroup`, the shuffled events are cut into
    batches of that size instead, so a crashed batch's outputs land in new groupings.
    Returns how many first deliveries crashed.
    """
    rng = random.Random(6)
    crashed = 0
    for number, batch in enumerate(batches):
        if number % 5 == 1:
            crash_commit()
        elif number % 5 == 3:
            pipeline.on_step = CrashAt(Step.AFTER_SINK_WRITE)
        crashed += await deliver(pipeline, batch) is None
        pipeline.on_step = None
    clock.advance(lease + 1)
    second = [rng.sample(batch, len(batch)) for batch in batches]
    rng.shuffle(second)
    if regroup:
        flat = [event for batch in second for event in batch]
        second = [flat[i : i + regroup] for i in range(0, len(flat), regroup)]
    for batch in second:
        result = await pipeline.process_batch(batch)
        assert result.ok, result.reasons
    return crashed


def as_any(value: object) -> Any:
    """`value` typed loosely, for fixtures handing stores to code expecting a protocol."""
    return value


def query(sql: str, **tables: pa.Table) -> list[tuple[Any, ...]]:
    """Rows of a DuckDB query over Arrow tables registered under the given names."""
    connection = duckdb.connect()
    try:
        for name, table in tables.items():
            connection.register(name, table)
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3", marks=pytest.mark.emulator),
        pytest.param("azure", marks=pytest.mark.emulator),
    ]
)
def delta_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A table URI and storage options: local disk, S3 on moto, Blob on Azurite."""
    name = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "local":
        return str(tmp_path / name), {}
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        bucket = request.getfixturevalue("lake_bucket")
        return f"s3://{bucket}/{name}", {
            "AWS_ENDPOINT_URL": moto.endpoint,
            "AWS_ACCESS_KEY_ID": moto.access_key,
            "AWS_SECRET_ACCESS_KEY": moto.secret_key,
            "AWS_REGION": moto.region,
            "AWS_ALLOW_HTTP": "true",
            "AWS_CONDITIONAL_PUT": "etag",  # commits by If-None-Match, not an unsafe rename
        }
    azurite: Azurite = request.getfixturevalue("azurite_server")
    container = request.getfixturevalue("lake_container")
    # delta-rs reads the emulator's address from the environment, not from the options.
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("AZURITE_BLOB_STORAGE_URL", f"http://127.0.0.1:{azurite.blob_port}")
    return f"az://{container}/{name}", {
        "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
        "AZURE_STORAGE_USE_EMULATOR": "true",
        "AZURE_ALLOW_HTTP": "true",
    }


def values_by_output_id(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A table's rows as a sink's contents: each output's own columns, by output id."""
    return {
        row["_output_id"]: {k: v for k, v in row.items() if v is not None and k[0] != "_"}
        for row in rows
    }
