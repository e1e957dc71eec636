"""Processing a batch's claimed items: concurrently across lanes, in sequence within one.

A lane is one partition key when the pipeline is ordered (each event without a partition
key is a lane of its own), and every event is its own lane otherwise. A lane whose head
waits for a retry waits as a whole; in ordered mode a failed head fails the rest of its
lane, so a later event never overtakes an earlier one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from operator import le

import anyio

from onceflow.attempts import Attempts
from onceflow.batch import Item, State
from onceflow.failures import FailureKind
from onceflow.interfaces import Clock

__all__ = ["Lanes"]


class Lanes:
    """Runs attempts over a batch's items, lane by lane, until each settles or time is up."""

    def __init__(
        self, attempts: Attempts, *, ordered: bool, clock: Clock, concurrency: int
    ) -> None:
        self.attempts = attempts
        self.ordered = ordered
        self.clock = clock
        self.limiter = anyio.CapacityLimiter(max(1, concurrency))
        self.held_for_order = 0
        """Events the last run held back behind an earlier failed event of their lane."""
        self._sequenced: list[list[Item]] = []
        """The last ordered run's lanes in sequence order, for `hold` at commit."""

    async def run(self, items: list[Item], deadline: float | None) -> None:
        """Attempt every pending item until each is done, dead, failed, or out of time."""
        attempts, clock, ordered = self.attempts, self.clock, self.ordered
        self.held_for_order = 0
        self._sequenced = []
        pending = [item for item in items if item.state is State.PENDING]
        breaker = attempts.breaker
        # A probe is due: keys whose probe failed before go last (never reordering a lane).
        rotate = breaker is not None and breaker.is_open and bool(breaker.probed)
        if rotate and not ordered:
            assert breaker is not None
            pending = [pending[i] for i in breaker.probe_first([item.key for item in pending])]
        if not ordered and not attempts.is_async and attempts.rate is None and pending:
            # Fast path: every first attempt in one plain loop; only retries need lanes.
            now = clock.now()
            attempt = attempts.attempt
            if deadline is None:
                for item in pending:
                    attempt(item, now)
            else:
                for item in pending:
                    if clock.now() >= deadline:
                        break  # the rest are failed below, with the reason
                    attempt(item, now)
            pending = [item for item in pending if item.state is State.PENDING]
        if ordered:
            # Ordered lanes keep settled items too: a failed one must hold back its successors.
            self._sequenced = _lanes(items)
            lanes = [deque(lane) for lane in self._sequenced]
        else:
            lanes = [deque([item]) for item in pending]
        if rotate and ordered:
            assert breaker is not None
            lanes = [lanes[i] for i in breaker.probe_first([lane[0].key for lane in lanes])]
        while lanes:
            now = clock.now()
            if breaker is not None and breaker.holding(now):
                # An outage: what is left goes back for redelivery instead of waiting here.
                for lane in lanes:
                    for item in lane:
                        if item.state is State.PENDING:
                            attempts.hold_back(item)
                return
            if deadline is not None and now >= deadline:
                for lane in lanes:
                    for item in lane:
                        item.fail(
                            FailureKind.OUT_OF_TIME,
                            "time budget ran out before this event was processed",
                        )
                return
            ready = [lane for lane in lanes if lane[0].ready_at <= now]
            if not ready:
                wake = min(lane[0].ready_at for lane in lanes)
                if deadline is not None and wake >= deadline:
                    await clock.sleep(max(0.0, deadline - now))
                else:
                    await clock.sleep(wake - now)
                continue
            if attempts.is_async and len(ready) > 1:
                async with anyio.create_task_group() as group:
                    for lane in ready:
                        group.start_soon(self._advance_limited, lane, now, deadline)
            else:
                for lane in ready:
                    await self._advance(lane, now, deadline)
            lanes = [lane for lane in lanes if lane]

    async def _advance_limited(self, lane: deque[Item], now: float, deadline: float | None) -> None:
        async with self.limiter:
            await self._advance(lane, now, deadline)

    async def _advance(self, lane: deque[Item], now: float, deadline: float | None) -> None:
        """Run the lane from its head until it empties, its head must wait, or time runs out."""
        attempt, rate, clock, pending = (
            self.attempts.attempt,
            self.attempts.rate,
            self.clock,
            State.PENDING,
        )
        while lane:
            item = lane[0]
            if item.state is pending:
                if item.ready_at > now:
                    return
                if deadline is not None and clock.now() >= deadline:
                    return  # the caller fails what is left once it sees the deadline
                if rate is not None:
                    await rate.acquire(clock)
                finishing = attempt(item, now)
                if finishing is not None:
                    await finishing
                if item.state is pending:
                    return  # waiting for a retry; in ordered mode the lane waits with it
            if item.state is State.FAILED and self.ordered:
                lane.popleft()
                for later in lane:
                    self.held_for_order += 1
                    later.fail(
                        FailureKind.HELD_FOR_ORDER,
                        f"an earlier event of partition {item.record.partition_key!r} "
                        "failed, so this one waits to keep order",
                    )
                lane.clear()
                return
            lane.popleft()

    def in_sequence(self, items: list[Item]) -> list[Item]:
        """The last run's items lane by lane in sequence order (ordered mode), else `items`:
        the order their outputs are written in, so a sink sees each lane in order."""
        if not self.ordered or not self._sequenced:
            return items
        return [item for lane in self._sequenced for item in lane]

    def hold(self, stops: Collection[Item] = ()) -> int:
        """Fail, for redelivery, each event not yet committed behind one that will come
        again: a failed one (for whatever reason) or one of `stops`; how many.

        The commit calls it whenever an event failed there (no dead-letter sink, a refused
        letter, an outage), so an ordered lane never commits past an event that comes again.
        """
        held = 0
        done, dead, failed = State.DONE, State.DEAD, State.FAILED
        for lane in self._sequenced:
            stop: Item | None = None
            for item in lane:
                if stop is None:
                    if item.state is failed or item in stops:
                        stop = item
                elif item.state is done or item.state is dead:
                    held += 1
                    item.fail(
                        FailureKind.HELD_FOR_ORDER,
                        f"an earlier event of partition {stop.record.partition_key!r} "
                        "must come again, so this one waits to keep order",
                    )
        self.held_for_order += held
        return held


def _lanes(items: list[Item]) -> list[list[Item]]:
    lanes: dict[object, list[Item]] = {}
    for item in items:
        lane_key = item.record.partition_key
        # Events without a partition key promise no order: each is a lane of its own.
        lanes.setdefault(lane_key if lane_key is not None else item, []).append(item)
    return [_in_sequence(lane) if len(lane) > 1 else lane for lane in lanes.values()]


def _in_sequence(lane: list[Item]) -> list[Item]:
    """The lane in sequence-number order when every event has a numeric one; else as given."""
    sequences = [item.record.sequence for item in lane]
    if None in sequences or not all(map(str.isdigit, sequences)):  # type: ignore[arg-type]
        return lane
    try:
        numbers = list(map(int, sequences))  # type: ignore[arg-type]
    except ValueError:  # digits int() does not read (superscripts): keep delivery order
        return lane
    if all(map(le, numbers, numbers[1:])):
        return lane  # the common case: delivered in order
    return [lane[i] for i in sorted(range(len(lane)), key=numbers.__getitem__)]
