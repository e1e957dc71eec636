"""Outputs as DynamoDB items, committed together with the store's markers when they can be."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from onceflow.adapters.aws.dynamodb_mode import DynamoDBMode
from onceflow.adapters.aws.dynamodb_requests import (
    TRANSACTION_BYTES,
    TRANSACTION_LIMIT,
    TransactAction,
    WriteConditionFailed,
    batch_write,
    default_retry,
    stored_key,
    transact_action,
)
from onceflow.adapters.aws.dynamodb_store import LANE_RECORD_BYTES, DynamoDBIdempotencyStore
from onceflow.adapters.aws.dynamodb_types import from_wire, to_wire
from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.errors import ConfigurationError, OutputRejected
from onceflow.interfaces import IdempotencyStore
from onceflow.records import Completion, LaneCommit, Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import dumps

__all__ = ["Action", "DynamoDBSink", "ItemOf"]

Action = Callable[[Output], dict[str, Any]]
"""Maps an output to one write, in TransactWriteItems form with plain Python values:
`{"Put": {"Item": {...}}}` or `{"Update": {"Key": {...}, "UpdateExpression": ...,
"ExpressionAttributeValues": {...}}}` (TableName defaults to the sink's table).
Only an atomic mode (`FENCED`, `OPTIMISTIC`) applies it once per event."""

ItemOf = Callable[[Output], dict[str, Any]]
"""Maps an output to the item that stores it (plain Python values), in any mode."""

MARKER_BYTES = 10_000
"""Room left in a transaction for a completion marker (its detail is at most 500 chars)."""
MAX_ITEM_BYTES = 390_000
"""DynamoDB's item limit is 400 KB; keep room for the attribute names."""


class DynamoDBSink:
    """Outputs upserted by `output_id` into a table; atomic with `DynamoDBIdempotencyStore`.

    In an atomic mode (`FENCED`, the default, or `OPTIMISTIC`) and with a store of the
    same mode on the same endpoint and region, the runner commits outputs and completion
    markers in one TransactWriteItems: what non-idempotent writes (counters: `action=`
    returning an `ADD` update) need. Events on a watermark lane (a Kinesis shard) commit
    with their lane's record instead, 99 outputs per transaction, no marker each. In
    `UPSERT` mode, outputs go in BatchWriteItem calls of 25 (keyed overwrites).
    Build a matching pair with `dynamodb_pipeline_parts`.
    """

    client = ClientOnFirstUse("dynamodb")

    def __init__(
        self,
        table: str,
        *,
        mode: DynamoDBMode = DynamoDBMode.FENCED,
        client: Any = None,
        action: Action | None = None,
        item: ItemOf | None = None,
        key_attribute: str = "pk",
        retry: RetryPolicy | None = None,
    ) -> None:
        if action is not None and not mode.atomic:
            raise ConfigurationError(
                f"DynamoDBSink({table!r}, action=...) applies its action once per event only "
                "in an atomic mode: use mode=DynamoDBMode.FENCED or OPTIMISTIC, or item= for "
                "a custom item in UPSERT mode"
            )
        if action is not None and item is not None:
            raise ConfigurationError(
                f"DynamoDBSink({table!r}) takes action= or item=, not both: an action "
                "builds its own item"
            )
        self.table = table
        self.mode = mode
        self.action = action
        self.item_of = item
        self.key_attribute = key_attribute
        self.retry = retry or default_retry()
        """Request-level retries of unprocessed items."""
        self._client = client

    def commits_with(self, store: IdempotencyStore) -> bool:
        """True for a DynamoDB store of this mode on the same endpoint and region.

        Raises `ConfigurationError` for a DynamoDB store of another mode, which this sink
        cannot commit with and must not silently write around.
        """
        if not self.mode.atomic or not isinstance(store, DynamoDBIdempotencyStore):
            return False
        if store.mode is not self.mode:
            raise ConfigurationError(
                f"DynamoDBSink({self.table!r}) in {self.mode.name} mode cannot commit with a "
                f"{store.mode.name} DynamoDBIdempotencyStore: build both with "
                "dynamodb_pipeline_parts(..., mode=...)"
            )
        if self._client is None and store._client is None:
            # Both make their client on first use from one environment: one region and
            # endpoint. Not making them here keeps boto3 out of a handler's import.
            return True
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
                    "commit it with a DynamoDBIdempotencyStore of this sink's mode"
                )
            requests.append((body["TableName"], {"PutRequest": {"Item": body["Item"]}}))
        await run_blocking(batch_write, self.client, requests, self.retry)

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
        by_event = self._by_event(outputs)
        try:
            return await store.complete_with(completions, by_event)
        except WriteConditionFailed as failed:
            raise OutputRejected(self._refusals(outputs, by_event, failed)) from None

    def commits_lanes_with(self, store: IdempotencyStore) -> bool:
        """True where `commits_with` is: the store chains lane records into its transactions."""
        return self.commits_with(store)

    async def write_and_commit_lanes(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
        lanes: Sequence[LaneCommit],
    ) -> tuple[list[bool], list[bool]]:
        """`write_and_complete` for the keys of `completions`; the outputs of lane events go
        with their lane's record (`DynamoDBIdempotencyStore.complete_with_lanes`): at most
        99 writes and the record per transaction, no marker each."""
        if not isinstance(store, DynamoDBIdempotencyStore):
            raise ConfigurationError("DynamoDBSink commits atomically only with DynamoDB stores")
        by_event = self._by_event(outputs, reserve=LANE_RECORD_BYTES)
        try:
            return await store.complete_with_lanes(completions, by_event, lanes)
        except WriteConditionFailed as failed:
            raise OutputRejected(self._refusals(outputs, by_event, failed)) from None

    def _by_event(
        self, outputs: Sequence[Output], *, reserve: int = MARKER_BYTES
    ) -> dict[str, list[TransactAction]]:
        """The outputs' actions by event key; an event whose writes cannot share one
        transaction with its marker or lane record (`reserve` bytes) is rejected."""
        by_event: dict[str, list[TransactAction]] = {}
        keys = {self.key_attribute}
        for output, action in zip(outputs, self._actions(outputs), strict=True):
            by_event.setdefault(output.event_key, []).append(transact_action(action, keys))
        too_many = {
            o.output_id: f"its event has {len(by_event[o.event_key])} outputs; one transaction "
            f"holds {TRANSACTION_LIMIT - 1} besides the marker"
            for o in outputs
            if len(by_event[o.event_key]) >= TRANSACTION_LIMIT
        }
        # The marker takes a few hundred bytes; the rest of a transaction is the writes'.
        sizes = {key: sum(a.size for a in writes) for key, writes in by_event.items()}
        too_big = {
            o.output_id: f"its event's writes are {sizes[o.event_key]} bytes; one "
            f"transaction holds {TRANSACTION_BYTES - reserve}"
            for o in outputs
            if sizes[o.event_key] > TRANSACTION_BYTES - reserve
        }
        if too_many or too_big:
            raise OutputRejected({**too_big, **too_many})
        return by_event

    def _refusals(
        self,
        outputs: Sequence[Output],
        by_event: dict[str, list[TransactAction]],
        failed: WriteConditionFailed,
    ) -> dict[str, str]:
        """The output whose write's condition failed, by id, with the condition (no values)."""
        mine: dict[str, list[Output]] = {}
        for output in outputs:
            mine.setdefault(output.event_key, []).append(output)
        refusals: dict[str, str] = {}
        for key, position in failed.refused.items():
            [(kind, body)] = by_event[key][position].request.items()
            condition = body.get("ConditionExpression", "")
            refusals[mine[key][position].output_id] = (
                f"the condition of its {kind} on {body.get('TableName')} failed: {condition}"
            )
        return refusals

    def item(self, output: Output) -> dict[str, Any]:
        """The item for an output: `item=`'s, else its id, value and provenance.

        It is keyed by `stored_key(output_id)`, as the store keys its markers: a long id
        is stored by hash, and in full in `output_id`.
        """
        if self.item_of is not None:
            return self.item_of(output)
        oid = output.output_id
        key = stored_key(oid)
        item: dict[str, Any] = {
            self.key_attribute: key,
            "value": output.value,
            "event_key": output.event_key,
            "event_id": output.event_id,
            "index": output.index,
        }
        if output.partition_key is not None:
            item["partition_key"] = output.partition_key
        if key != oid:
            item["output_id"] = oid
        return item

    def _actions(self, outputs: Sequence[Output]) -> list[dict[str, Any]]:
        """Every output as a typed transaction action; oversized or unstorable ones rejected."""
        actions: list[dict[str, Any]] = []
        rejected: dict[str, str] = {}
        for output in outputs:
            try:
                if self.action is None:
                    plain = {"Put": {"Item": self.item(output)}}
                    size = len(dumps(output.value).encode())
                else:
                    # An action may build an item much larger than the output (a padded or
                    # denormalised copy): measure what it writes, not the value.
                    plain = self.action(output)
                    [body] = plain.values()
                    written = [body.get(f) for f in ("Item", "ExpressionAttributeValues")]
                    size = len(dumps([w for w in written if w]).encode())
                if size > MAX_ITEM_BYTES:
                    raise ValueError(f"{size} bytes is over DynamoDB's 400 KB item limit")
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
                    found[str(item.get("output_id", item[self.key_attribute]))] = item["value"]
        return found
