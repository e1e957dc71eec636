"""The contracts between the runner and everything pluggable: sources, processors, sinks, stores.

Every backend implements these protocols; none needs a base class. The contract test
suites in `onceflow.testing` hold each implementation to the behaviour written here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from onceflow.event import Event
from onceflow.records import (
    Claim,
    Completion,
    InvalidRecord,
    LaneClaim,
    LaneCommit,
    LaneRequest,
    ObjectInfo,
    Output,
)

__all__ = [
    "AtomicLaneSink",
    "AtomicSink",
    "Clock",
    "IdempotencyStore",
    "LaneStore",
    "Metrics",
    "ObjectStore",
    "Processor",
    "Sink",
    "Source",
    "TransactionalLaneStore",
    "TransactionalStore",
]

W_contra = TypeVar("W_contra", contravariant=True)


class Clock(Protocol):
    """Wall-clock time in seconds since the epoch, and a way to wait."""

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for `seconds` of this clock's time."""
        ...


@runtime_checkable
class Processor(Protocol):
    """Turns one event into zero, one or many outputs.

    `process` may be a plain function or `async def`. It returns an output, an iterable
    of outputs (list, tuple or generator), or None. Raising `PermanentError` or a
    pydantic `ValidationError` dead-letters the event at once; any other exception is
    retried. An optional `setup()` (sync or async) runs once per worker before the first
    event.
    """

    def process(self, event: Event) -> Any:
        """The output(s) for `event`, or None."""
        ...


class Sink(Protocol):
    """Receives outputs in batches; writing the same `output_id` twice is an overwrite."""

    async def write(self, outputs: Sequence[Output]) -> None:
        """Store every output, replacing any earlier output with the same `output_id`."""
        ...


@runtime_checkable
class AtomicSink(Sink, Protocol):
    """A sink that can commit its outputs and a store's completion markers in one transaction."""

    def commits_with(self, store: IdempotencyStore) -> bool:
        """Whether `write_and_complete` can span this sink and `store` atomically."""
        ...

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Commit outputs and completions together; per completion, whether its fence held.

        A completion whose token no longer holds is refused (False) and the outputs
        with its `event_key` are not written; all others commit, atomically.
        """
        ...


class IdempotencyStore(Protocol):
    """Remembers which keys are leased and which are done, with fencing tokens and TTL.

    State is decided by the timestamps the store keeps, in the clock it was given,
    never by a database's lazy expiry: a lease whose time has passed is free to take
    over, and a completed record older than the store's TTL counts as absent.
    """

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        """Try to lease every key; one `Claim` per key, in the order given.

        A key nobody holds, whose lease has expired, or whose completed record has
        outlived the TTL comes back NEW with a fresh fencing token and its delivery count
        (`Claim.deliveries`: 1 the first time, one more for every later claim that was
        not refunded; it starts again after a completed record expires) (a takeover gets a
        token different from every earlier one); a key under someone else's live lease
        comes back IN_PROGRESS; a completed key comes back COMPLETED with its outcome.
        Keys are distinct. The store chunks the call to its backend's limits itself.
        """
        ...

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark claimed keys completed; per completion, False when its fence no longer held.

        The fence holds while the key's stored token is the claim's token: completing
        twice with the same claim is accepted (a retried call), completing after a
        takeover or a release is refused.
        """
        ...

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        """Give up leases (for keys that failed and will be redelivered); stale ones are ignored.

        The key's delivery count is kept for its next claim; with `refund`, this delivery
        is taken off it again (the event was handed back unprocessed, e.g. by an open
        circuit breaker, so it must not count towards `max_deliveries`).
        """
        ...


@runtime_checkable
class TransactionalStore(Protocol[W_contra]):
    """An idempotency store whose completions can commit in one transaction with sink writes.

    The one seam between an `AtomicSink` and its store: the sink turns its outputs into
    writes in the store's own transaction vocabulary (DynamoDB transaction actions,
    Azure Table entity operations, SQLite rows, memory puts) and hands them over, filed by
    event key; the store commits each key's completion marker together with them.
    """

    async def complete_with(
        self, completions: Sequence[Completion], writes: Mapping[str, Sequence[W_contra]]
    ) -> list[bool]:
        """Complete every key with the writes filed under it; per completion, its fence held.

        A completion whose token no longer holds is refused (False) and none of the writes
        filed under its key are applied; for every other key the marker and its writes
        commit atomically (the whole batch in one transaction, or key by key where the
        backend's transactions are smaller). A retried call with the same claims is
        accepted, as `IdempotencyStore.complete` is.
        """
        ...


@runtime_checkable
class LaneStore(Protocol):
    """An idempotency store that also keeps one watermark record per ordered lane.

    Optional: the runner uses it for events on a lane (`onceflow.watermarks.lane_of`)
    under the pipeline's default key; other events keep per-key markers. The state logic
    is the core's (`onceflow.watermarks`): a store reads the record, calls `take`,
    `commit_record` or `release_record`, and writes the answer atomically (in one
    transaction, or conditional on the version it read). See /docs/architecture.md.
    """

    async def claim_lanes(
        self, requests: Sequence[LaneRequest], lease_seconds: float
    ) -> list[LaneClaim]:
        """One `LaneClaim` per request, in order: `watermarks.take` on each lane's record."""
        ...

    async def commit_lanes(self, commits: Sequence[LaneCommit]) -> list[bool]:
        """Write each lane's new state where its fence holds (`watermarks.fence_holds`);
        per commit, whether it held. A retried commit by the same claim is accepted."""
        ...

    async def release_lanes(self, claims: Sequence[LaneClaim]) -> None:
        """End leases still held by these claims, charging their range a delivery."""
        ...


@runtime_checkable
class TransactionalLaneStore(Protocol[W_contra]):
    """A lane store whose lane commits join a sink's writes in one transaction."""

    async def complete_with_lanes(
        self,
        completions: Sequence[Completion],
        writes: Mapping[str, Sequence[W_contra]],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """`TransactionalStore.complete_with` plus lane commits; per completion and per lane
        commit, whether its fence held. A refused lane commit applies none of the writes
        filed under its `keys`."""
        ...


@runtime_checkable
class AtomicLaneSink(AtomicSink, Protocol):
    """An atomic sink that can also carry a lane store's lane commits in its transaction."""

    def commits_lanes_with(self, store: IdempotencyStore) -> bool:
        """Whether `write_and_commit_lanes` can span this sink and `store` atomically."""
        ...

    async def write_and_commit_lanes(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """`write_and_complete` plus lane commits (via `complete_with_lanes`)."""
        ...


class Source(Protocol):
    """Pull-mode supplier of batches, told afterwards which events to deliver again."""

    def batches(self, max_size: int) -> AsyncIterator[Sequence[Event | InvalidRecord]]:
        """Batches of at most `max_size` records, until the source is drained or stopped."""
        ...

    async def ack(
        self, batch: Sequence[Event | InvalidRecord], failed_ids: Collection[str]
    ) -> None:
        """Settle a batch: every record not in `failed_ids` is done; those are delivered again."""
        ...


class Metrics(Protocol):
    """Where the runner reports counts and timings; the default discards them."""

    def count(self, name: str, value: int = 1) -> None:
        """Add `value` to the counter `name`."""
        ...

    def timing(self, name: str, seconds: float) -> None:
        """Record one duration for `name`."""
        ...


class ObjectStore(Protocol):
    """Objects addressed by `/`-separated paths: memory, local disk, S3, Azure Blob.

    Writes are atomic: a reader sees the whole old object or the whole new one.
    """

    async def get(self, path: str) -> bytes:
        """The object's bytes; `FileNotFoundError` when there is none."""
        ...

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` up to, not including, `end`; `FileNotFoundError` when absent."""
        ...

    async def put(self, path: str, data: bytes) -> None:
        """Create or replace the object."""
        ...

    async def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create the object only if it does not exist; whether this call created it."""
        ...

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose path starts with `prefix`, sorted by path."""
        ...

    async def delete(self, path: str) -> None:
        """Remove the object; removing an absent object is not an error."""
        ...

    async def head(self, path: str) -> ObjectInfo | None:
        """The object's info, or None when absent."""
        ...
