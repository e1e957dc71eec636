"""A pull-mode source over events held in memory, that redelivers what failed."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Collection, Iterable, Sequence

from onceflow.event import Event
from onceflow.records import InvalidRecord

__all__ = ["MemorySource"]

Record = Event | InvalidRecord


class MemorySource:
    """Hands out queued records in batches; failed ones come back first, in their order."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._queue: deque[Record] = deque(records)
        self.acked: list[str] = []
        self.redelivered: list[str] = []

    def push(self, *records: Record) -> None:
        """Queue more records at the end."""
        self._queue.extend(records)

    def __len__(self) -> int:
        return len(self._queue)

    async def batches(self, max_size: int) -> AsyncIterator[Sequence[Record]]:
        """Batches of up to `max_size` until the queue is empty."""
        while self._queue:
            size = min(max_size, len(self._queue))
            yield [self._queue.popleft() for _ in range(size)]

    async def ack(self, batch: Sequence[Record], failed_ids: Collection[str]) -> None:
        """Settle the batch; failed records go back to the front with `delivery_count` + 1."""
        again: list[Record] = []
        for record in batch:
            if record.id in failed_ids:
                again.append(_redelivered(record))
                self.redelivered.append(record.id)
            else:
                self.acked.append(record.id)
        self._queue.extendleft(reversed(again))


def _redelivered(record: Record) -> Record:
    if isinstance(record, Event):
        return record.model_copy(update={"delivery_count": record.delivery_count + 1})
    return record
