"""Atomic DynamoDB modes on watermark lanes: a batch's outputs and its lane's record in a
chain of transactions (`DynamoDBIdempotencyStore._chain`), on the moto server.

Every output is a counter (`applied_once`), so an effect applied twice shows as 2: a crash
between links, a lost reply of a link, a stale worker's chain, a refused write mid-chain.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from onceflow import Backoff, Event, Pipeline, RetryPolicy
from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts
from onceflow.adapters.aws.dynamodb_lanes import decode_record, record_key
from onceflow.adapters.aws.dynamodb_types import from_wire
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.failures import FailureKind
from onceflow.records import Output
from onceflow.watermarks import LANE_ATTRIBUTE
from tests.aws.moto_clients import dynamodb_worker_client, proxied_dynamodb_client
from tests.aws.test_outages import applied_once
from tests.support.proxy import Fault, FaultProxy, all_of, amz_target, body_contains
from tests.support.servers import MotoServer

pytestmark = pytest.mark.emulator

FAST = RetryPolicy(attempts=8, backoff=Backoff(base=0.001, cap=0.01))
ATOMIC = [DynamoDBMode.FENCED, DynamoDBMode.OPTIMISTIC]
COUNT = 250
"""Three links: 99, 99 and 52 outputs, each with the lane record."""


def _events(ns: str, count: int = COUNT, start: int = 0) -> list[Event]:
    return [
        Event(
            id=f"e{n}",
            source=ns,
            data=json.dumps({"n": n}).encode(),
            sequence=str(1000 + n),
            partition_key=f"u{n % 7}",
            attributes={LANE_ATTRIBUTE: "shard-0"},
        )
        for n in range(start, start + count)
    ]


def _counters(moto: MotoServer, table: str, ns: str) -> dict[int, int]:
    client = moto.client("dynamodb")
    found: dict[int, int] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in map(from_wire, page["Items"]):
            pk = str(item["pk"])
            if pk.startswith(f"{ns}#n#"):
                found[int(pk.rsplit("#", 1)[1])] = int(item["applied"])
    return found


def _lane(client: Any, table: str, ns: str) -> Any:
    lane = f"{ns}#lane#shard-0"
    item = client.get_item(TableName=table, Key=record_key(lane, "pk"), ConsistentRead=True).get(
        "Item"
    )
    return decode_record(lane, item, 0.0)


class Recording:
    """Writes `{"n": n}`; remembers which events it ran."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def process(self, event: Event) -> dict[str, Any]:
        n = int(event.json()["n"])
        self.calls.append(n)
        return {"n": n}


def _pipeline(
    client: Any,
    state: str,
    outputs: str,
    mode: DynamoDBMode,
    ns: str,
    clock: ManualClock,
    *,
    action: Callable[[Output], dict[str, Any]] | None = None,
    letters: Any = None,
) -> tuple[Pipeline, Recording]:
    store, sink = dynamodb_pipeline_parts(
        state,
        outputs,
        mode=mode,
        client=client,
        clock=clock,
        retry=FAST,
        action=action or applied_once(ns),
    )
    processor = Recording()
    pipeline = Pipeline(
        processor,
        sink,
        store,
        letters if letters is not None else MemorySink(),
        clock=clock,
        backend_retry=RetryPolicy(attempts=1),
    )
    assert pipeline.watermarks
    return pipeline, processor


class Crash(Exception):
    """The worker died: from here on none of its requests reach DynamoDB."""


class DiesAfter:
    """A client that lets `links` TransactWriteItems through, then fails every call."""

    def __init__(self, client: Any, links: int) -> None:
        self._client, self._links, self.dead = client, links, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("get_") or name == "meta":
            return attr

        def call(**kwargs: Any) -> Any:
            if self.dead:
                raise Crash(name)
            if name == "transact_write_items" and "lane#" in json.dumps(kwargs):
                if self._links == 0:
                    self.dead = True
                    raise Crash(name)
                self._links -= 1
            return attr(**kwargs)

        return call


@pytest.mark.parametrize("links", [1, 2])
@pytest.mark.parametrize("mode", ATOMIC, ids=[m.value for m in ATOMIC])
def test_a_crash_between_links_loses_and_repeats_nothing(
    mode: DynamoDBMode, links: int, moto: MotoServer, dynamodb_tables: Callable[[str], str]
) -> None:
    """After `links` links landed the worker dies; once its lease lapses the next worker
    processes exactly the events of the links that did not land, each once."""
    ns = f"chain-crash-{uuid.uuid4().hex[:8]}"
    state, outputs = dynamodb_tables("chain-state"), dynamodb_tables("chain-out")
    clock = ManualClock()
    dying = DiesAfter(dynamodb_worker_client(moto), links)
    first, _ = _pipeline(dying, state, outputs, mode, ns, clock)
    events = _events(ns)
    result = first.run_batch(events)
    assert dying.dead and len(result.failed) == COUNT
    landed = _counters(moto, outputs, ns)
    assert sorted(landed) == list(range(99 * links)) and set(landed.values()) == {1}
    lane = _lane(moto.client("dynamodb"), state, ns)
    assert lane.state.watermark == 1000 + 99 * links - 1  # exactly the landed links
    assert lane.lease_expires_at > clock.now()  # a link keeps the lease

    clock.advance(first.lease_seconds + 1)
    second, processor = _pipeline(dynamodb_worker_client(moto), state, outputs, mode, ns, clock)
    again = second.run_batch(events)
    assert again.ok, again.reasons
    assert sorted(processor.calls) == list(range(99 * links, COUNT))
    assert len(again.duplicates) == 99 * links
    assert _counters(moto, outputs, ns) == dict.fromkeys(range(COUNT), 1)
    final = _lane(moto.client("dynamodb"), state, ns)
    assert final.state.watermark == 1000 + COUNT - 1 and final.state.inflight is None


@pytest.mark.parametrize("retrier", ["botocore", "pipeline"])
@pytest.mark.parametrize("mode", ATOMIC, ids=[m.value for m in ATOMIC])
def test_a_lane_link_whose_reply_was_lost_is_applied_once(
    mode: DynamoDBMode,
    retrier: str,
    moto: MotoServer,
    moto_proxy: FaultProxy,
    dynamodb_tables: Callable[[str], str],
) -> None:
    """The second link's reply is dropped at the wire: botocore sends it again (its
    ClientRequestToken), or the pipeline's retry calls the sink again and the chain goes
    on from the record that link wrote. Nothing doubles, nothing is lost."""
    ns = f"chain-lost-{uuid.uuid4().hex[:8]}"
    state, outputs = dynamodb_tables("lost-lane-state"), dynamodb_tables("lost-lane-out")
    client = proxied_dynamodb_client(moto, moto_proxy, attempts=3 if retrier == "botocore" else 1)
    clock = ManualClock()
    store, sink = dynamodb_pipeline_parts(
        state, outputs, mode=mode, client=client, clock=clock, retry=FAST, action=applied_once(ns)
    )
    processor = Recording()
    pipeline = Pipeline(processor, sink, store, MemorySink(), clock=clock, backend_retry=FAST)
    link = all_of(amz_target("TransactWriteItems"), body_contains(outputs))
    lost = moto_proxy.add(Fault.drop_reply(link, skip=1))
    events = _events(ns)
    result = pipeline.run_batch(events)
    assert lost.fired == 1
    assert result.ok and len(result.processed) == COUNT, result.reasons
    moto_proxy.clear()
    assert _counters(moto, outputs, ns) == dict.fromkeys(range(COUNT), 1)
    again = pipeline.run_batch(events)
    assert len(again.duplicates) == COUNT and len(processor.calls) == COUNT
    lane = _lane(moto.client("dynamodb"), state, ns)
    assert lane.state.watermark == 1000 + COUNT - 1 and lane.state.inflight is None


@pytest.mark.parametrize("mode", ATOMIC, ids=[m.value for m in ATOMIC])
def test_a_stale_workers_chain_is_refused_at_its_next_link(
    mode: DynamoDBMode, moto: MotoServer, dynamodb_tables: Callable[[str], str]
) -> None:
    """A worker whose lease lapsed mid-chain while another took the lane: its next link
    fails the lane's condition, its events come again (LEASE_LOST), nothing doubles."""
    ns = f"chain-stale-{uuid.uuid4().hex[:8]}"
    state, outputs = dynamodb_tables("stale-state"), dynamodb_tables("stale-out")
    clock = ManualClock()
    events = _events(ns)
    taken: list[Any] = []

    class TakesOver:
        """Before the stale worker's second link, the other worker takes the lane."""

        def __init__(self, client: Any) -> None:
            self._client, self._links = client, 0

        def __getattr__(self, name: str) -> Any:
            attr = getattr(self._client, name)
            if name != "transact_write_items":
                return attr

            def call(**kwargs: Any) -> Any:
                if "lane#" in json.dumps(kwargs):
                    self._links += 1
                    if self._links == 2 and not taken:
                        clock.advance(stale.lease_seconds + 1)
                        other, _ = _pipeline(
                            dynamodb_worker_client(moto), state, outputs, mode, ns, clock
                        )
                        taken.append(other.run_batch(events))
                return attr(**kwargs)

            return call

    stale, _ = _pipeline(TakesOver(dynamodb_worker_client(moto)), state, outputs, mode, ns, clock)
    result = stale.run_batch(events)
    assert taken and taken[0].ok, taken[0].reasons
    assert len(taken[0].duplicates) == 99  # the stale worker's first link had landed
    assert len(result.failed) == COUNT
    assert {result.failures[i].kind for i in result.failed} == {FailureKind.LEASE_LOST}
    assert _counters(moto, outputs, ns) == dict.fromkeys(range(COUNT), 1)


@pytest.mark.parametrize("mode", ATOMIC, ids=[m.value for m in ATOMIC])
def test_a_refused_write_mid_chain_dead_letters_only_its_event(
    mode: DynamoDBMode, moto: MotoServer, dynamodb_tables: Callable[[str], str]
) -> None:
    """One event's own condition fails in the second link: the first link stays, the
    event is dead-lettered (its letter written before the lane settles it), the rest of
    the chain commits, and a redelivery finds every event settled."""
    ns = f"chain-refused-{uuid.uuid4().hex[:8]}"
    state, outputs = dynamodb_tables("refused-state"), dynamodb_tables("refused-out")
    clock = ManualClock()
    counter = applied_once(ns)

    def action(output: Output) -> dict[str, Any]:
        update = counter(output)
        if output.value["n"] == 150:
            update["Update"]["ConditionExpression"] = "attribute_exists(never)"
        return update

    letters = MemorySink()
    pipeline, processor = _pipeline(
        dynamodb_worker_client(moto), state, outputs, mode, ns, clock, action=action,
        letters=letters,
    )  # fmt: skip
    events = _events(ns)
    result = pipeline.run_batch(events)
    assert result.dead_lettered == ["e150"], result.reasons
    assert len(result.processed) == COUNT - 1 and not result.failed
    assert len(letters) == 1
    expected = dict.fromkeys(range(COUNT), 1)
    del expected[150]
    assert _counters(moto, outputs, ns) == expected
    processor.calls.clear()
    again = pipeline.run_batch(events)
    # Its letter landed before the lane settled it: the redelivery is all duplicates.
    assert len(again.duplicates) == COUNT and processor.calls == []
    assert _counters(moto, outputs, ns) == expected
