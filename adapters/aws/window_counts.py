"""Per-window counts as items of the DynamoDB state table: `counts#<pipeline>#<window>#<writer>`."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from onceflow.adapters.aws.sdk import ClientOnFirstUse
from onceflow.reconcile import COUNTS, COUNTS_PREFIX, CountRow, Counts, sum_rows

__all__ = ["DynamoDBWindowCounts"]


class DynamoDBWindowCounts:
    """Adds each batch's counts to one item per window and writer with one conditional
    `UpdateItem ... ADD`, applied once per attempt.

    The item remembers the last attempt it added (`last_batch`); the update is conditional
    on that being another attempt, so botocore's own retry of an update whose reply was
    lost fails the condition instead of adding twice. One writer (this object: a Lambda
    container, a worker) puts one row at a time (a lock), so a retry always follows its
    own first try. One item per writer, not per batch, keeps the item count at windows x
    workers (a 1M events/s pipeline in batches of 100 would write 36M per-batch items an
    hour) and spreads a window's writes over the workers' keys, not one hot item.

    The items share the idempotency store's table (no second table to deploy or grant):
    their key starts with `counts#`, which no idempotency key does (keys are
    `source#id`-shaped and a source name cannot be empty), and they carry the table's TTL
    attribute (`expires_at`, the one `create_table` enables), set to the retention after
    their last add; `read` also skips expired items itself, since TTL deletion lags. `read`
    scans the table for the prefix: a reconciliation command's cost, never the pipeline's.
    """

    remote = True  # count_windows writes from a worker thread
    client = ClientOnFirstUse("dynamodb")

    def __init__(
        self,
        table: str,
        *,
        client: Any = None,
        key_attribute: str = "pk",
        ttl_attribute: str = "expires_at",
        writer: str | None = None,
    ) -> None:
        self.table = table
        self.key_attribute = key_attribute
        self.ttl_attribute = ttl_attribute
        self.writer = writer or uuid.uuid4().hex[:16]
        self._client = client  # None: made on first use (ClientOnFirstUse)
        self._lock = threading.Lock()

    def key(self, row: CountRow) -> str:
        """The item key this writer adds `row` to."""
        return f"{COUNTS_PREFIX}{row.pipeline}#{row.window}#{self.writer}"

    def put(self, row: CountRow) -> None:
        """Add one attempt's counts to this writer's item of the window, once."""
        names = [n for n in COUNTS if row.counts.get(n)]
        sets = {
            "pipeline": {"S": row.pipeline},
            "window": {"N": str(row.window)},
            "last_batch": {"S": row.batch},
            "expires": {"N": repr(float(row.expires))},
            self.ttl_attribute: {"N": str(int(row.expires))},
        }
        labels = {name: f"#s{i}" for i, name in enumerate(sets)}
        expression = "SET " + ", ".join(f"{labels[n]} = :s{i}" for i, n in enumerate(sets))
        if names:
            expression += " ADD " + ", ".join(f"#{n} :{n}" for n in names)
        request = {
            "TableName": self.table,
            "Key": {self.key_attribute: {"S": self.key(row)}},
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_not_exists(#s2) OR #s2 <> :s2",
            "ExpressionAttributeNames": {
                **{label: name for name, label in labels.items()},
                **{f"#{n}": n for n in names},
            },
            "ExpressionAttributeValues": {
                **{f":s{i}": value for i, value in enumerate(sets.values())},
                **{f":{n}": {"N": str(int(row.counts[n]))} for n in names},
            },
        }
        with self._lock:
            try:
                self.client.update_item(**request)
            except self.client.exceptions.ConditionalCheckFailedException:
                return  # this attempt was added already: a retry after a lost reply

    def read(self, pipeline: str | None = None, *, now: float | None = None) -> Counts:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        moment = time.time() if now is None else now
        prefix = COUNTS_PREFIX if pipeline is None else f"{COUNTS_PREFIX}{pipeline}#"
        pages = self.client.get_paginator("scan").paginate(
            TableName=self.table,
            FilterExpression="begins_with(#k, :prefix)",
            ExpressionAttributeNames={"#k": self.key_attribute},
            ExpressionAttributeValues={":prefix": {"S": prefix}},
        )
        rows = []
        for page in pages:
            for item in page.get("Items", []):
                if pipeline is not None and item["pipeline"]["S"] != pipeline:
                    continue  # `counts#a#...` also begins `counts#a` for a pipeline `a#b`
                if "expires" in item and float(item["expires"]["N"]) <= moment:
                    continue  # items of states from before expiry carry none: kept
                counts = {n: int(item[n]["N"]) for n in COUNTS if n in item}
                rows.append((item["pipeline"]["S"], int(item["window"]["N"]), counts))
        return sum_rows(rows)
