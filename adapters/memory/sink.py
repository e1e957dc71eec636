"""A sink held in process memory that can commit atomically with the memory store."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from onceflow.adapters.memory.faults import Faults
from onceflow.adapters.memory.store import MemoryIdempotencyStore, MemoryWrites
from onceflow.errors import OutputRejected
from onceflow.interfaces import IdempotencyStore
from onceflow.records import Completion, LaneCommit, Output
from onceflow.serialization import dumps

__all__ = ["MemorySink"]


class MemorySink:
    """Outputs kept by `output_id`, with a log of every write to check how often each landed.

    With `atomic=True` (the default) it commits outputs and completion markers (or lane
    records: `write_and_commit_lanes`) in one step with a `MemoryIdempotencyStore`;
    `atomic=False` exercises the runner's write-then-complete path instead.
    """

    def __init__(
        self,
        *,
        atomic: bool = True,
        faults: Faults | None = None,
        max_value_bytes: int | None = None,
    ) -> None:
        self.atomic = atomic
        self.faults = faults or Faults()
        self.max_value_bytes = max_value_bytes
        self.lock = threading.RLock()
        # The outputs themselves, by output_id: putting one is a dict entry and a log line,
        # nothing built per output (this sink sits in every memory benchmark's hot path).
        self.outputs: dict[str, Output] = {}
        self.writes: list[str] = []
        """Every output_id written, in the order written (rewrites included)."""

    @property
    def meta(self) -> dict[str, tuple[Any, ...]]:
        """(event_key, event_id, index, partition_key) of each stored output, by output_id."""
        with self.lock:
            return {
                oid: (o.event_key, o.event_id, o.index, o.partition_key)
                for oid, o in self.outputs.items()
            }

    @property
    def attributes(self) -> dict[str, Mapping[str, str]]:
        """The message metadata of the outputs that carry any (trace context), by output_id."""
        with self.lock:
            return {oid: o.attributes for oid, o in self.outputs.items() if o.attributes}

    def commits_with(self, store: IdempotencyStore) -> bool:
        """True for a memory store when this sink is atomic."""
        return self.atomic and isinstance(store, MemoryIdempotencyStore)

    async def write(self, outputs: Sequence[Output]) -> None:
        """Store outputs, overwriting by `output_id`."""
        self.faults.check("sink.write")
        self._check_size(outputs)
        self._put(outputs)

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Write outputs and complete their keys in one step; refused keys write nothing."""
        self.faults.check("sink.write_and_complete")
        assert isinstance(store, MemoryIdempotencyStore)
        self._check_size(outputs)
        return await store.complete_with(completions, MemoryWrites(self._put, outputs))

    def commits_lanes_with(self, store: IdempotencyStore) -> bool:
        """True where `commits_with` is: the memory store commits lanes in the same step."""
        return self.commits_with(store)

    async def write_and_commit_lanes(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """Write outputs, complete keys and commit lanes in one step; what is refused
        (a key's fence, a lane's) writes nothing."""
        self.faults.check("sink.write_and_complete")
        assert isinstance(store, MemoryIdempotencyStore)
        self._check_size(outputs)
        return await store.complete_with_lanes(completions, MemoryWrites(self._put, outputs), lanes)

    def _put(self, outputs: Sequence[Output]) -> None:
        kept, log = self.outputs, self.writes.append
        with self.lock:
            for output in outputs:
                oid = output.output_id
                kept[oid] = output
                log(oid)

    def _check_size(self, outputs: Sequence[Output]) -> None:
        if self.max_value_bytes is None:
            return
        too_big = {
            o.output_id: f"{size} bytes is over this sink's {self.max_value_bytes}-byte limit"
            for o in outputs
            if (size := len(dumps(o.value).encode())) > self.max_value_bytes
        }
        if too_big:
            raise OutputRejected(too_big)

    # -- reading, for tests ------------------------------------------------------------------

    def values(self) -> list[Any]:
        """Stored values, in the order their output_id was first written."""
        with self.lock:
            return [o.value for o in self.outputs.values()]

    def contents(self) -> dict[str, Any]:
        """Stored values by output_id."""
        with self.lock:
            return {oid: o.value for oid, o in self.outputs.items()}

    def write_counts(self) -> dict[str, int]:
        """How many times each output_id was written."""
        counts: dict[str, int] = {}
        for oid in self.writes:
            counts[oid] = counts.get(oid, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self.outputs)
