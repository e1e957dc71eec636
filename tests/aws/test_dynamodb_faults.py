"""The DynamoDB store and sink when DynamoDB pushes back (unprocessed items, throttles), and
the mode combinations they refuse."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws import (
    DynamoDBIdempotencyStore,
    DynamoDBMode,
    DynamoDBSink,
    dynamodb_pipeline_parts,
    lambda_handler,
)
from onceflow.adapters.aws import testing as aws
from onceflow.adapters.aws.dynamodb_requests import DynamoDBUnavailable
from onceflow.adapters.memory import MemorySink
from onceflow.clock import ManualClock
from onceflow.errors import ConfigurationError
from onceflow.pipeline import Pipeline
from onceflow.records import ClaimStatus
from onceflow.retry import Backoff, RetryPolicy
from onceflow.testing.contracts import output, succeeded, unique

pytestmark = pytest.mark.emulator

Tables = Callable[[str], str]
FAST = RetryPolicy(attempts=8, backoff=Backoff(base=0.001, cap=0.01))


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
    store = DynamoDBIdempotencyStore(table, client=proxy, retry=FAST)
    claims = await store.claim(keys, 30)
    assert [c.status for c in claims] == [ClaimStatus.COMPLETED] * 5
    assert proxy.calls["batch_get_item"] == 2


@pytest.mark.anyio
async def test_unprocessed_keys_give_up_after_the_retry_policy(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    table = dynamodb_tables("state")

    def none_processed(get: Any, kwargs: dict[str, Any]) -> Any:
        return {"Responses": {table: []}, "UnprocessedKeys": {table: kwargs["RequestItems"][table]}}

    proxy = Meddling(dynamodb_client, "batch_get_item", none_processed, times=99)
    policy = RetryPolicy(attempts=3, backoff=Backoff(base=0.001))
    store = DynamoDBIdempotencyStore(table, client=proxy, retry=policy)
    with pytest.raises(DynamoDBUnavailable, match="unprocessed"):
        await store.claim([unique()], 30)
    assert proxy.calls["batch_get_item"] == 3


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
    sink = DynamoDBSink(table, client=proxy, mode=DynamoDBMode.UPSERT, retry=FAST)
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
    store = DynamoDBIdempotencyStore(table, client=proxy, retry=FAST)
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
    store = DynamoDBIdempotencyStore(
        dynamodb_tables("state"), client=proxy, clock=clock, retry=FAST
    )
    sink = DynamoDBSink(dynamodb_tables("outputs"), client=proxy)
    handler = lambda_handler(Pipeline(lambda e: e.json(), sink, store, MemorySink(), clock=clock))
    records = [aws.kinesis_record(i, json.dumps({"n": i}).encode()) for i in range(3)]
    answer = handler(aws.kinesis_event(*records), aws.LambdaContext())
    assert [f["itemIdentifier"] for f in answer["batchItemFailures"]] == [
        r["kinesis"]["sequenceNumber"] for r in records
    ]
    # The store's backoff on every one of the pipeline's attempts, then it gives up.
    assert proxy.calls["batch_get_item"] == 3 * FAST.attempts


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


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(DynamoDBMode), ids=[m.value for m in DynamoDBMode])
@pytest.mark.anyio
async def test_claims_carry_the_token_and_what_they_observed_apart(
    mode: DynamoDBMode, dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    store, _ = dynamodb_pipeline_parts(dynamodb_tables("state"), mode=mode, client=dynamodb_client)
    fresh, done = unique(), unique()
    [first] = await store.claim([done], 30)
    await store.complete([succeeded(first)])
    store.clock = ManualClock(store.clock.now() + store.ttl_seconds + 1)  # the record expired
    [new, again] = await store.claim([fresh, done], 30)
    assert new.token and again.token and "|" not in new.token
    if mode.leases:
        assert new.observed is None and again.observed is None
    else:
        assert new.observed == "" and again.observed == first.token


def test_a_counter_action_needs_an_atomic_mode() -> None:
    with pytest.raises(ConfigurationError, match="atomic mode"):
        DynamoDBSink("t", mode=DynamoDBMode.UPSERT, action=lambda o: {"Update": {}})
    with pytest.raises(ConfigurationError, match="atomic mode"):
        dynamodb_pipeline_parts("t", mode=DynamoDBMode.UPSERT, action=lambda o: {"Update": {}})


@pytest.mark.parametrize(
    ("sink_mode", "store_mode"),
    [
        (DynamoDBMode.FENCED, DynamoDBMode.UPSERT),
        (DynamoDBMode.OPTIMISTIC, DynamoDBMode.FENCED),
        (DynamoDBMode.FENCED, DynamoDBMode.OPTIMISTIC),
    ],
)
def test_an_atomic_sink_refuses_a_store_of_another_mode(
    sink_mode: DynamoDBMode, store_mode: DynamoDBMode, dynamodb_client: Any
) -> None:
    sink = DynamoDBSink("out", mode=sink_mode, client=dynamodb_client)
    store = DynamoDBIdempotencyStore("state", mode=store_mode, client=dynamodb_client)
    with pytest.raises(ConfigurationError, match="dynamodb_pipeline_parts"):
        Pipeline(lambda e: e.json(), sink, store)


@pytest.mark.parametrize("mode", list(DynamoDBMode), ids=[m.value for m in DynamoDBMode])
def test_the_factory_builds_a_matching_pair(mode: DynamoDBMode, dynamodb_client: Any) -> None:
    store, sink = dynamodb_pipeline_parts("state", "out", mode=mode, client=dynamodb_client)
    assert (store.table, sink.table, store.mode, sink.mode) == ("state", "out", mode, mode)
    assert sink.commits_with(store) is mode.atomic
    Pipeline(lambda e: e.json(), sink, store)  # accepted


@pytest.mark.anyio
async def test_upsert_sink_writes_a_custom_item(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    def item(o: Any) -> dict[str, Any]:
        return {"pk": o.output_id, "value": o.value, "custom": True}

    sink = DynamoDBSink(
        dynamodb_tables("outputs"), mode=DynamoDBMode.UPSERT, client=dynamodb_client, item=item
    )
    key = unique("src#e")
    await sink.write([output(key, 0, {"v": 1})])
    assert sink.read_all()[output(key, 0, None).output_id] == {"v": 1}


@pytest.mark.parametrize("mode", list(DynamoDBMode), ids=[m.value for m in DynamoDBMode])
@pytest.mark.anyio
async def test_delivery_counting_costs_one_update_per_failed_key_and_none_for_a_refund(
    mode: DynamoDBMode, dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    proxy = Meddling(dynamodb_client, "none", lambda call, kwargs: None)
    store, _ = dynamodb_pipeline_parts(dynamodb_tables("state"), mode=mode, client=proxy)
    keys = [unique() for _ in range(3)]
    claims = await store.claim(keys, 30)
    await store.release(claims[:1], refund=True)
    assert proxy.calls["update_item"] == (1 if mode.leases else 0)  # a lease still ends
    await store.release(claims[1:])
    assert proxy.calls["update_item"] == (3 if mode.leases else 2)
    again = await store.claim(keys, 30)
    assert [c.deliveries for c in again] == [1, 2, 2]
    assert proxy.calls["batch_get_item"] == 2
