"""Runs `moto.server` with a cheaper rollback for DynamoDB transactions, and SQS FIFO
sequence numbers that increase as the service's do.

moto 5 makes `TransactWriteItems` all-or-nothing by deep-copying a table once per action
before applying any of them, so a transaction of n actions on a table of m items costs
n * m item copies: a 10,000-event outage test spends its time copying tables, not testing
onceflow. This keeps DynamoDB's semantics (every action applies or none does; a
cancellation leaves every item as it was) by journalling only the items the transaction
touches and restoring those on a cancellation. Not restored: stream records a cancelled
transaction's writes appended on a table with a stream (moto's own copy restores them;
no test here streams a table it writes transactions to).

moto draws a FIFO message's `SequenceNumber` at random; SQS promises that it keeps
increasing within a message group, which the FIFO decoder's lanes rely on. Here every
message that gets one takes the next number of a counter (20 digits, as SQS's).
"""

from __future__ import annotations

import copy
import itertools
import sys
from typing import Any

from moto.dynamodb import models
from moto.dynamodb.exceptions import MockValidationException, TransactionCanceledException
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.server import main
from moto.sqs import models as sqs_models

_original = models.DynamoDBBackend.transact_write_items


class _NoTableCopies:
    """Stands in for the `copy` module inside moto's models: tables are not copied."""

    @staticmethod
    def deepcopy(value: Any) -> Any:
        if isinstance(value, models.Table):
            return value  # the journal below restores what the transaction touched
        return copy.deepcopy(value)


def _key_of(table: Any, op: dict[str, Any]) -> tuple[DynamoType, DynamoType | None]:
    key = op["Key"] if "Key" in op else op["Item"]
    range_value = None
    if table.range_key_attr is not None:
        range_value = DynamoType(key[table.range_key_attr])
    return DynamoType(key[table.hash_key_attr]), range_value


def _restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if range_value is None:
        if item is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item
    elif item is None:
        table.items.get(hash_value, {}).pop(range_value, None)
    else:
        table.items[hash_value][range_value] = item


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    """moto's transaction with a journal of the touched items instead of table copies."""
    journal: list[tuple[Any, Any, Any, Any]] = []
    for action in transact_items:
        op = next(iter(action.values()), None)
        table = self.tables.get(op.get("TableName")) if isinstance(op, dict) else None
        if table is None or not ("Key" in op or "Item" in op):
            continue
        try:
            hash_value, range_value = _key_of(table, op)
            before = table.get_item(hash_value, range_value)
        except Exception:  # a malformed key: moto itself answers it, touching nothing
            continue
        journal.append((table, hash_value, range_value, copy.deepcopy(before)))
    try:
        _original(self, transact_items)
    except (TransactionCanceledException, MockValidationException):
        for table, hash_value, range_value, item in reversed(journal):
            _restore(table, hash_value, range_value, item)
        raise


models.copy = _NoTableCopies  # type: ignore[assignment]
models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]

_send_message = sqs_models.SQSBackend.send_message
_sequence = itertools.count(10**19)


def send_message(self: Any, *args: Any, **kwargs: Any) -> Any:
    """moto's send, with the next sequence number where moto drew a random one."""
    message = _send_message(self, *args, **kwargs)
    if message.sequence_number is not None:
        message.sequence_number = str(next(_sequence))
    return message


sqs_models.SQSBackend.send_message = send_message  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
