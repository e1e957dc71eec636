"""The DynamoDB store and sink when DynamoDB pushes back: unprocessed items, throttles."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws import DynamoDBIdempotencyStore, DynamoDBSink, lambda_handler
from onceflow.adapters.memory import MemorySink
from onceflow.clock import ManualClock
from onceflow.pipeline import Pipeline
from onceflow.records import ClaimStatus
from onceflow.retry import Backoff
from onceflow.testing.contracts import output, succeeded, unique
from tests.aws import payloads as aws

pytestmark = pytest.mark.emulator

Tables = Callable[[str], str]
FAST = Backoff(base=0.001, cap=0.01)


class Meddling:
    """A client proxy that rewrites the answer of the first `times` calls of one operation."""

    def __init__(
        self, client: Any, method: str, meddle: Callable[[Any, dict[str, Any]], Any], times: int = 1
    ) -> None:
        self._client, self._method, self._meddle, self._times = client, method, meddle, times
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("get_"):
            return attr

        def call(**kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == self._method and self.calls[name] <= self._times:
                return self._meddle(attr, kwargs)
            return attr(**kwargs)

        return call


def throttled(operation: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {
                "Code": "ProvisionedThroughputExceededException",
                "Message": "Rate of requests exceeds the allowed throughput",
            }
        },
        operation,
    )


@pytest.mark.anyio
async def test_unprocessed_keys_are_fetched_again(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    table = dynamodb_tables("state")
    seed = DynamoDBIdempotencyStore(table, client=dynamodb_client)
    keys = [unique() for _ in range(5)]
    await seed.complete([succeeded(c) for c in await seed.claim(keys, 30)])

    def half_unprocessed(get: Any, kwargs: dict[str, Any]) -> Any:
        wanted = kwargs["RequestItems"][table]["Keys"]
        first = {
            **kwargs,
            "RequestItems": {table: {**kwargs["RequestItems"][table], "Keys": wanted[:2]}},
        }
        response = get(**first)
        response["UnprocessedKeys"] = {table: {"Keys": wanted[2:], "ConsistentRead": True}}
        return response

    proxy = Meddling(dynamodb_client, "batch_get_item", half_unprocessed)
    store = DynamoDBIdempotencyStore(table, client=proxy, backoff=FAST)
    claims = await store.claim(keys, 30)
    assert [c.status for c in claims] == [ClaimStatus.COMPLETED] * 5
    assert proxy.calls["batch_get_item"] == 2


@pytest.mark.anyio
async def test_unprocessed_items_are_written_again(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    table = dynamodb_tables("outputs")

    def last_unprocessed(write: Any, kwargs: dict[str, Any]) -> Any:
        *done, left = kwargs["RequestItems"][table]
        response = write(RequestItems={table: done})
        response["UnprocessedItems"] = {table: [left]}
        return response

    proxy = Meddling(dynamodb_client, "batch_write_item", last_unprocessed)
    sink = DynamoDBSink(table, client=proxy, atomic=False, backoff=FAST)
    key = unique("src#e")
    outs = [output(f"{key}{i}", 0, {"i": i}) for i in range(30)]
    await sink.write(outs)
    assert proxy.calls["batch_write_item"] == 3  # 25 (one left over), that one, then 5
    assert {o.output_id for o in outs} <= set(sink.read_all())


@pytest.mark.anyio
async def test_transaction_conflicts_are_retried_per_item(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    table = dynamodb_tables("state")

    def conflict_on_first(transact: Any, kwargs: dict[str, Any]) -> Any:
        from botocore.exceptions import ClientError

        count = len(kwargs["TransactItems"])
        reasons: Any = [{"Code": "TransactionConflict", "Message": "conflict"}]
        reasons += [{"Code": "None"}] * (count - 1)
        raise ClientError(
            {
                "Error": {"Code": "TransactionCanceledException", "Message": "x"},
                "CancellationReasons": reasons,
            },
            "TransactWriteItems",
        )

    proxy = Meddling(dynamodb_client, "transact_write_items", conflict_on_first)
    store = DynamoDBIdempotencyStore(table, client=proxy, backoff=FAST)
    claims = await store.claim([unique() for _ in range(3)], 30)
    assert [c.status for c in claims] == [ClaimStatus.NEW] * 3
    assert proxy.calls["transact_write_items"] == 2


def test_throttled_store_fails_the_batch_for_redelivery(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    def always_throttled(get: Any, kwargs: dict[str, Any]) -> Any:
        raise throttled("BatchGetItem")

    proxy = Meddling(dynamodb_client, "batch_get_item", always_throttled, times=99)
    clock = ManualClock()
    store = DynamoDBIdempotencyStore(dynamodb_tables("state"), client=proxy, clock=clock)
    sink = DynamoDBSink(dynamodb_tables("outputs"), client=proxy)
    handler = lambda_handler(Pipeline(lambda e: e.json(), sink, store, MemorySink(), clock=clock))
    records = [aws.kinesis_record(i, json.dumps({"n": i}).encode()) for i in range(3)]
    answer = handler(aws.kinesis_event(*records), aws.FakeContext())
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [
        r["kinesis"]["sequenceNumber"] for r in records
    ]
    assert proxy.calls["batch_get_item"] == 3  # the pipeline's own retries, then it gives up


@pytest.mark.anyio
async def test_event_with_too_many_outputs_for_one_transaction_is_rejected(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    from onceflow.errors import OutputRejected

    store = DynamoDBIdempotencyStore(dynamodb_tables("state"), client=dynamodb_client)
    sink = DynamoDBSink(dynamodb_tables("outputs"), client=dynamodb_client)
    key = f"src#{uuid.uuid4().hex[:8]}"
    [claim] = await store.claim([key], 30)
    with pytest.raises(OutputRejected, match="one transaction holds 99"):
        await sink.write_and_complete(
            store, [output(key, i, i) for i in range(100)], [succeeded(claim)]
        )
