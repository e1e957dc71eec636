"""The memory backend against every contract suite."""

from __future__ import annotations

from typing import Any

import pytest

from onceflow.adapters.memory import (
    ManualClock,
    MemoryIdempotencyStore,
    MemoryObjectStore,
    MemorySink,
)
from onceflow.interfaces import Sink
from onceflow.testing import (
    AtomicSinkContract,
    ExactlyOnceContract,
    ObjectStoreContract,
    SinkContract,
    StoreContract,
)
from onceflow.testing.contracts import LaneStoreContract


async def read_memory(sink: Sink) -> dict[str, Any]:
    assert isinstance(sink, MemorySink)
    return sink.contents()


class MemoryFixtures:
    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryIdempotencyStore:
        self._store = MemoryIdempotencyStore(clock=clock, ttl_seconds=3600.0)
        return self._store

    @pytest.fixture
    def other_store(self, store: MemoryIdempotencyStore) -> MemoryIdempotencyStore:
        return store.handle()

    @pytest.fixture
    def read_sink(self) -> Any:
        return read_memory


class TestMemoryStore(MemoryFixtures, StoreContract):
    pass


class TestMemorySink(MemoryFixtures, SinkContract):
    @pytest.fixture
    def sink(self) -> MemorySink:
        return MemorySink()


class TestMemoryAtomicSink(MemoryFixtures, AtomicSinkContract):
    @pytest.fixture
    def sink(self) -> MemorySink:
        return MemorySink()


class TestMemoryObjectStore(ObjectStoreContract):
    @pytest.fixture
    def object_store(self) -> MemoryObjectStore:
        return MemoryObjectStore()


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic", "write-then-complete"])
class TestMemoryExactlyOnce(MemoryFixtures, ExactlyOnceContract):
    max_examples = 150

    @pytest.fixture
    def sink(self, atomic: bool) -> MemorySink:
        return MemorySink(atomic=atomic)

    @pytest.fixture
    def dead_letter_sink(self, atomic: bool) -> MemorySink:
        return MemorySink(atomic=atomic)

    def assert_each_write_once(self, sink: Sink, ns: str) -> None:
        # With atomic commits a crash or a lost lease writes nothing, so no output is ever
        # written twice; the write-then-complete path may rewrite (an idempotent overwrite).
        assert isinstance(sink, MemorySink)
        if sink.atomic:
            repeated = {k: n for k, n in sink.write_counts().items() if k.startswith(ns) and n > 1}
            assert repeated == {}


class TestMemoryLaneStore(LaneStoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock) -> MemoryIdempotencyStore:
        self._store = MemoryIdempotencyStore(clock=clock, ttl_seconds=3600.0)
        return self._store

    @pytest.fixture
    def other_store(self, store: MemoryIdempotencyStore) -> MemoryIdempotencyStore:
        return store.handle()
