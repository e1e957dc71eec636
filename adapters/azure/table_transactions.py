"""Entity transactions on one Azure Table: packing, submitting, and isolating conflicts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.data.tables import TableClient, TableTransactionError

from onceflow.adapters.azure.throttling import default_retry, send
from onceflow.retry import RetryPolicy

__all__ = ["MAX_OPERATIONS", "Group", "submit"]

MAX_OPERATIONS = 100
"""Operations per entity transaction (the service's limit)."""
MAX_BYTES = 3_500_000
"""Payload per transaction, below the service's 4 MiB limit with room for the envelope."""

Operation = tuple[Any, ...]


@dataclass(eq=False)
class Group:
    """Operations that must commit together (one key's marker and its outputs), one partition."""

    partition: str
    operations: list[Operation]
    tag: Any = None
    """The caller's handle on the group (a key, a completion)."""
    etags: list[str | None] = field(default_factory=list)
    """After a successful submit: the ETag each operation left, in order."""
    conflict: int | None = None
    """After a refused submit: the HTTP status (409 or 412) of the operation that failed."""

    @property
    def size(self) -> int:
        """Approximate payload bytes."""
        return sum(len(json.dumps(op[1], default=str)) + 200 for op in self.operations)


def _chunks(groups: Sequence[Group]) -> Iterator[list[Group]]:
    by_partition: dict[str, list[Group]] = {}
    for group in groups:
        by_partition.setdefault(group.partition, []).append(group)
    for members in by_partition.values():
        chunk: list[Group] = []
        ops = size = 0
        for group in members:
            n, b = len(group.operations), group.size
            if chunk and (ops + n > MAX_OPERATIONS or size + b > MAX_BYTES):
                yield chunk
                chunk, ops, size = [], 0, 0
            chunk.append(group)
            ops += n
            size += b
        if chunk:
            yield chunk


def submit(table: TableClient, groups: Sequence[Group], retry: RetryPolicy | None = None) -> None:
    """Commit every group, packed into as few transactions as the limits allow.

    A group whose operation is refused with 409 (exists) or 412 (ETag changed) gets
    `conflict` set and is left out; the rest of its transaction is submitted again
    without it, so one contended key never blocks the others. Any other error raises.
    A group larger than one transaction is submitted in pieces, not atomically. A
    throttled transaction (applied not at all) is sent again under `retry`
    (`onceflow.adapters.azure.throttling`).
    """
    retry = retry or default_retry()
    for chunk in _chunks(groups):
        live = list(chunk)
        while live:
            operations = [op for group in live for op in group.operations]
            try:
                results = _submit_in_pieces(table, operations, retry)
            except TableTransactionError as exc:
                index = getattr(exc, "index", None)
                if exc.status_code not in (409, 412) or index is None:
                    raise
                culprit = _owner(live, int(index))
                culprit.conflict = exc.status_code
                live.remove(culprit)
                continue
            position = 0
            for group in live:
                count = len(group.operations)
                group.etags = [r.get("etag") for r in results[position : position + count]]
                position += count
            break


def _submit_in_pieces(
    table: TableClient, operations: list[Operation], retry: RetryPolicy
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(operations), MAX_OPERATIONS):
        piece = operations[start : start + MAX_OPERATIONS]
        try:
            answer = send(retry, "an entity transaction", table.submit_transaction, piece)
            results.extend(dict(r) for r in answer)
        except TableTransactionError as exc:
            if start and getattr(exc, "index", None) is not None:
                exc.index = int(exc.index) + start
            raise
    return results


def _owner(groups: list[Group], index: int) -> Group:
    position = 0
    for group in groups:
        position += len(group.operations)
        if index < position:
            return group
    raise IndexError(f"operation {index} is outside the transaction")
