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
from onceflow.adapters.aws.dynamodb_requests import (
    TRANSACTION_BYTES,
    TRANSACTION_LIMIT,
    DynamoDBUnavailable,
    TransactAction,
)
from onceflow.adapters.aws.dynamodb_store import _pack
from onceflow.adapters.memory import MemorySink
from onceflow.clock import ManualClock
from onceflow.errors import ConfigurationError
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.records import ClaimStatus
from onceflow.retry import Backoff, RetryPolicy
from onceflow.testing.contracts import output, succeeded, unique
from tests.aws.moto_clients import proxied_dynamodb_client
from tests.support.proxy import FaultProxy
from tests.support.servers import MotoServer

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
    # Per-key markers: the throttled call is the per-key claim (on lanes a shard's batch
    # claims its lane instead; tests/aws/test_throttling.py throttles those).
    handler = lambda_handler(
        Pipeline(lambda e: e.json(), sink, store, MemorySink(), clock=clock), lanes=False
    )
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


# -- limits and refusals of one event (issue 17, items 13-15) ------------------------------------


def _pipeline(
    client: Any, tables: Tables, mode: DynamoDBMode, **parts: Any
) -> tuple[Pipeline, DynamoDBSink, MemorySink]:
    store, sink = dynamodb_pipeline_parts(
        tables("state"), tables("outputs"), mode=mode, client=client, retry=FAST, **parts
    )
    letters = MemorySink()
    return Pipeline(lambda e: e.json(), sink, store, letters, clock=ManualClock()), sink, letters


@pytest.mark.parametrize("mode", list(DynamoDBMode), ids=[m.value for m in DynamoDBMode])
def test_an_event_id_over_the_key_limit_is_stored_by_hash_in_the_sink_too(
    mode: DynamoDBMode, dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    pipeline, sink, letters = _pipeline(dynamodb_client, dynamodb_tables, mode)
    ns = unique("long")
    events = [
        Event(id="x" * 2_100, source=ns, data=b'{"n": 0}'),
        Event(id="short", source=ns, data=b'{"n": 1}'),
    ]
    first = pipeline.run_batch(events)
    assert sorted(first.processed) == sorted(e.id for e in events), first.reasons
    stored = sink.read_all()
    assert stored[f"{ns}#{'x' * 2_100}#0"] == {"n": 0} and stored[f"{ns}#short#0"] == {"n": 1}
    assert sorted(pipeline.run_batch(events).duplicates) == sorted(e.id for e in events)
    assert len(letters) == 0


def test_transactions_are_packed_by_bytes_as_well_as_by_count() -> None:
    def group(n: int, size: int, count: int = 1) -> list[TransactAction]:
        return [TransactAction({"Put": {}}, f"t|{n}|{i}", size) for i in range(count)]

    groups = [group(n, 300_000) for n in range(20)] + [group(20, 1, 99), group(21, 1, 2)]
    batches = _pack(groups, list(range(len(groups))))
    assert sorted(g for batch in batches for g in batch) == list(range(len(groups)))
    for batch in batches:
        assert sum(a.size for g in batch for a in groups[g]) <= TRANSACTION_BYTES
        assert sum(len(groups[g]) for g in batch) <= TRANSACTION_LIMIT
    assert [len(b) for b in batches[:2]] == [13, 7]  # 13 x 300 KB fit in 4 MB, not 14


def test_twenty_outputs_of_300_kb_commit_in_transactions_under_4_mb(
    moto: MotoServer, moto_proxy: FaultProxy, dynamodb_tables: Tables
) -> None:
    client = proxied_dynamodb_client(moto, moto_proxy)
    pipeline, sink, letters = _pipeline(client, dynamodb_tables, DynamoDBMode.FENCED)
    ns = unique("big")
    big = "x" * 300_000
    events = [
        Event(id=f"e{n}", source=ns, data=json.dumps({"n": n, "big": big}).encode())
        for n in range(20)
    ]
    result = pipeline.run_batch(events)
    assert sorted(result.processed) == sorted(e.id for e in events), result.reasons
    assert len(sink.read_all()) == 20 and len(letters) == 0
    commits = [s.size for s in moto_proxy.seen if s.target.endswith("TransactWriteItems")]
    commits = [size for size in commits if size > 1_000_000]
    assert len(commits) >= 2 and max(commits) <= 4 * 1024 * 1024


@pytest.mark.parametrize(
    "mode", [DynamoDBMode.FENCED, DynamoDBMode.OPTIMISTIC], ids=["fenced", "optimistic"]
)
def test_a_failed_user_condition_refuses_only_its_event(
    mode: DynamoDBMode, dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    ns = unique("stock")

    def take_one(o: Any) -> dict[str, Any]:
        return {
            "Update": {
                "Key": {"pk": f"{ns}#stock#{o.value['sku']}"},
                "UpdateExpression": "ADD stock :less",
                "ConditionExpression": "stock >= :one",
                "ExpressionAttributeValues": {":less": -1, ":one": 1},
            }
        }

    pipeline, sink, letters = _pipeline(dynamodb_client, dynamodb_tables, mode, action=take_one)
    for sku, stock in (("a", 5), ("b", 0)):
        dynamodb_client.put_item(
            TableName=sink.table,
            Item={"pk": {"S": f"{ns}#stock#{sku}"}, "stock": {"N": str(stock)}},
        )
    events = [
        Event(id=f"e{n}", source=ns, data=json.dumps({"sku": sku}).encode())
        for n, sku in enumerate("aba")
    ]
    result = pipeline.run_batch(events)
    assert sorted(result.processed) == ["e0", "e2"], result.reasons
    assert result.dead_lettered == ["e1"]
    reason = result.reasons["e1"]
    assert "stock >= :one" in reason and sink.table in reason
    assert pipeline.store.table not in reason  # type: ignore[attr-defined]
    [letter] = letters.values()
    assert letter["event"]["id"] == "e1" and "stock >= :one" in letter["message"]

    def stock(sku: str) -> int:
        item = dynamodb_client.get_item(
            TableName=sink.table, Key={"pk": {"S": f"{ns}#stock#{sku}"}}, ConsistentRead=True
        )["Item"]
        return int(item["stock"]["N"])

    assert (stock("a"), stock("b")) == (3, 0)
    again = pipeline.run_batch(events)
    assert sorted(again.duplicates) == ["e0", "e1", "e2"]


@pytest.mark.anyio
async def test_an_event_whose_writes_exceed_one_transaction_is_rejected(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    from onceflow.errors import OutputRejected

    store = DynamoDBIdempotencyStore(dynamodb_tables("state"), client=dynamodb_client)
    sink = DynamoDBSink(dynamodb_tables("outputs"), client=dynamodb_client)
    key = unique("src#e")
    [claim] = await store.claim([key], 30)
    outs = [output(key, i, "x" * 380_000) for i in range(11)]
    with pytest.raises(OutputRejected, match="bytes; one transaction holds") as refused:
        await sink.write_and_complete(store, outs, [succeeded(claim)])
    assert set(refused.value.rejected) == {o.output_id for o in outs}
