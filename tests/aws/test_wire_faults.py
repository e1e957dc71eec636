"""Faults at the wire, between botocore and the moto server (`tests.support.proxy`).

The proxy relays real HTTP: botocore signs, sends and parses as it would against AWS, and
moto applies what reaches it. A lost reply is a request moto applied whose answer the
client never got; a reset is a request moto never saw; an answer is DynamoDB's own error
text, parsed by botocore into the `ClientError` it raises for the real service.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from onceflow import Backoff, Event, Pipeline, RetryPolicy
from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts
from onceflow.adapters.aws.dynamodb_types import from_wire
from onceflow.adapters.memory import ManualClock, MemorySink
from tests.aws.moto_clients import proxied_dynamodb_client
from tests.aws.test_outages import applied_once
from tests.support.proxy import (
    Fault,
    FaultKind,
    FaultProxy,
    all_of,
    amz_target,
    body_contains,
    dynamodb_error,
)
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator


def _get(client: Any, table: str, pk: str) -> Any:
    return client.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")


def test_the_proxy_relays_drops_resets_delays_and_answers(
    moto: MotoServer, moto_proxy: FaultProxy, dynamodb_tables: Any
) -> None:
    from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

    table = dynamodb_tables("wire")
    client = proxied_dynamodb_client(moto, moto_proxy, read_timeout=0.5)
    put = amz_target("PutItem")

    def write(pk: str) -> None:
        client.put_item(TableName=table, Item={"pk": {"S": pk}})

    write("relayed")  # kept alive: the next requests reuse the connection
    assert _get(client, table, "relayed") == {"pk": {"S": "relayed"}}

    moto_proxy.add(Fault.drop_reply(put))
    with pytest.raises(ConnectionClosedError):
        write("lost-reply")
    assert _get(client, table, "lost-reply") is not None  # applied all the same

    moto_proxy.add(Fault.reset(put))
    with pytest.raises(ConnectionClosedError):
        write("reset")
    assert _get(client, table, "reset") is None  # never reached moto

    moto_proxy.add(Fault.delay_reply(put, 1.0))
    with pytest.raises(ReadTimeoutError):
        write("late")
    assert _get(client, table, "late") is not None

    moto_proxy.add(Fault.answer(put, dynamodb_error(), skip=1, times=2))
    write("skipped")
    for pk in ("throttled-1", "throttled-2"):
        with pytest.raises(ClientError) as raised:
            write(pk)
        assert raised.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    write("after")
    assert _get(client, table, "throttled-1") is None and _get(client, table, "after") is not None

    faulted = [s.fault for s in moto_proxy.seen if s.fault is not None]
    assert faulted == [
        FaultKind.DROP_REPLY,
        FaultKind.RESET,
        FaultKind.DELAY_REPLY,
        FaultKind.ANSWER,
        FaultKind.ANSWER,
    ]
    assert moto_proxy.fired == 5


# -- lost replies through the pipeline (issue 17, items 1 and 17) ---------------------------

FAST = RetryPolicy(attempts=4, backoff=Backoff(base=0.001, cap=0.01))
ATOMIC = [DynamoDBMode.FENCED, DynamoDBMode.OPTIMISTIC]
RETRIERS = ["botocore", "pipeline"]


def _events(ns: str, count: int) -> list[Event]:
    return [Event(id=f"e{n}", source=ns, data=json.dumps({"n": n}).encode()) for n in range(count)]


def _counters(moto: MotoServer, table: str, ns: str) -> dict[int, int]:
    client = moto.client("dynamodb")
    found: dict[int, int] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in map(from_wire, page["Items"]):
            pk = str(item["pk"])
            if pk.startswith(f"{ns}#n#"):
                found[int(pk.rsplit("#", 1)[1])] = int(item["applied"])
    return found


def _pipeline(
    moto: MotoServer,
    proxy: FaultProxy,
    tables: Callable[[str], str],
    mode: DynamoDBMode,
    retrier: str,
    ns: str,
) -> tuple[Pipeline, str, str, MemorySink]:
    # Either botocore sends the request again itself, or it gives up at once and the
    # pipeline's backend retry calls the store again.
    client = proxied_dynamodb_client(moto, proxy, attempts=3 if retrier == "botocore" else 1)
    state, outputs = tables("lost-state"), tables("lost-outputs")
    store, sink = dynamodb_pipeline_parts(
        state,
        outputs,
        mode=mode,
        client=client,
        clock=ManualClock(),
        retry=FAST,
        action=applied_once(ns),
    )
    letters = MemorySink()
    pipeline = Pipeline(
        lambda e: e.json(), sink, store, letters, clock=store.clock, backend_retry=FAST
    )
    return pipeline, state, outputs, letters


@pytest.mark.parametrize("retrier", RETRIERS)
@pytest.mark.parametrize("mode", ATOMIC, ids=[m.value for m in ATOMIC])
def test_a_commit_whose_reply_was_lost_is_applied_once(
    mode: DynamoDBMode,
    retrier: str,
    moto: MotoServer,
    moto_proxy: FaultProxy,
    dynamodb_tables: Callable[[str], str],
) -> None:
    ns = f"lost-commit-{uuid.uuid4().hex[:8]}"
    pipeline, _, outputs, letters = _pipeline(moto, moto_proxy, dynamodb_tables, mode, retrier, ns)
    commit = all_of(amz_target("TransactWriteItems"), body_contains(outputs))
    lost = moto_proxy.add(Fault.drop_reply(commit))
    events = _events(ns, 3)

    first = pipeline.run_batch(events)
    assert lost.fired == 1
    assert sorted(first.processed) == ["e0", "e1", "e2"], first.reasons
    assert _counters(moto, outputs, ns) == {0: 1, 1: 1, 2: 1}
    again = pipeline.run_batch(events)
    assert sorted(again.duplicates) == ["e0", "e1", "e2"]
    assert _counters(moto, outputs, ns) == {0: 1, 1: 1, 2: 1}
    assert len(letters) == 0


@pytest.mark.parametrize("retrier", RETRIERS)
def test_a_claim_whose_reply_was_lost_is_our_own_lease(
    retrier: str,
    moto: MotoServer,
    moto_proxy: FaultProxy,
    dynamodb_tables: Callable[[str], str],
) -> None:
    ns = f"lost-claim-{uuid.uuid4().hex[:8]}"
    pipeline, state, outputs, letters = _pipeline(
        moto, moto_proxy, dynamodb_tables, DynamoDBMode.FENCED, retrier, ns
    )
    lease = all_of(amz_target("TransactWriteItems"), body_contains(state))
    lost = moto_proxy.add(Fault.drop_reply(lease))
    events = _events(ns, 3)

    first = pipeline.run_batch(events)
    assert lost.fired == 1
    assert sorted(first.processed) == ["e0", "e1", "e2"], first.reasons
    assert _counters(moto, outputs, ns) == {0: 1, 1: 1, 2: 1}
    assert sorted(pipeline.run_batch(events).duplicates) == ["e0", "e1", "e2"]
    assert len(letters) == 0


def test_a_claim_that_fails_after_some_leases_landed_keeps_them_as_its_own(
    moto: MotoServer, moto_proxy: FaultProxy, dynamodb_tables: Callable[[str], str]
) -> None:
    ns = f"lost-claim-{uuid.uuid4().hex[:8]}"
    pipeline, state, outputs, letters = _pipeline(
        moto, moto_proxy, dynamodb_tables, DynamoDBMode.FENCED, "pipeline", ns
    )
    # 101 keys lease in two transactions; the second one's reply is lost, so the claim
    # fails after the first landed, and the pipeline claims all 101 again.
    lease = all_of(amz_target("TransactWriteItems"), body_contains(state))
    lost = moto_proxy.add(Fault.drop_reply(lease, skip=1))
    events = _events(ns, 101)

    first = pipeline.run_batch(events)
    assert lost.fired == 1
    assert len(first.processed) == 101, set(first.reasons.values())
    assert set(_counters(moto, outputs, ns).values()) == {1}
    assert len(letters) == 0


@pytest.mark.parametrize(
    "mode", [DynamoDBMode.UPSERT, DynamoDBMode.OPTIMISTIC], ids=["upsert", "optimistic"]
)
@pytest.mark.anyio
async def test_a_failed_delivery_whose_count_reply_was_lost_counts_once(
    mode: DynamoDBMode,
    moto: MotoServer,
    moto_proxy: FaultProxy,
    dynamodb_tables: Callable[[str], str],
) -> None:
    client = proxied_dynamodb_client(moto, moto_proxy, attempts=2)  # botocore sends it again
    store, _ = dynamodb_pipeline_parts(dynamodb_tables("count-state"), mode=mode, client=client)
    key = f"count-{uuid.uuid4().hex[:8]}"
    lost = moto_proxy.add(Fault.drop_reply(amz_target("UpdateItem")))
    [claim] = await store.claim([key], 30)
    await store.release([claim])
    assert lost.fired == 1
    [again] = await store.claim([key], 30)
    assert again.deliveries == 2


def _any_dynamodb(request: Any) -> bool:
    return request.header("x-amz-target").startswith("DynamoDB_")


FAULTS: dict[str, Callable[[int], Fault]] = {
    "lost-reply": lambda k: Fault.drop_reply(_any_dynamodb, skip=k),
    "reset": lambda k: Fault.reset(_any_dynamodb, skip=k),
    "throttled": lambda k: Fault.answer(_any_dynamodb, dynamodb_error(), skip=k),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("mode", list(DynamoDBMode), ids=[m.value for m in DynamoDBMode])
def test_a_fault_at_any_call_of_a_batch_loses_and_doubles_nothing(
    mode: DynamoDBMode,
    fault: str,
    moto: MotoServer,
    moto_proxy: FaultProxy,
    dynamodb_tables: Callable[[str], str],
) -> None:
    """One fault at the k-th DynamoDB request of three deliveries of a batch, for every k."""
    k = 0
    while True:
        ns = f"any-call-{uuid.uuid4().hex[:8]}"
        client = proxied_dynamodb_client(moto, moto_proxy)
        state, outputs = dynamodb_tables(f"any-state-{k}"), dynamodb_tables(f"any-out-{k}")
        store, sink = dynamodb_pipeline_parts(
            state,
            outputs,
            mode=mode,
            client=client,
            clock=ManualClock(),
            retry=FAST,
            action=applied_once(ns) if mode.atomic else None,
        )
        letters = MemorySink()
        pipeline = Pipeline(
            lambda e: e.json(), sink, store, letters, clock=store.clock, backend_retry=FAST
        )
        armed = moto_proxy.add(FAULTS[fault](k))
        events = _events(ns, 3)
        settled: set[str] = set()
        for _ in range(3):  # what failed comes again (a lease left behind runs out first)
            result = pipeline.run_batch(events)
            settled |= set(result.processed) | set(result.duplicates)
            store.clock.advance(pipeline.lease_seconds + 1)  # type: ignore[attr-defined]
        fired = armed.fired
        moto_proxy.clear()  # the checks below read through the same proxy
        assert settled == {"e0", "e1", "e2"}, (k, result.reasons)
        assert len(letters) == 0
        if mode.atomic:
            assert _counters(moto, outputs, ns) == {0: 1, 1: 1, 2: 1}, k
        else:
            assert sorted(v["n"] for v in sink.read_all().values()) == [0, 1, 2]
        if not fired:
            break  # k is past the deliveries' last request: every one was faulted once
        k += 1
    assert k >= (3 if mode.leases else 2)
