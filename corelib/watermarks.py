"""Lane watermarks: one record per ordered lane instead of one marker per event.

The state logic lives here, so every store does the same thing: a store reads a lane's
record, calls `take`, `commit_record` or `release_record`, and writes what they return
atomically (one transaction, or a write conditional on the version it read).

Contract with the sources (why a watermark is sound): a lane's events reach the runner in
batches that each start at the source's checkpoint for that lane and hold a contiguous
run of the lane in increasing position (Kinesis and DynamoDB Streams shards with
ParallelizationFactor 1, Event Hubs partitions, file checkpoints). So everything below a
batch's first position was settled or given up by the source, and no lane event lies
between two consecutive positions of one batch. A decoder declares a lane (the
`LANE_ATTRIBUTE` attribute) only where this holds and positions are distinct per event.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping

from onceflow.batch import Item, State
from onceflow.event import Event
from onceflow.records import (
    ClaimStatus,
    LaneClaim,
    LaneCommit,
    LaneRecord,
    LaneRequest,
    LaneState,
)

__all__ = [
    "LANE_ATTRIBUTE",
    "LANE_TTL_SECONDS",
    "LaneBatch",
    "LaneSettlement",
    "chained_record",
    "commit_record",
    "decode_state",
    "deliveries",
    "encode_state",
    "fence_holds",
    "keeps_lease",
    "lane_of",
    "position_of",
    "release_record",
    "settle",
    "settles",
    "settles_all",
    "take",
]

LANE_ATTRIBUTE = "onceflow.lane"
"""The attribute a decoder sets to put an event on a watermark lane (e.g. the shard id)."""

LANE_TTL_SECONDS = 400 * 86_400.0
"""How long a lane record outlives its last write, by default: longer than any source
keeps a lane (a Kinesis stream retains up to 365 days). A lane record that expired while
the source can still redeliver below its watermark would make those events new again;
there is one small record per lane, so keeping it long costs next to nothing."""

MAX_SETTLED = 100
"""Settled intervals a lane keeps above its watermark; the highest beyond are forgotten."""
MAX_FAILURES = 100
"""Failed positions whose deliveries a lane counts; the highest beyond start again at 1."""
MAX_CRASHED = 20
"""Crashed ranges a lane counts; the highest beyond are forgotten."""
# Why bounded: a lane's state is one stored item (an Azure Table property holds 32K UTF-16
# characters, a DynamoDB item 400 KB), and an ordered batch of 10,000 whose partition keys
# alternate failing would otherwise keep 5,000 intervals: its commit would fail every time.
# Forgetting a run only means its events are processed again when the source redelivers
# them behind the gap (keyed overwrites); forgetting a count, a poison pill takes longer.
# At the caps a state encodes to about 21,000 characters with Kinesis-sized positions.

_MAX_DIGITS = 160  # Kinesis sequence numbers have up to 129 digits


def lane_of(event: Event) -> str | None:
    """The event's lane id (`source` + declared lane), or None when it is on no lane."""
    lane = event.attributes.get(LANE_ATTRIBUTE)
    if not lane or position_of(event) is None:
        return None
    return f"{event.source}#lane#{lane}"


def position_of(event: Event) -> int | None:
    """The event's position on its lane: its sequence when that is a decimal integer."""
    seq = event.sequence
    if not seq or len(seq) > _MAX_DIGITS or not seq.isascii() or not seq.isdigit():
        return None
    return int(seq)


def settles(state: LaneState, position: int) -> bool:
    """Whether `position` is settled on the lane (a duplicate without a per-event read)."""
    if position <= state.watermark:
        return True
    return any(low <= position <= high for low, high in state.settled)


def settles_all(state: LaneState, request: LaneRequest) -> bool:
    """Whether the state settles every position of `request` (its `positions`, or, when
    it names none, its whole range)."""
    if request.high <= state.watermark:
        return True
    if request.positions:
        return all(settles(state, p) for p in request.positions)
    return any(low <= request.low and request.high <= high for low, high in state.settled)


def deliveries(state: LaneState, position: int) -> int:
    """This delivery's number for `position` (1 the first time), for `max_deliveries`."""
    counted = 1
    for pos, n in state.failures:
        if pos == position:
            counted += n
    for low, high, n in state.crashed:
        if low <= position <= high:
            counted += n
    return counted


def take(
    stored: LaneRecord | None,
    request: LaneRequest,
    *,
    now: float,
    lease_seconds: float,
    token: str,
) -> tuple[LaneClaim, LaneRecord | None]:
    """The claim answer for a lane, and the record to write (None: write nothing).

    `stored` is None for a lane never seen (or whose record outlived its TTL). When the
    stored state settles every position of the request (a redelivered batch of duplicates)
    the answer is COMPLETED and nothing is written, whoever holds the lease. A live lease
    of another claim answers IN_PROGRESS with the state read. Otherwise the lane is leased
    to `token`; a lapsed lease's range is charged one delivery (its holder crashed before
    committing).
    """
    if stored is None:
        stored = LaneRecord(request.lane, LaneState(), version=0)
    state = stored.state
    if settles_all(state, request):
        claim = LaneClaim(
            request.lane, ClaimStatus.COMPLETED, state, None, None, stored.version
        )  # fmt: skip
        return claim, None
    if stored.lease_expires_at > now and stored.token != token:
        claim = LaneClaim(
            request.lane, ClaimStatus.IN_PROGRESS, state, None, stored.lease_expires_at,
            stored.version,
        )  # fmt: skip
        return claim, None
    if state.inflight is not None:
        state = state._replace(crashed=_charge(state.crashed, state.inflight, state.watermark))
    state = state._replace(inflight=(request.low, request.high))
    expires = now + lease_seconds
    written = LaneRecord(request.lane, state, token, expires, stored.version + 1, now)
    claim = LaneClaim(request.lane, ClaimStatus.NEW, state, token, expires, written.version)
    return claim, written


def fence_holds(stored: LaneRecord | None, commit: LaneCommit) -> bool:
    """Whether `commit` may write: the stored token is still its claim's.

    A takeover (a new claim after the lease lapsed or was released) changes the token; a
    commit retried by the same claim (a lost reply) still matches and is accepted. An
    optimistic store (no lease at claim) instead compares `version` with the claim's, or
    accepts a stored token equal to the claim's (its own earlier commit).
    """
    return stored is not None and bool(commit.claim.token) and stored.token == commit.claim.token


def commit_record(stored: LaneRecord, commit: LaneCommit, *, now: float) -> LaneRecord:
    """The record to write for a commit whose fence held: the new state, lease ended (kept,
    with the range in flight, for a link of a chain: `keeps_lease`)."""
    if keeps_lease(commit):
        state = commit.state._replace(inflight=stored.state.inflight)
        return LaneRecord(
            stored.lane, state, stored.token, stored.lease_expires_at, stored.version + 1, now
        )
    return LaneRecord(
        stored.lane,
        commit.state._replace(inflight=None),
        stored.token,
        float("-inf"),
        stored.version + 1,
        now,
    )


def keeps_lease(commit: LaneCommit) -> bool:
    """Whether `commit` is a link of a chain (more of the batch commits after it): it writes
    its state and keeps the lease and the range in flight, so a crash before the chain's
    last link is charged like any crash and nobody takes the lane before the lease lapses."""
    return isinstance(commit, LaneSettlement) and commit.link


def chained_record(
    claim: LaneClaim, state: LaneState, *, version: int, now: float, final: bool
) -> LaneRecord:
    """The record one transaction of a chained lane commit writes, built from the claim (a
    store writing it conditional on `version - 1` and the claim's token reads nothing): the
    lease kept with the range in flight, or, for the chain's `final` link, ended."""
    if final:
        return LaneRecord(claim.lane, state._replace(inflight=None), claim.token or "",
                          float("-inf"), version, now)  # fmt: skip
    lease = claim.lease_expires_at if claim.lease_expires_at is not None else float("-inf")
    return LaneRecord(
        claim.lane, state._replace(inflight=claim.state.inflight), claim.token or "", lease,
        version, now,
    )  # fmt: skip


def release_record(stored: LaneRecord | None, claim: LaneClaim, *, now: float) -> LaneRecord | None:
    """The record to write to give up a lease without committing (None: nothing to do).

    The range worked on is charged one delivery, as a crash would be.
    """
    if stored is None or stored.token != claim.token or stored.state.inflight is None:
        return None
    state = stored.state
    state = state._replace(
        crashed=_charge(state.crashed, state.inflight, state.watermark),  # type: ignore[arg-type]
        inflight=None,
    )
    return LaneRecord(stored.lane, state, stored.token, float("-inf"), stored.version + 1, now)


def settle(
    state: LaneState,
    outcomes: Iterable[tuple[int, bool, int]],
) -> LaneState:
    """The lane's state after a batch: `outcomes` are (position, settled, deliveries to
    keep) for every lane event of the batch (duplicates settled; a failed event keeps the
    deliveries charged so far: this one, or one fewer when refunded).

    Everything below the batch's first position is settled (the source's checkpoint is
    there); each run of settled positions becomes an interval; intervals touching the
    watermark raise it.
    """
    batch = sorted(outcomes)
    if not batch:
        return state
    first, last = batch[0][0], batch[-1][0]
    intervals = list(state.settled)
    run: list[int] = []
    failed: dict[int, int] = dict(state.failures)
    for position, ok, kept in batch:
        if ok:
            run.append(position)
            failed.pop(position, None)
            continue
        if run:
            intervals.append((run[0], run[-1]))
            run = []
        if kept > 0:
            failed[position] = kept
        else:
            failed.pop(position, None)
    if run:
        intervals.append((run[0], run[-1]))
    watermark = max(state.watermark, first - 1)
    merged: list[tuple[int, int]] = []
    for low, high in sorted(intervals):
        if high <= watermark:
            continue
        if low <= watermark + 1:
            watermark = high
        elif merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    settled = tuple((lo, hi) for lo, hi in merged if hi > watermark)[:MAX_SETTLED]
    crashed = tuple((max(low, last + 1), high, n) for low, high, n in state.crashed if high > last)
    crashed = tuple(sorted(c for c in crashed if c[1] > watermark))[:MAX_CRASHED]
    failures = tuple(
        sorted((p, n) for p, n in failed.items() if p > watermark and not _inside(p, settled))
    )[:MAX_FAILURES]
    return LaneState(watermark, settled, failures, crashed, state.inflight)


def _inside(position: int, intervals: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= position <= high for low, high in intervals)


def _charge(
    crashed: tuple[tuple[int, int, int], ...], inflight: tuple[int, int], watermark: int
) -> tuple[tuple[int, int, int], ...]:
    low, high = inflight
    out: list[tuple[int, int, int]] = []
    found = False
    for c_low, c_high, n in crashed:
        if (c_low, c_high) == (low, high):
            out.append((c_low, c_high, n + 1))
            found = True
        elif c_high > watermark:
            out.append((c_low, c_high, n))
    if not found and high > watermark:
        out.append((low, high, 1))
    return tuple(sorted(out))[:MAX_CRASHED]


def encode_state(state: LaneState) -> str:
    """The state as compact JSON (positions as decimal strings: they exceed 64 bits)."""
    doc: dict[str, object] = {"w": str(state.watermark)}
    if state.settled:
        doc["s"] = [[str(lo), str(hi)] for lo, hi in state.settled]
    if state.failures:
        doc["f"] = [[str(p), n] for p, n in state.failures]
    if state.crashed:
        doc["c"] = [[str(lo), str(hi), n] for lo, hi, n in state.crashed]
    if state.inflight is not None:
        doc["i"] = [str(state.inflight[0]), str(state.inflight[1])]
    return json.dumps(doc, separators=(",", ":"))


def decode_state(text: str) -> LaneState:
    """The state `encode_state` wrote."""
    doc = json.loads(text)
    inflight = doc.get("i")
    return LaneState(
        int(doc["w"]),
        tuple((int(lo), int(hi)) for lo, hi in doc.get("s", ())),
        tuple((int(p), int(n)) for p, n in doc.get("f", ())),
        tuple((int(lo), int(hi), int(n)) for lo, hi, n in doc.get("c", ())),
        None if inflight is None else (int(inflight[0]), int(inflight[1])),
    )


class LaneSettlement(LaneCommit):
    """A lane's commit from one batch, knowing each key's position and outcome.

    A store whose transactions are smaller than a batch's writes commits a lane as a chain
    (DynamoDB: at most 99 writes and the lane record per TransactWriteItems): each link
    writes the record with `holding(keys)`, the state that settles nothing whose writes
    are still to come, and the chain's last link writes `state`. So the watermark never
    passes an event whose writes have not landed, whatever link a crash stops after.
    """

    positions: Mapping[str, int]
    """Each key's position on the lane."""
    outcomes: tuple[tuple[str, int, bool, int, int], ...]
    """(key, position, settled, deliveries kept if not, deliveries before this one)."""
    base: LaneState
    """The lane's state as claimed."""
    link: bool
    """More of the batch commits after this one (a letters link before the outputs): the
    lease is kept (`keeps_lease`)."""

    def __new__(
        cls,
        claim: LaneClaim,
        state: LaneState,
        keys: frozenset[str],
        *,
        outcomes: tuple[tuple[str, int, bool, int, int], ...] = (),
        link: bool = False,
    ) -> LaneSettlement:
        made = super().__new__(cls, claim, state, keys)
        made.outcomes = outcomes
        made.positions = {key: position for key, position, *_ in outcomes}
        made.base = claim.state
        made.link = link
        return made

    def holding(self, keys: Collection[str]) -> LaneState:
        """The state to write while the writes of `keys` have not landed: those positions
        unsettled (keeping the deliveries they had), everything else as in `state`."""
        if not keys:
            return self.state
        return settle(
            self.base,
            [
                (position, False, before) if key in keys else (position, ok, kept)
                for key, position, ok, kept, before in self.outcomes
            ],
        )


class LaneBatch:
    """The lane items of one batch: each item's lane and position, and each lane's claim."""

    def __init__(self) -> None:
        self.positions: dict[Item, tuple[str, int]] = {}
        self.claims: dict[str, LaneClaim] = {}

    def requests(self) -> list[LaneRequest]:
        """One lease request per lane, covering its positions in this batch."""
        by_lane: dict[str, list[int]] = {}
        for lane, position in self.positions.values():
            by_lane.setdefault(lane, []).append(position)
        return [
            LaneRequest(lane, min(positions), max(positions), tuple(positions))
            for lane, positions in by_lane.items()
        ]

    def commits(
        self,
        *,
        pending: Collection[Item] = (),
        lanes: Collection[str] | None = None,
        link: bool = False,
    ) -> list[LaneSettlement]:
        """The new state of every lane this batch leased (of `lanes`, when given), from its
        items' states now; `pending` items' writes are still to come, so they count as
        unsettled, and `link` keeps the lease for the commits that follow."""
        outcomes: dict[str, list[tuple[str, int, bool, int, int]]] = {}
        for item, (lane, position) in self.positions.items():
            if lane not in self.claims or self.claims[lane].status is not ClaimStatus.NEW:
                continue
            if lanes is not None and lane not in lanes:
                continue
            state = item.state
            ok = state in (State.DONE, State.DEAD, State.DUPLICATE) and item not in pending
            counted = item.claim.deliveries if item.claim is not None else 1
            if item in pending:
                kept = counted - 1
            else:
                kept = 0 if ok else (counted - 1 if item.unprocessed else counted)
            outcomes.setdefault(lane, []).append((item.key, position, ok, kept, counted - 1))
        return [
            LaneSettlement(
                claim,
                settle(claim.state, [(p, ok, kept) for _, p, ok, kept, _ in outcomes[lane]]),
                frozenset(key for key, *_ in outcomes[lane]),
                outcomes=tuple(outcomes[lane]),
                link=link,
            )
            for lane, claim in self.claims.items()
            if lane in outcomes
        ]

    def items_of(self, commits: Iterable[LaneCommit]) -> list[Item]:
        """The items on the lanes of `commits`."""
        lanes = {c.claim.lane for c in commits}
        return [item for item, (lane, _) in self.positions.items() if lane in lanes]
