"""An idempotency store held in process memory, with leases, fencing tokens and TTL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from onceflow.adapters.memory.faults import Faults
from onceflow.clock import SystemClock
from onceflow.errors import ConfigurationError
from onceflow.interfaces import Clock
from onceflow.records import (
    Claim,
    ClaimStatus,
    Completion,
    LaneClaim,
    LaneCommit,
    LaneRecord,
    LaneRequest,
    Outcome,
    OutcomeStatus,
    Output,
)
from onceflow.watermarks import (
    LANE_TTL_SECONDS,
    commit_record,
    fence_holds,
    release_record,
    take,
)

__all__ = ["MemoryIdempotencyStore", "MemoryWrites"]


class MemoryWrites(Mapping[str, Sequence[Output]]):
    """A memory sink's outputs filed by event key, and how to put them: a memory transaction.

    The grouping by key is built only if someone reads it: the store's common case (every
    fence held) puts the whole batch in one call.
    """

    def __init__(self, put: Callable[[Sequence[Output]], object], outputs: Sequence[Output]):
        self.put = put
        self.outputs = outputs
        self._by_key: dict[str, list[Output]] | None = None

    def _index(self) -> dict[str, list[Output]]:
        if self._by_key is None:
            self._by_key = {}
            for output in self.outputs:
                self._by_key.setdefault(output.event_key, []).append(output)
        return self._by_key

    def __getitem__(self, key: str) -> Sequence[Output]:
        return self._index()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def apply(self, keys: Collection[str] | None = None) -> None:
        """Put the outputs of `keys` (of every key when None)."""
        if keys is None:
            self.put(self.outputs)
        else:
            self.put([o for o in self.outputs if o.event_key in keys])


# A row is a plain tuple of strings and numbers, no enums or named tuples: the garbage
# collector then stops tracking it, so a store holding millions of keys adds nothing to
# every full collection. (status, token, lease_expires_at, expires_at, outcome fields...,
# deliveries)
_Row = tuple[str, str, float, float, str | None, int, str | None, str | None, int]
_NEW = ClaimStatus.NEW
_IN_PROGRESS = ClaimStatus.IN_PROGRESS.value
_COMPLETED = ClaimStatus.COMPLETED.value
_NEVER = float("inf")
_tuple = tuple.__new__
_STATUS = {status: status.value for status in OutcomeStatus}
"""Each outcome status's stored text, without the enum's `value` property per key."""


def _outcome(row: _Row) -> Outcome:
    return Outcome(OutcomeStatus(row[4]), row[5], row[6], row[7])


class MemoryIdempotencyStore:
    """Keys, leases and outcomes in a dict; thread-safe, and atomic with `MemorySink`.

    A `TransactionalStore` whose writes come as `MemoryWrites`: under one lock it checks
    each key's fence, records its completion, and puts the outputs filed under it.

    Two handles made with `handle()` share state, as two workers sharing one table.
    `counts_every_delivery=False` plays a store that misses crashed deliveries, so the
    pipeline lets a platform's delivery count raise its own.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 86_400.0,
        clock: Clock | None = None,
        faults: Faults | None = None,
        counts_every_delivery: bool = True,
        lane_ttl_seconds: float = LANE_TTL_SECONDS,
    ) -> None:
        self.counts_every_delivery = counts_every_delivery
        """Each claim counts (a takeover after a lapsed lease too) and a refund takes it
        back, so the pipeline needs no platform's delivery count (`Attempts.deliveries`)."""
        self.ttl_seconds = ttl_seconds
        self.lane_ttl_seconds = lane_ttl_seconds
        """How long a lane record outlives its last write (`watermarks.LANE_TTL_SECONDS`)."""
        self.clock: Clock = clock or SystemClock()
        self.faults = faults or Faults()
        self.lock = threading.RLock()
        self.rows: dict[str, _Row] = {}
        self._tokens = itertools.count(1)
        self.calls: dict[str, int] = {"claim": 0, "complete": 0, "release": 0}
        self.lanes: dict[str, LaneRecord] = {}
        """One watermark record per lane (`onceflow.LaneStore`)."""

    def handle(self) -> MemoryIdempotencyStore:
        """Another worker's handle on the same state (same rows, lock and clock)."""
        other = MemoryIdempotencyStore.__new__(MemoryIdempotencyStore)
        other.__dict__.update(self.__dict__)
        other.faults = Faults()
        return other

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        """Lease every free key; see `onceflow.IdempotencyStore.claim`."""
        self.faults.check("store.claim")
        self.calls["claim"] += 1
        with self.lock:
            now = self.clock.now()
            # One token per call fences every key it leases: a later claim of any of them
            # (a takeover) draws a new one, so a stale holder's completion is still refused.
            token = str(next(self._tokens))
            expires = now + lease_seconds
            rows = self.rows
            get = rows.get
            fresh: _Row = (_IN_PROGRESS, token, expires, _NEVER, None, 0, None, None, 1)
            claims: list[Claim] = []
            add = claims.append
            for key in keys:
                if get(key) is None:  # the common case: a key never seen
                    rows[key] = fresh
                    # Built as the tuple it is: the named tuple's own __new__ is one more
                    # Python call.
                    add(_tuple(Claim, (key, _NEW, token, None, expires, None, 1)))
                else:
                    add(self._claim_one(key, now, token, expires))
            return claims

    def _claim_one(self, key: str, now: float, token: str, expires: float) -> Claim:
        row = self.rows[key]
        if row[0] == _COMPLETED:
            if row[3] > now:
                return Claim(key, ClaimStatus.COMPLETED, outcome=_outcome(row))
        elif row[2] > now:
            return Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=row[2])
        deliveries = row[8] + 1 if row[0] != _COMPLETED else 1  # released, or lapsed
        self.rows[key] = (_IN_PROGRESS, token, expires, _NEVER, None, 0, None, None, deliveries)
        return _tuple(Claim, (key, _NEW, token, None, expires, None, deliveries))

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark keys completed where the fence holds."""
        self.faults.check("store.complete")
        self.calls["complete"] += 1
        with self.lock:
            return self._complete(completions)

    async def complete_with(
        self, completions: Sequence[Completion], writes: Mapping[str, Sequence[Output]]
    ) -> list[bool]:
        """Complete keys and put their outputs in one step; refused keys write nothing."""
        if not isinstance(writes, MemoryWrites):
            raise ConfigurationError(
                "a memory store commits MemoryWrites (what MemorySink.write_and_complete "
                f"passes), not {type(writes).__name__}"
            )
        self.calls["complete"] += 1
        with self.lock:
            accepted = self._complete(completions)
            if all(accepted):
                writes.apply()
            else:
                writes.apply({c.key for c, ok in zip(completions, accepted, strict=True) if ok})
            return accepted

    def _complete(self, completions: Sequence[Completion]) -> list[bool]:
        expires_at = self.clock.now() + self.ttl_seconds
        rows = self.rows
        accepted = []
        status = _STATUS
        # Keys leased by one claim call share one row, and most complete with one outcome:
        # they then share one completed row too (one tuple per batch, not per key).
        shared: tuple[_Row, Outcome, _Row] | None = None
        for claim, outcome in completions:
            key = claim[0]
            row = rows.get(key)
            # A repeated completion by the same holder is accepted: a retried call whose
            # first answer was lost must not look like a lost lease.
            ok = row is not None and row[1] == claim[2]
            if ok and row is not None:
                if shared is None or shared[0] is not row or shared[1] is not outcome:
                    done: _Row = (
                        _COMPLETED,
                        row[1],
                        row[2],
                        expires_at,
                        status[outcome[0]],
                        outcome[1],
                        outcome[2],
                        outcome[3],
                        row[8],
                    )
                    shared = (row, outcome, done)
                rows[key] = shared[2]
            accepted.append(ok)
        return accepted

    async def release(self, claims: Sequence[Claim], *, refund: bool = False) -> None:
        """End leases still held by these claims, keeping each key's delivery count."""
        self.faults.check("store.release")
        self.calls["release"] += 1
        with self.lock:
            for claim in claims:
                row = self.rows.get(claim.key)
                if row and row[0] == _IN_PROGRESS and row[1] == claim.token:
                    # The lease ends now (the token no longer fences anything); the count stays.
                    count = row[8] - 1 if refund else row[8]
                    self.rows[claim.key] = (_IN_PROGRESS, "", -_NEVER, _NEVER, None, 0, None,
                                            None, count)  # fmt: skip

    # -- the LaneStore protocol: one record per lane, under the same lock -----------------

    def _lane(self, lane: str, now: float) -> LaneRecord | None:
        record = self.lanes.get(lane)
        if record is not None and record.updated_at + self.lane_ttl_seconds <= now:
            return None  # outlived the lane TTL: counts as absent
        return record

    async def claim_lanes(
        self, requests: Sequence[LaneRequest], lease_seconds: float
    ) -> list[LaneClaim]:
        """Lease each lane; see `onceflow.LaneStore.claim_lanes`."""
        self.faults.check("store.claim_lanes")
        self.calls["claim_lanes"] = self.calls.get("claim_lanes", 0) + 1
        claims = []
        with self.lock:
            now = self.clock.now()
            for request in requests:
                token = str(next(self._tokens))
                claim, written = take(
                    self._lane(request.lane, now),
                    request,
                    now=now,
                    lease_seconds=lease_seconds,
                    token=token,
                )
                if written is not None:
                    self.lanes[request.lane] = written
                claims.append(claim)
        return claims

    async def commit_lanes(self, commits: Sequence[LaneCommit]) -> list[bool]:
        """Write each lane's state where its fence holds."""
        self.faults.check("store.commit_lanes")
        self.calls["commit_lanes"] = self.calls.get("commit_lanes", 0) + 1
        with self.lock:
            return self._commit_lanes(commits)

    def _commit_lanes(self, commits: Sequence[LaneCommit]) -> list[bool]:
        now = self.clock.now()
        accepted = []
        for commit in commits:
            stored = self._lane(commit.claim.lane, now)
            ok = fence_holds(stored, commit)
            if ok and stored is not None:
                self.lanes[stored.lane] = commit_record(stored, commit, now=now)
            accepted.append(ok)
        return accepted

    async def complete_with_lanes(
        self,
        completions: Sequence[Completion],
        writes: Mapping[str, Sequence[Output]],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """Complete keys, commit lanes and put the outputs of what held, in one step."""
        if not isinstance(writes, MemoryWrites):
            raise ConfigurationError(
                f"a memory store commits MemoryWrites, not {type(writes).__name__}"
            )
        self.calls["complete"] += 1
        with self.lock:
            accepted = self._complete(completions)
            lane_ok = self._commit_lanes(lanes)
            refused = {c.key for c, ok in zip(completions, accepted, strict=True) if not ok}
            for commit, ok in zip(lanes, lane_ok, strict=True):
                if not ok:
                    refused |= commit.keys
            if not refused:
                writes.apply()
            else:
                writes.apply({key for key in writes if key not in refused})
            return accepted, lane_ok

    async def release_lanes(self, claims: Sequence[LaneClaim]) -> None:
        """End lane leases still held by these claims."""
        self.faults.check("store.release_lanes")
        with self.lock:
            now = self.clock.now()
            for claim in claims:
                written = release_record(self._lane(claim.lane, now), claim, now=now)
                if written is not None:
                    self.lanes[claim.lane] = written

    def status(self, key: str) -> ClaimStatus | None:
        """The key's stored status as of now, or None when absent or expired."""
        with self.lock:
            row = self.rows.get(key)
            now = self.clock.now()
            released = row is not None and row[0] == _IN_PROGRESS and not row[1]
            if row is None or released or (row[0] == _COMPLETED and row[3] <= now):
                return None
            return ClaimStatus(row[0])
