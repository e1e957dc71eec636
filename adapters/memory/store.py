"""An idempotency store held in process memory, with leases, fencing tokens and TTL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

from onceflow.adapters.memory.faults import Faults
from onceflow.clock import SystemClock
from onceflow.interfaces import Clock
from onceflow.records import Claim, ClaimStatus, Completion, Outcome, OutcomeStatus

__all__ = ["MemoryIdempotencyStore"]


# A row is a plain tuple of strings and numbers, no enums or named tuples: the garbage
# collector then stops tracking it, so a store holding millions of keys adds nothing to
# every full collection. (status, token, lease_expires_at, expires_at, outcome fields...)
_Row = tuple[str, str, float, float, str | None, int, str | None, str | None]
_IN_PROGRESS = ClaimStatus.IN_PROGRESS.value
_COMPLETED = ClaimStatus.COMPLETED.value
_NEVER = float("inf")


def _outcome(row: _Row) -> Outcome:
    return Outcome(OutcomeStatus(row[4]), row[5], row[6], row[7])


class MemoryIdempotencyStore:
    """Keys, leases and outcomes in a dict; thread-safe, and atomic with `MemorySink`.

    Two handles made with `handle()` share state, as two workers sharing one table.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 86_400.0,
        clock: Clock | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock: Clock = clock or SystemClock()
        self.faults = faults or Faults()
        self.lock = threading.RLock()
        self.rows: dict[str, _Row] = {}
        self._tokens = itertools.count(1)
        self.calls: dict[str, int] = {"claim": 0, "complete": 0, "release": 0}

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
            claim_one = self._claim_one
            return [claim_one(key, now, lease_seconds) for key in keys]

    def _claim_one(self, key: str, now: float, lease_seconds: float) -> Claim:
        row = self.rows.get(key)
        if row is not None:
            if row[0] == _COMPLETED and row[3] > now:
                return Claim(key, ClaimStatus.COMPLETED, outcome=_outcome(row))
            if row[0] == _IN_PROGRESS and row[2] > now:
                return Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=row[2])
        token = str(next(self._tokens))
        expires = now + lease_seconds
        self.rows[key] = (_IN_PROGRESS, token, expires, _NEVER, None, 0, None, None)
        return Claim(key, ClaimStatus.NEW, token, None, expires)

    async def complete(self, completions: Sequence[Completion]) -> list[bool]:
        """Mark keys completed where the fence holds."""
        self.faults.check("store.complete")
        self.calls["complete"] += 1
        with self.lock:
            return self.complete_locked(completions)

    def complete_locked(self, completions: Sequence[Completion]) -> list[bool]:
        """`complete` for a caller that already holds `lock` (the atomic sink)."""
        expires_at = self.clock.now() + self.ttl_seconds
        rows = self.rows
        accepted = []
        for claim, outcome in completions:
            row = rows.get(claim.key)
            # A repeated completion by the same holder is accepted: a retried call whose
            # first answer was lost must not look like a lost lease.
            ok = row is not None and row[1] == claim.token
            if ok and row is not None:
                rows[claim.key] = (
                    _COMPLETED,
                    row[1],
                    row[2],
                    expires_at,
                    outcome.status.value,
                    outcome.outputs,
                    outcome.fingerprint,
                    outcome.detail,
                )
            accepted.append(ok)
        return accepted

    def holds(self, completion: Completion) -> bool:
        """Whether the completion's fencing token is still the key's current one."""
        row = self.rows.get(completion.key)
        # A repeated completion by the same holder is accepted: a retried call whose
        # first answer was lost must not look like a lost lease.
        return row is not None and row[1] == completion.claim.token

    async def release(self, claims: Sequence[Claim]) -> None:
        """Drop leases still held by these claims."""
        self.faults.check("store.release")
        self.calls["release"] += 1
        with self.lock:
            for claim in claims:
                row = self.rows.get(claim.key)
                if row and row[0] == _IN_PROGRESS and row[1] == claim.token:
                    del self.rows[claim.key]

    def status(self, key: str) -> ClaimStatus | None:
        """The key's stored status as of now, or None when absent or expired."""
        with self.lock:
            row = self.rows.get(key)
            now = self.clock.now()
            if row is None or (row[0] == _COMPLETED and row[3] <= now):
                return None
            return ClaimStatus(row[0])
