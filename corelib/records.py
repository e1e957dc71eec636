"""The plain records passed between the runner and its backends.

They are named tuples rather than frozen dataclasses on purpose: the runner makes
several per event, and a tuple is built several times faster.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from onceflow.identity import event_key

__all__ = [
    "Claim",
    "ClaimStatus",
    "Completion",
    "InvalidRecord",
    "LaneClaim",
    "LaneCommit",
    "LaneRecord",
    "LaneRequest",
    "LaneState",
    "ObjectInfo",
    "Outcome",
    "OutcomeStatus",
    "Output",
]


class ClaimStatus(enum.Enum):
    """What a store answers for one key asked to be claimed."""

    # Members are singletons compared by identity, so hashing by identity agrees with
    # equality; Enum's own __hash__ is a Python call, paid per event by stores that file
    # rows or texts by status.
    __hash__ = object.__hash__

    NEW = "new"
    """Nobody holds the key: it is now leased to the caller, guarded by `Claim.token`."""
    IN_PROGRESS = "in_progress"
    """Another worker holds a live lease on the key."""
    COMPLETED = "completed"
    """The key's effect is already committed; `Claim.outcome` says how."""


class OutcomeStatus(enum.Enum):
    """How a key was completed."""

    __hash__ = object.__hash__  # see ClaimStatus

    SUCCEEDED = "succeeded"
    DEAD_LETTERED = "dead_lettered"


class Outcome(NamedTuple):
    """The stored result of a completed key."""

    status: OutcomeStatus
    outputs: int = 0
    fingerprint: str | None = None
    """A hash of the payload that produced it, to report a key reused for another payload."""
    detail: str | None = None
    """For a dead-lettered key: the error's one-line summary."""


class Claim(NamedTuple):
    """A store's answer for one key: its status and, when NEW, the fencing token now held."""

    key: str
    status: ClaimStatus
    token: str | None = None
    """Fencing token of the lease the caller now holds (NEW only)."""
    outcome: Outcome | None = None
    """The stored outcome (COMPLETED only)."""
    lease_expires_at: float | None = None
    """When the lease runs out (NEW and IN_PROGRESS), in the store's clock."""
    observed: str | None = None
    """For a store that leases nothing at claim time (NEW only): the version of the key's
    record it read then ("" for none), so its commit can be conditional on it."""
    deliveries: int = 1
    """How many times the key has been delivered, this delivery included (NEW only):
    the store counts them across deliveries, so a poison pill is recognised."""


class Completion(NamedTuple):
    """A request to mark a claimed key completed with an outcome, fenced by its token."""

    claim: Claim
    outcome: Outcome

    @property
    def key(self) -> str:
        """The key being completed."""
        return self.claim.key


class Output(NamedTuple):
    """One value a processor produced for one event, with its deterministic identity."""

    output_id: str
    """Derived from the event key and the output's position: a rewrite is an overwrite."""
    event_key: str
    event_id: str
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose: the position
    value: Any
    """Plain data: dicts, lists, str, int, float, bool, None, Decimal, bytes."""
    partition_key: str | None = None
    time: datetime | None = None
    """The time of the event that produced it (for time partitioning)."""
    sequence: str | None = None
    """The event's position in its partition (for sinks that track progress per lane)."""
    attributes: Mapping[str, str] | None = None
    """Message metadata for sinks that carry it (the W3C `traceparent` when tracing)."""


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A raw record that could not be turned into an `Event`; the runner dead-letters it."""

    id: str
    """A stable identity for the record (its position: sequence number, message id, line)."""
    source: str
    reason: str
    raw: bytes = b""
    locator: str = ""
    """Where a person finds the record: `orders.jsonl:17`, a stream ARN and sequence number."""
    partition_key: str | None = None
    sequence: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The idempotency key, built the same way as `Event.key`."""
        return event_key(self.source, self.id)


class ObjectInfo(NamedTuple):
    """An object's path, size and version tag in an object store."""

    path: str
    size: int
    etag: str | None = None
    modified: float | None = None


class LaneRequest(NamedTuple):
    """A batch's ask to lease one watermark lane: the lane and its positions' range."""

    lane: str
    """The lane's id (`onceflow.watermarks.lane_of`): the store's key for its record."""
    low: int
    """The batch's lowest position on the lane."""
    high: int
    """The batch's highest position on the lane (kept while leased, to charge a crash)."""
    positions: tuple[int, ...] = ()
    """Every position of the batch on the lane, when known: if the stored state settles
    them all, the claim writes nothing (a redelivered batch of duplicates costs a read)."""


class LaneState(NamedTuple):
    """A lane's progress: what is settled on it, and the deliveries of what is not.

    Positions are non-negative integers. Every position at or below `watermark` is
    settled; so is every position inside a `settled` interval (a run of one batch, so
    no lane event lies between its ends that was not in it).
    """

    watermark: int = -1
    """Every position up to here is settled (processed, duplicate or dead-lettered)."""
    settled: tuple[tuple[int, int], ...] = ()
    """Settled intervals (low, high) above a gap, sorted, disjoint, all above the watermark."""
    failures: tuple[tuple[int, int], ...] = ()
    """(position, deliveries charged so far) of events above the watermark that failed."""
    crashed: tuple[tuple[int, int, int], ...] = ()
    """(low, high, n): n deliveries of the positions in [low, high] whose holder never
    committed (its lease lapsed): each counts against `max_deliveries`."""
    inflight: tuple[int, int] | None = None
    """The range (low, high) the lease holder is working on, None when not leased."""


class LaneRecord(NamedTuple):
    """What a store keeps per lane: its state plus the fence (token, lease) and a version."""

    lane: str
    state: LaneState
    token: str = ""
    """The token of the last claim that leased or committed it (the fence)."""
    lease_expires_at: float = float("-inf")
    """When the current lease runs out; -inf when no lease is held."""
    version: int = 0
    """Bumped by every write: an optimistic store's write is conditional on it."""
    updated_at: float = 0.0


class LaneClaim(NamedTuple):
    """A store's answer for one lane: its state and, when NEW, the lease now held."""

    lane: str
    status: ClaimStatus
    """NEW (leased to the caller), IN_PROGRESS (another worker's live lease), or COMPLETED
    (every position of the request is settled: nothing leased, nothing written); `state`
    says which positions are settled."""
    state: LaneState
    """The lane's state as read: positions it settles are duplicates either way."""
    token: str | None = None
    lease_expires_at: float | None = None
    version: int = 0
    """The record's version this claim wrote (or, for an optimistic store, read)."""


class LaneCommit(NamedTuple):
    """A request to write a lane's new state, fenced by the claim that leased it."""

    claim: LaneClaim
    state: LaneState
    keys: frozenset[str] = frozenset()
    """The event keys whose writes commit with it: refused, none of their writes apply."""
