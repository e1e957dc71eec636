"""Per-window counts as items of the DynamoDB state table, keyed `counts#<pipeline>#<window>`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onceflow.adapters.aws.sdk import ClientOnFirstUse
from onceflow.reconcile import COUNTS, COUNTS_PREFIX

__all__ = ["DynamoDBWindowCounts"]


class DynamoDBWindowCounts:
    """Adds a batch's counts to one item per window with one `UpdateItem ... ADD`.

    The items share the idempotency store's table (no second table to deploy or grant):
    their key starts with `counts#`, which no idempotency key does (keys are
    `source#id`-shaped and a source name cannot be empty), and they carry no TTL attribute,
    so they outlive the markers. `read` scans the table for the prefix: a reconciliation
    command's cost, never the pipeline's.
    """

    client = ClientOnFirstUse("dynamodb")

    def __init__(self, table: str, *, client: Any = None, key_attribute: str = "pk") -> None:
        self.table = table
        self.key_attribute = key_attribute
        self._client = client  # None: made on first use (ClientOnFirstUse)

    def add(self, pipeline: str, window: int, counts: Mapping[str, int]) -> None:
        """Add `counts` to one window's item (created by the first add)."""
        names = [n for n in COUNTS if counts.get(n)]
        if not names:
            return
        self.client.update_item(
            TableName=self.table,
            Key={self.key_attribute: {"S": f"{COUNTS_PREFIX}{pipeline}#{window}"}},
            UpdateExpression="SET #p = :p, #w = :w ADD " + ", ".join(f"#{n} :{n}" for n in names),
            ExpressionAttributeNames={
                "#p": "pipeline",
                "#w": "window",
                **{f"#{n}": n for n in names},
            },
            ExpressionAttributeValues={
                ":p": {"S": pipeline},
                ":w": {"N": str(window)},
                **{f":{n}": {"N": str(int(counts[n]))} for n in names},
            },
        )

    def read(self, pipeline: str | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """Every window's counts (of one pipeline, or all); empty when none were kept."""
        prefix = COUNTS_PREFIX if pipeline is None else f"{COUNTS_PREFIX}{pipeline}#"
        found: dict[tuple[str, int], dict[str, int]] = {}
        pages = self.client.get_paginator("scan").paginate(
            TableName=self.table,
            FilterExpression="begins_with(#k, :prefix)",
            ExpressionAttributeNames={"#k": self.key_attribute},
            ExpressionAttributeValues={":prefix": {"S": prefix}},
        )
        for page in pages:
            for item in page.get("Items", []):
                key = (item["pipeline"]["S"], int(item["window"]["N"]))
                found[key] = {n: int(item[n]["N"]) if n in item else 0 for n in COUNTS}
        return dict(sorted(found.items()))
