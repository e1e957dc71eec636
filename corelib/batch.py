"""One batch inside the runner: an item per record, its state, and what the batch came to."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, final

from onceflow.event import Event
from onceflow.failures import Failure, FailureKind, safe_text
from onceflow.identity import event_keys
from onceflow.interfaces import Metrics
from onceflow.records import Claim, InvalidRecord, Output
from onceflow.results import BatchResult

__all__ = ["Item", "Record", "State", "describe", "items_of", "log_extra", "result_of", "split"]

log = logging.getLogger("onceflow")

Record = Event | InvalidRecord

# Failures worth a log line even when an error was already logged for the event.
_ALWAYS_LOGGED = frozenset(
    {FailureKind.LEASE_LOST, FailureKind.LEASED_ELSEWHERE, FailureKind.OUT_OF_TIME}
)
# Failures that are no fault of the event: handed back unprocessed, they cost no delivery.
_UNCHARGED = frozenset(
    {FailureKind.CIRCUIT_OPEN, FailureKind.OUT_OF_TIME, FailureKind.HELD_FOR_ORDER}
)
# Failures logged once per batch, not per event (an open circuit holds back thousands).
_SUMMARISED = frozenset({FailureKind.CIRCUIT_OPEN, FailureKind.HELD_FOR_ORDER})


@final
class State:
    """Where one item of a batch stands: one of the five constants, compared by identity.

    Not an `enum.Enum` on purpose: on Python 3.11 every `State.DONE` read of an enum goes
    through the enum metaclass's `__getattr__` hook, about five times a plain class
    attribute's cost, and the runner reads them per event (`item.state is State.PENDING`).
    """

    __slots__ = ("name", "value")

    PENDING: ClassVar[State]
    DONE: ClassVar[State]
    DEAD: ClassVar[State]
    FAILED: ClassVar[State]
    DUPLICATE: ClassVar[State]

    def __init__(self, name: str, value: int) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"<State.{self.name}: {self.value}>"

    def __reduce__(self) -> str:
        return f"State.{self.name}"  # pickled by name: the same constant comes back


State.PENDING = State("PENDING", 0)
State.DONE = State("DONE", 1)
State.DEAD = State("DEAD", 2)
State.FAILED = State("FAILED", 3)
State.DUPLICATE = State("DUPLICATE", 4)


@dataclass(slots=True, eq=False)
class Item:
    """One record of a batch and everything the runner learns about it."""

    record: Record
    key: str
    claim: Claim | None = None
    state: State = State.PENDING
    attempts: int = 0
    ready_at: float = 0.0
    outputs: Sequence[Output] = ()
    error: BaseException | None = None
    error_tb: str = ""
    reason: str = ""
    kind: FailureKind = FailureKind.NOT_PROCESSED
    first_attempt_at: float | None = None
    first: Item | None = None  # for an in-batch duplicate: the occurrence that counts
    probe_failed: bool = False  # its attempt was the circuit's probe, and the outage went on

    def fail(self, kind: FailureKind, reason: str) -> None:
        """Hand the item back for redelivery, with why."""
        self.state = State.FAILED
        self.kind = kind
        self.reason = reason
        if kind in _SUMMARISED:
            return
        if self.error is None or kind in _ALWAYS_LOGGED:
            log.warning("%s: %s", describe(self), reason, extra=log_extra(self))

    @property
    def unprocessed(self) -> bool:
        """Handed back through no fault of its own (it must not be charged a delivery)."""
        if self.state is not State.FAILED:
            return False
        if self.kind is FailureKind.HELD_FOR_ORDER:
            return True  # processed or not, it waits behind an earlier event of its lane
        return self.probe_failed or (self.attempts == 0 and self.kind in _UNCHARGED)

    def dead(self, kind: FailureKind, reason: str) -> None:
        """Settle the item as dead-lettered, with why."""
        self.state = State.DEAD
        self.kind = kind
        self.reason = reason
        log.warning("%s; dead-lettering", reason, extra=log_extra(self))


def items_of(
    records: Iterable[Record], key: Callable[[Event], str] | None
) -> tuple[list[Item], list[Item]]:
    """The distinct-key items of a batch, and every record as an item in delivery order."""
    if key is None:
        batch = records if isinstance(records, list) else list(records)
        keys = event_keys(batch)
        order = list(map(Item, batch, keys))
        if len(set(keys)) == len(keys):
            return order.copy(), order  # the common case: no key twice, nothing to link
    else:
        order = [_keyed(record, key) for record in records]
    by_key: dict[str, Item] = {}
    first = by_key.setdefault
    for item in order:
        earlier = first(item.key, item)
        if earlier is not item:
            item.first = earlier
    return list(by_key.values()), order


def _keyed(record: Record, key: Callable[[Event], str]) -> Item:
    if isinstance(record, InvalidRecord):
        return Item(record, record.key)
    try:
        return Item(record, key(record))
    except Exception as exc:
        # The key function cannot read this event: it can never be processed.
        invalid = InvalidRecord(
            id=record.id,
            source=record.source,
            reason=f"the pipeline's key function failed: {safe_text(exc)}",
            raw=record.data,
            partition_key=record.partition_key,
            sequence=record.sequence,
        )
        return Item(invalid, invalid.key)


def in_state(items: list[Item], *states: State) -> list[Item]:
    """The items in any of `states`, in batch order."""
    return [i for i in items if i.state in states]


def split(items: list[Item]) -> tuple[list[Item], list[Item]]:
    """The items that are done and those that are dead, in batch order, in one pass."""
    done: list[Item] = []
    dead: list[Item] = []
    is_done, is_dead = State.DONE, State.DEAD
    for item in items:
        state = item.state
        if state is is_done:
            done.append(item)
        elif state is is_dead:
            dead.append(item)
    return done, dead


def result_of(order: list[Item], metrics: Metrics) -> BatchResult:
    """The batch's result, by event id in delivery order, counted into `metrics`."""
    result = BatchResult()
    processed, duplicates = result.processed, result.duplicates
    failed, dead_lettered, failures = result.failed, result.dead_lettered, result.failures
    done, duplicate, dead = State.DONE, State.DUPLICATE, State.DEAD
    for item in order:
        state = item.state
        if state is done:  # the common case first (an in-batch repeat is never done)
            processed.append(item.record.id)
            continue
        if item.first is not None:
            # A second delivery inside one batch shares the fate of the first: a
            # duplicate when that one is settled, failed when it must come again.
            state = State.FAILED if item.first.state is State.FAILED else duplicate
            item.reason = item.first.reason
            item.kind = item.first.kind
        event_id = item.record.id
        if state is duplicate:
            duplicates.append(event_id)
        elif state is dead:
            dead_lettered.append(event_id)
            failures[event_id] = Failure(item.kind, item.reason)
        else:
            failed.append(event_id)
            failures[event_id] = Failure(item.kind, item.reason or "not processed")
    metrics.count("processed", len(processed))
    metrics.count("duplicates", len(duplicates))
    metrics.count("failed", len(failed))
    metrics.count("dead_lettered", len(dead_lettered))
    return result


def describe(item: Item) -> str:
    """The item's event as people find it: id, source, sequence, where it was read."""
    record = item.record
    where = f" at {record.locator}" if isinstance(record, InvalidRecord) and record.locator else ""
    seq = f" sequence {record.sequence}" if record.sequence else ""
    return f"event {record.id} from {record.source}{seq}{where}"


def log_extra(item: Item) -> dict[str, Any]:
    """The structured fields of a log record about the item; never the payload."""
    return {
        "event_key": item.key,
        "event_id": item.record.id,
        "event_source": item.record.source,
        "attempt": item.attempts,
    }
