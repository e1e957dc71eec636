"""The stored shape of a key's lease or completion, shared by the Table and Cosmos stores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onceflow.records import Claim, ClaimStatus, Completion, Outcome, OutcomeStatus

__all__ = ["COMPLETED", "IN_PROGRESS", "completed_fields", "held_answer", "stored_outcome"]

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
