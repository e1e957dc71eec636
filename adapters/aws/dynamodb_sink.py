"""Outputs as DynamoDB items, committed together with the store's markers when they can be."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from onceflow.adapters.aws.dynamodb_requests import TRANSACTION_LIMIT, batch_write
from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore
from onceflow.adapters.aws.dynamodb_types import from_wire, to_wire
from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.interfaces import IdempotencyStore
from onceflow.records import Completion, Output
from onceflow.retry import Backoff
from onceflow.serialization import dumps

__all__ = ["Action", "DynamoDBSink"]

Action = Callable[[Output], dict[str, Any]]
"""Maps an output to one write, in TransactWriteItems form with plain Python values:
`{"Put": {"Item": {...}}}` or `{"Update": {"Key": {...}, "UpdateExpression": ...,
"ExpressionAttributeValues": {...}}}` (TableName defaults to the sink's table)."""

MAX_ITEM_BYTES = 390_000
"""DynamoDB's item limit is 400 KB; keep room for the attribute names."""


class DynamoDBSink:
    """Outputs upserted by `output_id` into a table; atomic with `DynamoDBIdempotencyStore`.

    With `atomic=True` (the default) and a store in the same account and region, the
    runner commits outputs and completion markers in one TransactWriteItems: that is
    what non-idempotent writes (counters: `action=` returning an `ADD` update) need.
    With `atomic=False`, outputs go in BatchWriteItem calls of 25 (keyed overwrites).
    """

    client = ClientOnFirstUse("dynamodb")

    def __init__(
        self,
        table: str,
        *,
        client: Any = None,
        atomic: bool = True,
        action: Action | None = None,
        key_attribute: str = "pk",
        backoff: Backoff | None = None,
    ) -> None:
        self.table = table
        self.atomic = atomic
        self.action = action
        self.key_attribute = key_attribute
        self.backoff = backoff or Backoff(base=0.02, cap=1.0)
        self._client = client

    def commits_with(self, store: IdempotencyStore) -> bool:
        """True for a DynamoDB store on the same endpoint and region, when this sink is atomic."""
        if not self.atomic or not isinstance(store, DynamoDBIdempotencyStore):
            return False
        mine, theirs = self.client.meta, store.client.meta
        return bool(
            mine.region_name == theirs.region_name and mine.endpoint_url == theirs.endpoint_url
        )

    async def write(self, outputs: Sequence[Output]) -> None:
        """Upsert every output by `output_id` in BatchWriteItem calls."""
        if not outputs:
            return
        actions = self._actions(outputs)
        requests = []
        for output, action in zip(outputs, actions, strict=True):
            [(kind, body)] = action.items()
            if kind != "Put":
                raise ConfigurationError(
                    f"output {output.output_id}: a {kind} is not an idempotent overwrite; "
                    "use DynamoDBSink(atomic=True) with a DynamoDBIdempotencyStore"
                )
            requests.append((body["TableName"], {"PutRequest": {"Item": body["Item"]}}))
        await run_blocking(batch_write, self.client, requests, self.backoff)

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Each event's outputs and marker in one transaction; refused fences write nothing."""
        if not isinstance(store, DynamoDBIdempotencyStore):
            raise ConfigurationError("DynamoDBSink commits atomically only with DynamoDB stores")
        if not completions:
            return []
        actions = self._actions(outputs)
        by_event: dict[str, list[dict[str, Any]]] = {}
        for output, action in zip(outputs, actions, strict=True):
            by_event.setdefault(output.event_key, []).append(action)
        too_many = {
            o.output_id: f"its event has {len(by_event[o.event_key])} outputs; one transaction "
            f"holds {TRANSACTION_LIMIT - 1} besides the marker"
            for o in outputs
            if len(by_event[o.event_key]) >= TRANSACTION_LIMIT
        }
        if too_many:
            raise OutputRejected(too_many)
        now = store.clock.now()
        groups = [[store.marker_action(c, now), *by_event.get(c.key, [])] for c in completions]
        accepted: list[bool] = await run_blocking(
            store.commit_groups, groups, frozenset({self.key_attribute})
        )
        return accepted

    def item(self, output: Output) -> dict[str, Any]:
        """The default item for an output: its id, value and provenance."""
        item: dict[str, Any] = {
            self.key_attribute: output.output_id,
            "value": output.value,
            "event_key": output.event_key,
            "event_id": output.event_id,
            "index": output.index,
        }
        if output.partition_key is not None:
            item["partition_key"] = output.partition_key
        return item

    def _actions(self, outputs: Sequence[Output]) -> list[dict[str, Any]]:
        """Every output as a typed transaction action; oversized or unstorable ones rejected."""
        actions: list[dict[str, Any]] = []
        rejected: dict[str, str] = {}
        for output in outputs:
            try:
                size = len(dumps(output.value).encode())
                if size > MAX_ITEM_BYTES:
                    raise ValueError(f"{size} bytes is over DynamoDB's 400 KB item limit")
                plain = self.action(output) if self.action else {"Put": {"Item": self.item(output)}}
                actions.append(self._typed(plain))
            except (ValueError, TypeError, ArithmeticError) as exc:
                rejected[output.output_id] = f"{type(exc).__name__}: {exc}"
        if rejected:
            raise OutputRejected(rejected)
        return actions

    def _typed(self, plain: dict[str, Any]) -> dict[str, Any]:
        [(kind, body)] = plain.items()
        typed = dict(body)
        typed.setdefault("TableName", self.table)
        for field in ("Item", "Key", "ExpressionAttributeValues"):
            if field in typed:
                typed[field] = {name: to_wire(v) for name, v in typed[field].items()}
        return {kind: typed}

    # -- reading, for tests and tools ----------------------------------------------------

    def read_all(self) -> dict[str, Any]:
        """Every stored output's value by `output_id` (a full scan: for tests and small tables)."""
        found: dict[str, Any] = {}
        paginator = self.client.get_paginator("scan")
        for page in paginator.paginate(TableName=self.table, ConsistentRead=True):
            for raw in page.get("Items", []):
                item = from_wire(raw)
                if "value" in item:
                    found[str(item[self.key_attribute])] = item["value"]
        return found
