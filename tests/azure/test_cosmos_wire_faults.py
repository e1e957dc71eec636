"""Faults at the wire between azure-cosmos and the Cosmos server, at every call of a batch.

`tests.support.proxy.FaultProxy` relays real HTTP: the SDK signs, sends, retries and
parses as it would against Cosmos DB, and the server applies what reaches it. One fault
is armed at the k-th request of the deliveries of a batch (two, and a third while an event
is unsettled), for every k until the deliveries make fewer than k requests, each of:

- a lost reply (applied, the answer never arrives; the SDK resends reads, never writes),
- a reply held past the client's read timeout (applied, the client gives up),
- a connection reset before forwarding (not applied),
- Cosmos's 429 with `x-ms-retry-after-ms`, answered to the request and every resend of it
  past the SDK's own 9 throttle retries (not applied; the adapters' request loop takes
  over),
- 449 Retry With on an item write (not applied; the SDK does not resend it; Cosmos
  sends it for writes only),
- 412 Precondition Failed on an ETag-guarded replace (not applied: as if another writer
  had replaced the item in between).

Two plans: per-key markers (store on `keys`, CosmosSink on `outputs`), and the lane of an
Event Hubs partition (the store's lane records); the per-key plan also writes window
counts to the state container (the same requests in either plan). One event fails once in
every run, so releases, takeovers and a lane settled in part meet the faults too.

Every run must end with each event settled, its output stored, nothing
dead-lettered, the processor run once per event (a commit whose answer was lost is
recognised, not processed again), a last delivery all duplicates, and the window counts'
`processed` exactly the batch (never counted twice).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.cosmos.exceptions import CosmosHttpResponseError

from onceflow.adapters.azure.cosmos_sink import CosmosSink
from onceflow.adapters.azure.cosmos_store import CosmosIdempotencyStore
from onceflow.adapters.azure.decode import decode_event_hub
from onceflow.adapters.azure.entry import BatchFailed, EventHubTrigger, function_app
from onceflow.adapters.azure.testing import event_hub_batch, invocation_context
from onceflow.adapters.azure.window_counts import CosmosWindowCounts
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.event import Event
from onceflow.metrics import CountingMetrics
from onceflow.pipeline import Pipeline
from onceflow.reconcile import count_windows
from onceflow.retry import Backoff, RetryPolicy
from tests.azure.cosmos_proxy import proxied_database
from tests.support.proxy import Fault, FaultKind, FaultProxy, Request, all_of, cosmos_error
from tests.support.servers import CosmosServer

pytestmark = pytest.mark.emulator

EVENTS = 2
FAST = RetryPolicy(attempts=4, backoff=Backoff(base=0.001, cap=0.01))
"""The pipeline's backend retry and the adapters' throttle loop, fast for tests."""
READ_TIMEOUT = 0.4
"""The client's socket read timeout when replies come late (seconds)."""
LATE = 0.8
SDK_THROTTLE_RETRIES = 9


class At:
    """The k-th request (from 0) `only` accepts, and the SDK's resends of it (same method,
    path and body); the proxy's `times` bounds how many of them the fault takes."""

    def __init__(self, k: int, only: Callable[[Request], bool] | None = None) -> None:
        self.k, self.only = k, only
        self.counted = 0
        self.chosen: tuple[str, str, bytes] | None = None

    def __call__(self, request: Request) -> bool:
        if self.only is not None and not self.only(request):
            return False
        signature = (request.method, request.path, request.body)
        if self.chosen is not None:
            return signature == self.chosen
        self.counted += 1
        if self.counted - 1 == self.k:
            self.chosen = signature
            return True
        return False


def item_write(request: Request) -> bool:
    """A create, upsert or replace of an item (not a query, which is a POST too)."""
    query = request.header("x-ms-documentdb-isquery") or "query" in request.header("content-type")
    return request.method in ("POST", "PUT") and "/docs" in request.path and not query


def guarded_replace(request: Request) -> bool:
    """An ETag-guarded replace of an item (claims' takeovers, completions, releases, lanes)."""
    return request.method == "PUT" and "/docs/" in request.path and bool(request.header("if-match"))


FAULTS: dict[str, Callable[[int], Fault]] = {
    "lost-reply": lambda k: Fault.drop_reply(At(k)),
    "late-reply": lambda k: Fault.delay_reply(At(k), LATE),
    "reset": lambda k: Fault.reset(At(k)),
    "throttled": lambda k: Fault.answer(
        At(k), cosmos_error(429, retry_after_ms=1), times=SDK_THROTTLE_RETRIES + 3
    ),
    "retry-with": lambda k: Fault.answer(
        At(k, item_write), cosmos_error(449, "RetryWith", "Retry the request.", retry_after_ms=1)
    ),
    "precondition-failed": lambda k: Fault.answer(
        At(k, guarded_replace),
        cosmos_error(412, "PreconditionFailed", "The ETag does not match.", retry_after_ms=0),
    ),
}


class FailsOnce:
    """Doubles `n`; raises (transient) the first time it meets n == 1, so every run also
    releases a lease (keys) or settles a lane in part, and takes it again next delivery."""

    def __init__(self) -> None:
        self.failed = False
        self.runs: dict[int, int] = {}

    def process(self, event: Event) -> dict[str, Any]:
        n = int(json.loads(event.data)["n"])
        self.runs[n] = self.runs.get(n, 0) + 1
        if n == 1 and not self.failed:
            self.failed = True
            raise ConnectionError("downstream hiccup")
        return {"double": 2 * n}


def _records(plan: str, tag: str) -> list[Any]:
    bodies = [json.dumps({"n": n}).encode() for n in range(EVENTS)]
    if plan == "lanes":
        batch = event_hub_batch(bodies, partition="0", first_sequence=10, hub=f"hub-{tag}")
        return decode_event_hub(batch, event_hub_name=f"hub-{tag}")
    return [Event(id=f"e{n}", source=f"keyed-{tag}", data=b) for n, b in enumerate(bodies)]


@dataclass
class Run:
    """What one run with a fault at the k-th request saw."""

    fired: int
    settled: set[str]
    ids: set[str]
    outputs: list[int]
    letters: int
    processed: int
    lost_counts: int
    again_duplicates: set[str]
    runs: dict[int, int]
    reasons: dict[str, str] = field(default_factory=dict)


async def run_once(
    proxied: Any, direct: Any, proxy: FaultProxy, plan: str, fault: str, k: int
) -> Run:
    """Two or three deliveries of one batch with the fault armed, then the checks' readings.

    The runs of one test share a database (its own keys, lanes and count partition each).
    """
    tag = f"{fault}.{k}."  # ended: no run's source starts another's
    keys = proxied.get_container_client("keys")
    clock, metrics, letters = ManualClock(), CountingMetrics(), MemorySink()
    store = CosmosIdempotencyStore(keys, clock=clock, throttle_retry=FAST)
    sink = CosmosSink(proxied.get_container_client("outputs"), throttle_retry=FAST)
    processor = FailsOnce()
    pipeline = Pipeline(
        processor,
        sink,
        store,
        letters,
        clock=clock,
        retry=RetryPolicy(attempts=1),  # a failed event goes back for redelivery
        backend_retry=FAST,
        metrics=metrics,
        name=f"p-{tag}",
    )
    if plan == "keyed":
        # The counts' requests are the same whatever the plan: written in one of them.
        count_windows(pipeline, CosmosWindowCounts(keys, writer="w"))
    records = _records(plan, tag)
    assert all(("onceflow.lane" in r.attributes) == (plan == "lanes") for r in records)
    ids = {r.id for r in records}
    armed = proxy.add(FAULTS[fault](k))
    settled: set[str] = set()
    reasons: dict[str, str] = {}
    for delivery in range(1, 4):  # what failed comes again (a lease left behind runs out)
        if delivery == 3 and settled == ids:
            break  # the second delivery's duplicates were the third's requests already
        result = await pipeline.process_batch(records)
        settled |= set(result.processed) | set(result.duplicates)
        reasons |= {i: f.text[:200] for i, f in result.failures.items()}
        for failure in result.failures.values():
            # The key's delivery count: never charged twice for one delivery (a claim
            # whose reply was lost is adopted, not counted again).
            counted = re.search(r"delivery (\d+) of at most", failure.text)
            assert counted is None or int(counted[1]) <= delivery, (k, failure.text)
        clock.advance(pipeline.lease_seconds + 1)
    fired = armed.fired
    proxy.clear()
    again = await pipeline.process_batch(records)
    outputs = sorted(
        int(item["value"]["double"])
        for item in direct.get_container_client("outputs").query_items(
            "SELECT * FROM c WHERE STARTSWITH(c.event_key, @source)",
            parameters=[{"name": "@source", "value": records[0].source}],
            enable_cross_partition_query=True,
        )
    )
    counts = CosmosWindowCounts(direct.get_container_client("keys"))
    # The last delivery counts its duplicates, never a processed event.
    tallies = counts.read(pipeline.name, now=clock.now()).values()
    processed = sum(t["processed"] for t in tallies) if plan == "keyed" else len(ids)
    return Run(
        fired=fired,
        settled=settled,
        ids=ids,
        outputs=outputs,
        letters=len(letters.write_counts()),
        processed=processed,
        lost_counts=metrics.counters.get("window_counts_lost", 0),
        again_duplicates=set(again.duplicates),
        runs=processor.runs,
        reasons=reasons,
    )


PLANS = ["keyed", "lanes"]


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.anyio
async def test_a_fault_at_any_call_of_a_batch_loses_and_doubles_nothing(
    plan: str, fault: str, cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    """One fault at the k-th Cosmos request of a batch's deliveries, for every k."""
    options: dict[str, Any] = {"read_timeout": READ_TIMEOUT} if fault == "late-reply" else {}
    proxied, direct = proxied_database(cosmos, cosmos_proxy, **options)
    k = 0
    while True:
        run = await run_once(proxied, direct, cosmos_proxy, plan, fault, k)
        where = (plan, fault, k, run.reasons)
        assert run.settled == run.ids, where
        assert run.outputs == [2 * n for n in range(EVENTS)], where
        assert run.letters == 0, where
        assert run.again_duplicates == run.ids, where
        assert run.processed == EVENTS, where  # never counted twice, never lost
        # The processor ran once per event, and once more for the event failing once: a
        # commit whose answer was lost is recognised, not processed again.
        assert run.runs == {0: 1, 1: 2}, (where, run.runs)
        if not run.fired:
            break  # k is past the deliveries' last request: every one was faulted once
        k += 1
    print(f"{plan}/{fault}: {k} requests faulted")
    # k is now a clean run's count of the requests the fault can take (keyed: 14 in all,
    # 10 item writes, 5 guarded replaces; lanes: 10, 6, 3): a floor against a predicate
    # that stopped matching.
    assert k >= {"precondition-failed": 3, "retry-with": 5}.get(fault, 8), k


def test_the_proxy_speaks_cosmos_faults_the_sdk_understands(
    cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    """Each fault reaches the SDK as the error a real one would raise."""
    proxied, _ = proxied_database(cosmos, cosmos_proxy, read_timeout=READ_TIMEOUT)
    keys = proxied.get_container_client("keys")

    def create(ident: str) -> None:
        keys.create_item({"id": ident, "pk": "p"})

    def stored() -> set[str]:
        query = "SELECT * FROM c WHERE c.pk = @pk"
        found = keys.query_items(
            query, parameters=[{"name": "@pk", "value": "p"}], partition_key="p"
        )
        return {i["id"] for i in found}

    create("relayed")
    for fault, kind in (
        (Fault.drop_reply(At(0)), ServiceResponseError),
        (Fault.delay_reply(At(0), LATE), ServiceResponseError),
        (Fault.reset(At(0)), ServiceResponseError),
    ):
        cosmos_proxy.add(fault)
        with pytest.raises(kind):
            create(fault.kind.value)
    assert stored() == {"relayed", "drop-reply", "delay-reply"}  # the reset never arrived
    cosmos_proxy.add(
        Fault.answer(At(0), cosmos_error(429, retry_after_ms=1), times=SDK_THROTTLE_RETRIES + 1)
    )
    with pytest.raises(CosmosHttpResponseError) as raised:
        create("throttled")
    assert raised.value.status_code == 429
    cosmos_proxy.add(Fault.answer(At(0), cosmos_error(449, "RetryWith", "Retry the request.")))
    with pytest.raises(CosmosHttpResponseError) as raised:
        create("retry-with")
    assert raised.value.status_code == 449
    assert stored() == {"relayed", "drop-reply", "delay-reply"}
    answered = [s.fault for s in cosmos_proxy.seen if s.fault is FaultKind.ANSWER]
    assert len(answered) == SDK_THROTTLE_RETRIES + 2  # the SDK resent the 429, not the 449


@pytest.mark.anyio
async def test_a_449_retry_with_is_sent_again_not_failed_for_redelivery(
    cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    """Cosmos answers a write it did not apply 449 Retry With, which the SDK raises at once;
    the adapters' request loop sends it again (before: with the pipeline's single backend
    attempt, the claim, output or completion failed and the events came again)."""
    proxied, _ = proxied_database(cosmos, cosmos_proxy)
    keys = proxied.get_container_client("keys")
    store = CosmosIdempotencyStore(keys, clock=ManualClock(), throttle_retry=FAST)
    sink = CosmosSink(proxied.get_container_client("outputs"), throttle_retry=FAST)
    letters = MemorySink()
    processor = FailsOnce()
    processor.failed = True  # no processor failure here: only the wire's 449s
    pipeline = Pipeline(
        processor,
        sink,
        store,
        letters,
        clock=store.clock,
        backend_retry=RetryPolicy(attempts=1),
    )
    retry_with = cosmos_error(449, "RetryWith", "Retry the request.", retry_after_ms=1)
    kinds: list[Callable[[Request], bool]] = [
        lambda r: r.method == "POST" and "/colls/keys/" in r.path,  # the claims' creates
        lambda r: r.method == "POST" and "/colls/outputs/" in r.path,  # the outputs' upserts
        lambda r: r.method == "PUT",  # the completions
    ]
    armed = [
        cosmos_proxy.add(Fault.answer(all_of(item_write, kind), retry_with, times=2))
        for kind in kinds
    ]
    result = await pipeline.process_batch(_records("keyed", "retry-with-449."))
    assert [fault.fired for fault in armed] == [2, 2, 2]
    assert sorted(result.processed) == [f"e{n}" for n in range(EVENTS)] and not result.failures
    doubles = sorted(v["double"] for v in (await sink.contents()).values())
    assert doubles == [2 * n for n in range(EVENTS)]
    assert not letters.write_counts()


def count_create(request: Request) -> bool:
    """The create of a window count item (its own partition, `~counts~<pipeline>`)."""
    return item_write(request) and request.method == "POST" and b"~counts~" in request.body


@pytest.mark.parametrize("fault", ["reset", "throttled", "retry-with"])
@pytest.mark.anyio
async def test_a_count_write_refused_before_it_landed_is_made_again(
    fault: str, cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    proxied, direct = proxied_database(cosmos, cosmos_proxy)
    answer = {
        "throttled": cosmos_error(429, retry_after_ms=1),
        "retry-with": cosmos_error(449, "RetryWith", "Retry the request.", retry_after_ms=1),
    }
    if fault == "reset":
        armed = cosmos_proxy.add(Fault.reset(count_create))
    else:
        times = SDK_THROTTLE_RETRIES + 1 if fault == "throttled" else 1
        armed = cosmos_proxy.add(Fault.answer(count_create, answer[fault], times=times))
    # run_once's own fault sits past its last request (k = 10,000): only `armed` fires.
    run = await run_once(proxied, direct, cosmos_proxy, "keyed", "reset", 10_000)
    assert armed.fired >= 1
    assert run.lost_counts == 0 and run.processed == EVENTS


@pytest.mark.anyio
async def test_an_event_hubs_function_through_a_cosmos_outage_dead_letters_nothing(
    cosmos: CosmosServer, cosmos_proxy: FaultProxy
) -> None:
    """Cosmos throttles every request for a whole invocation, then recovers: the function
    raises for its retry policy (nothing checkpointed past a lost event, nothing
    dead-lettered), and the retry applies each event once on the partition's lane."""
    proxied, direct = proxied_database(cosmos, cosmos_proxy)
    keys = proxied.get_container_client("keys")
    clock = ManualClock()
    store = CosmosIdempotencyStore(keys, clock=clock, throttle_retry=FAST)
    sink, letters = (
        CosmosSink(proxied.get_container_client("outputs"), throttle_retry=FAST),
        (MemorySink()),
    )
    processor = FailsOnce()
    processor.failed = True
    pipeline = count_windows(
        Pipeline(processor, sink, store, letters, clock=clock, backend_retry=FAST, name="hub"),
        CosmosWindowCounts(keys, writer="w"),
    )
    [function] = function_app(pipeline, EventHubTrigger("orders", retry_seconds=1)).get_functions()
    bodies = [json.dumps({"n": n}).encode() for n in range(EVENTS)]
    batch = event_hub_batch(bodies, partition="3", first_sequence=40, hub="outage-hub")
    busy = cosmos_error(429, retry_after_ms=1)
    outage = cosmos_proxy.add(Fault.answer(lambda r: True, busy, times=None))
    with pytest.raises(BatchFailed):
        await function.get_user_function()(batch, invocation_context(0, 5))
    assert outage.fired > SDK_THROTTLE_RETRIES and not letters.write_counts()
    cosmos_proxy.clear()
    cosmos_proxy.add(Fault.answer(lambda r: True, busy, times=12))
    clock.advance(60)
    await function.get_user_function()(batch, invocation_context(1, 5))
    outputs = direct.get_container_client("outputs").query_items(
        "SELECT * FROM c", enable_cross_partition_query=True
    )
    assert sorted(int(item["value"]["double"]) for item in outputs) == [0, 2]
    assert processor.runs == {0: 1, 1: 1} and not letters.write_counts()
    counts = CosmosWindowCounts(direct.get_container_client("keys")).read("hub", now=clock.now())
    assert sum(tally["processed"] for tally in counts.values()) == EVENTS
