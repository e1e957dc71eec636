"""A key's lease or completion as stored, and the rounds a contended write gets.

Shared by the Table and Cosmos stores.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from onceflow.records import Claim, ClaimStatus, Completion, Outcome, OutcomeStatus
from onceflow.retry import Backoff, RetryPolicy

__all__ = [
    "COMPLETED",
    "IN_PROGRESS",
    "UnansweredClaims",
    "completed_by",
    "completed_fields",
    "contention_policy",
    "deliveries_after",
    "held_answer",
    "lapsed_since",
    "released_fields",
    "rounds",
    "stored_outcome",
]

IN_PROGRESS = "in_progress"
COMPLETED = "completed"


def held_answer(key: str, row: Mapping[str, Any] | None, now: float) -> Claim | None:
    """COMPLETED or IN_PROGRESS when `row` still binds the key at `now`; None when it is free."""
    if row is None:
        return None
    if row.get("status") == COMPLETED and float(row.get("expires_at", 0)) > now:
        return Claim(key, ClaimStatus.COMPLETED, outcome=stored_outcome(row))
    lease_end = float(row.get("lease_expires_at", 0))
    if row.get("status") == IN_PROGRESS and lease_end > now:
        return Claim(key, ClaimStatus.IN_PROGRESS, lease_expires_at=lease_end)
    return None


def completed_by(completion: Completion, row: Mapping[str, Any] | None) -> bool:
    """Whether `row` is this completion's own commit (a retried commit whose reply was lost).

    A completed row keeps the token of the lease that completed it, and only that
    lease's holder completes with it.
    """
    token = completion.claim.token
    return bool(
        row is not None and token and row.get("status") == COMPLETED and row.get("token") == token
    )


class UnansweredClaims:
    """Leases this store handle wrote but whose answer never reached its caller.

    A claim whose reply was lost (the request landed, the connection dropped) raises, and
    the caller claims the key again with a new token: without this memory the store
    would read its own new lease back as another worker's and answer IN_PROGRESS for the
    whole lease time. A later claim of the key by this handle adopts the lease instead.
    """

    LIMIT = 100_000

    def __init__(self) -> None:
        self._claims: OrderedDict[str, Claim] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, claim: Claim) -> None:
        """`claim` is about to be written; until `answered`, a lost reply may leave it."""
        with self._lock:
            self._claims[claim.key] = claim
            self._claims.move_to_end(claim.key)
            while len(self._claims) > self.LIMIT:
                self._claims.popitem(last=False)

    def answered(self, keys: Iterable[str]) -> None:
        """The caller got its answers for `keys`: nothing of theirs is unanswered."""
        with self._lock:
            for key in keys:
                self._claims.pop(key, None)

    def adopt(self, key: str, row: Mapping[str, Any] | None, now: float) -> Claim | None:
        """Our own unanswered lease on `key`, when `row` is it and still live."""
        if row is None or row.get("status") != IN_PROGRESS:
            return None
        with self._lock:
            claim = self._claims.get(key)
        token = row.get("token")
        lease_end = float(row.get("lease_expires_at", 0))
        if claim is None or not token or token != claim.token or lease_end <= now:
            return None
        return claim._replace(
            lease_expires_at=lease_end, deliveries=int(row.get("deliveries", claim.deliveries))
        )


def deliveries_after(row: Mapping[str, Any] | None) -> int:
    """The delivery count a new claim of a free key records: one more than the row's.

    A key never seen, or whose completed record expired, starts again at 1; a released
    or lapsed lease (its holder died) counts on from the stored count (rows written before
    counting existed count as 1).
    """
    if row is None or row.get("status") != IN_PROGRESS:
        return 1
    return int(row.get("deliveries", 1)) + 1


def released_fields(claim: Claim, *, refund: bool, now: float) -> dict[str, Any]:
    """A released lease's fields: free at once (no token, lapsed), its count kept.

    The claim's fence holds for the write, so the stored count is the claim's; with
    `refund` this delivery is taken back (the event was handed back unprocessed).
    """
    return {
        "key": claim.key,
        "status": IN_PROGRESS,
        "token": "",
        "lease_expires_at": 0.0,
        "released_at": now,
        "deliveries": max(0, claim.deliveries - 1) if refund else claim.deliveries,
    }


def lapsed_since(row: Mapping[str, Any]) -> float:
    """When an in-progress row's lease ended (its expiry, or the release)."""
    return max(float(row.get("lease_expires_at", 0)), float(row.get("released_at", 0)))


def completed_fields(completion: Completion, now: float, ttl_seconds: float) -> dict[str, Any]:
    """The fields of a completed key's row (besides its address)."""
    outcome = completion.outcome
    fields: dict[str, Any] = {
        "key": completion.key,
        "status": COMPLETED,
        "token": completion.claim.token or "",
        "expires_at": now + ttl_seconds,
        "outcome_status": outcome.status.value,
        "outcome_outputs": outcome.outputs,
    }
    if outcome.fingerprint is not None:
        fields["outcome_fingerprint"] = outcome.fingerprint
    if outcome.detail is not None:
        fields["outcome_detail"] = outcome.detail
    return fields


def stored_outcome(row: Mapping[str, Any]) -> Outcome:
    """The outcome a completed row holds."""
    return Outcome(
        OutcomeStatus(row.get("outcome_status", OutcomeStatus.SUCCEEDED.value)),
        int(row.get("outcome_outputs", 0)),
        row.get("outcome_fingerprint"),
        row.get("outcome_detail"),
    )


def contention_policy() -> RetryPolicy:
    """The stores' default for one contended key: 5 rounds in all, a few milliseconds apart."""
    return RetryPolicy(attempts=5, backoff=Backoff(base=0.005, cap=0.1))


def rounds(policy: RetryPolicy) -> Iterator[int]:
    """Round numbers 1 to `policy.attempts`, for blocking loops that stop early.

    The policy's delay is slept when the loop asks for the next round, so a loop that
    breaks (or returns) after a round that settled everything does not wait.
    """
    yield 1
    for attempt, wait in enumerate(policy.delays(), start=2):
        time.sleep(wait)
        yield attempt
