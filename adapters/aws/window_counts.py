"""Per-window counts as items of the DynamoDB state table: `counts#<pipeline>#<window>#<batch>`."""

from __future__ import annotations

import time
from typing import Any

from onceflow.adapters.aws.sdk import ClientOnFirstUse
from onceflow.reconcile import COUNTS, COUNTS_PREFIX, CountRow, Counts, sum_rows

__all__ = ["DynamoDBWindowCounts"]


class DynamoDBWindowCounts:
    """Writes each batch's counts for a window as one item with one `PutItem`.

    A `PutItem` of the same key replaces the item, so botocore's own retries of a write whose
    reply was lost cannot double a count (an `UpdateItem ... ADD` could). The items share the
    idempotency store's table (no second table to deploy or grant): their key starts with
    `counts#`, which no idempotency key does (keys are `source#id`-shaped and a source name
    cannot be empty), and they carry the table's TTL attribute (`expires_at`, the one
    `create_table` enables), so DynamoDB deletes them after the retention; `read` also
    skips expired items itself, since TTL deletion lags. `read` scans the table for the
    prefix: a reconciliation command's cost, never the pipeline's.
    """

    client = ClientOnFirstUse("dynamodb")

    def __init__(
        self,
        table: str,
        *,
        client: Any = None,
        key_attribute: str = "pk",
        ttl_attribute: str = "expires_at",
    ) -> None:
        self.table = table
        self.key_attribute = key_attribute
        self.ttl_attribute = ttl_attribute
        self._client = client  # None: made on first use (ClientOnFirstUse)

    def put(self, row: CountRow) -> None:
        """Write one batch's item for one window, replacing one of the same key."""
        item: dict[str, Any] = {
            self.key_attribute: {"S": row.key},
            "pipeline": {"S": row.pipeline},
            "window": {"N": str(row.window)},
            "expires": {"N": repr(float(row.expires))},
            self.ttl_attribute: {"N": str(int(row.expires))},
        }
        item.update({n: {"N": str(int(row.counts[n]))} for n in COUNTS if row.counts.get(n)})
        self.client.put_item(TableName=self.table, Item=item)

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
                    continue
                counts = {n: int(item[n]["N"]) for n in COUNTS if n in item}
                rows.append((item["pipeline"]["S"], int(item["window"]["N"]), counts))
        return sum_rows(rows)
