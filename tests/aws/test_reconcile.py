"""Window counts in the DynamoDB state table (moto server) and `onceflow reconcile dynamodb`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.aws.dynamodb_sink import DynamoDBSink
from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore
from onceflow.adapters.aws.window_counts import DynamoDBWindowCounts
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.cli import main
from onceflow.reconcile import CountRow, WindowPolicy, count_windows
from tests.aws.moto_clients import proxied_dynamodb_client
from tests.support.proxy import Fault, FaultProxy, amz_target
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator
SECRET = "iban-DE89370400440532013000"


def process(event: Event) -> dict[str, Any]:
    body = event.json()
    if body.get("bad"):
        raise PermanentError("refused")
    return {"n": body["n"]}


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_key)
    return ["--endpoint-url", moto.endpoint, "--region", moto.region]


def test_counts_in_the_state_table_then_reconcile(
    dynamodb_client: Any,
    dynamodb_tables: Callable[[str], str],
    aws_env: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = ManualClock(time.time())  # rows expire by the reader's real clock
    state, outputs = dynamodb_tables("state"), dynamodb_tables("outputs")
    store = DynamoDBIdempotencyStore(state, client=dynamodb_client, clock=clock)
    sink = DynamoDBSink(outputs, client=dynamodb_client)
    pipe = Pipeline(process, sink, store, MemorySink(), clock=clock, name="orders")
    count_windows(pipe, DynamoDBWindowCounts(state, client=dynamodb_client))
    ns = f"rc-{uuid.uuid4().hex[:6]}"
    batch = [
        Event(id=f"o{n}", source=ns, data=json.dumps({"n": n, "iban": SECRET}).encode())
        for n in range(4)
    ]
    batch.append(Event(id="o9", source=ns, data=b'{"n": 9, "bad": true}'))
    pipe.run_batch(batch)
    pipe.run_batch(batch)  # redelivered: duplicates, not processed again
    # The counts live in the store's own table, beside (not instead of) the markers.
    [(key, tally)] = DynamoDBWindowCounts(state, client=dynamodb_client).read().items()
    assert key[0] == "orders"
    assert tally["received"] == 10 and tally["processed"] == 4
    assert tally["duplicates"] == 5 and tally["dead_lettered"] == 1
    base = ["reconcile", "dynamodb", "--table", state, *aws_env, "--expected", "5"]
    assert main([*base, "--sink", f"dynamodb:{outputs}"]) == 0
    shown = capsys.readouterr().out
    assert "sink rows: 4  expected: 4  gap: 0" in shown and SECRET not in shown
    key_of = sorted(sink.read_all())[0]
    dynamodb_client.delete_item(TableName=outputs, Key={"pk": {"S": key_of}})
    assert main([*base, "--sink", f"dynamodb:{outputs}"]) == 1
    assert "sink rows: 3  expected: 4  gap: 1" in capsys.readouterr().out
    # The state table's markers and counts are not outputs: none counted as a sink row.
    assert main([*base, "--sink", f"dynamodb:{state}"]) == 1
    assert "sink rows: 0  expected: 4" in capsys.readouterr().out


def test_a_state_table_without_counts(
    dynamodb_tables: Callable[[str], str], aws_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    state = dynamodb_tables("old")
    assert main(["reconcile", "dynamodb", "--table", state, *aws_env]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "the state holds no window counts" in line


def test_source_objects_under_an_s3_prefix(
    dynamodb_client: Any,
    dynamodb_tables: Callable[[str], str],
    s3_client: Any,
    s3_bucket: str,
    aws_env: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    state = dynamodb_tables("state")
    row = CountRow("p", 0, "b1", {"received": 3, "processed": 3}, time.time(), time.time() + 60)
    DynamoDBWindowCounts(state, client=dynamodb_client).put(row)
    prefix = f"in-{uuid.uuid4().hex[:6]}/"
    for n in range(3):
        s3_client.put_object(Bucket=s3_bucket, Key=f"{prefix}o{n}.json", Body=b"{}")
    base = ["reconcile", "dynamodb", "--table", state, *aws_env]
    assert main([*base, "--source-objects", f"s3://{s3_bucket}/{prefix}"]) == 0
    s3_client.put_object(Bucket=s3_bucket, Key=f"{prefix}late.json", Body=b"{}")
    assert main([*base, "--source-objects", f"s3://{s3_bucket}/{prefix}"]) == 1
    assert "source: 4  processed + dead-lettered: 3  gap: 1" in capsys.readouterr().out


def test_an_attempt_is_added_once_and_items_carry_the_ttl_attribute(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    state = dynamodb_tables("state")
    counts = DynamoDBWindowCounts(state, client=dynamodb_client, writer="w1")
    now = time.time()
    first = CountRow("p", 3600, "b1", {"received": 2, "processed": 2}, now, now + 100)
    counts.put(first)
    counts.put(first)  # botocore retrying an update whose reply was lost
    counts.put(CountRow("p", 3600, "b2", {"received": 1, "duplicates": 1}, now, now + 100))
    DynamoDBWindowCounts(state, client=dynamodb_client, writer="w2").put(first)  # another writer
    counts.put(CountRow("p#2", 3600, "b1", {"received": 7}, now, now + 100))
    tally = counts.read("p")[("p", 3600)]
    assert (tally["received"], tally["processed"], tally["duplicates"]) == (5, 4, 1)
    item = dynamodb_client.get_item(TableName=state, Key={"pk": {"S": counts.key(first)}})["Item"]
    assert item["expires_at"] == {"N": str(int(now + 100))}  # the table's TTL attribute
    assert counts.read("p", now=now + 100) == {}  # expired, though TTL has not deleted it
    assert counts.read()[("p#2", 3600)]["received"] == 7


def test_the_pipeline_adds_to_one_item_per_window_expiring_after_the_retention(
    dynamodb_client: Any, dynamodb_tables: Callable[[str], str]
) -> None:
    clock = ManualClock(time.time())
    state, outputs = dynamodb_tables("state"), dynamodb_tables("outputs")
    store = DynamoDBIdempotencyStore(state, client=dynamodb_client, clock=clock)
    pipe = Pipeline(process, DynamoDBSink(outputs, client=dynamodb_client), store, clock=clock)
    count_windows(pipe, DynamoDBWindowCounts(state, client=dynamodb_client), WindowPolicy())
    ns = f"ttl-{uuid.uuid4().hex[:6]}"
    pipe.run_batch([Event(id="a", source=ns, data=b'{"n": 1}')])
    pipe.run_batch([Event(id="b", source=ns, data=b'{"n": 2}')])
    items = dynamodb_client.scan(
        TableName=state,
        FilterExpression="begins_with(pk, :c)",
        ExpressionAttributeValues={":c": {"S": "counts#"}},
    )["Items"]
    [item] = items  # two batches, one writer, one window: one item
    assert item["received"] == {"N": "2"} and item["processed"] == {"N": "2"}
    assert int(item["expires_at"]["N"]) == int(clock.now() + 35 * 86_400)


def test_botocore_retrying_a_count_update_whose_reply_was_lost_adds_it_once(
    moto: MotoServer, moto_proxy: FaultProxy, dynamodb_tables: Callable[[str], str]
) -> None:
    state = dynamodb_tables("state")
    client = proxied_dynamodb_client(moto, moto_proxy, attempts=3)
    counts = DynamoDBWindowCounts(state, client=client)
    lost = moto_proxy.add(Fault.drop_reply(amz_target("UpdateItem")))
    now = time.time()
    counts.put(CountRow("p", 0, "b1", {"received": 4, "processed": 4}, now, now + 60))
    assert moto_proxy.fired == 1 and lost is not None  # applied, reply lost, retried
    tally = counts.read("p")[("p", 0)]
    assert (tally["received"], tally["processed"]) == (4, 4)
