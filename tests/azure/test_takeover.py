"""Event Hubs takeover through the Functions app on Azurite's Table service.

Instance A claims a batch's keys in the real Table store and dies holding the leases;
instance B's function gets the same events (the partition moved to it). The pipeline's
clock is a manual one shared with the store, so a lease of `LEASE` seconds lapses in no
wall time; the retry context is the one the Python worker passes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from onceflow.adapters.azure import TableIdempotencyStore, TableSink
from onceflow.adapters.azure.decode import decode_event_hub
from onceflow.adapters.azure.entry import BatchFailed, EventHubTrigger, function_app
from onceflow.adapters.azure.testing import event_hub_batch, invocation_context
from onceflow.adapters.memory import ManualClock, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.records import Claim
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator

LEASE = 300.0
EVENTS = 20


class Doubler:
    def process(self, event: Event) -> dict[str, Any]:
        return {"double": 2 * int(event.json()["n"])}


def table(azurite_server: Azurite) -> str:
    name = f"takeover{uuid.uuid4().hex[:10]}"
    TableServiceClient.from_connection_string(azurite_server.connection_string).create_table(name)
    return name


@pytest.mark.anyio
async def test_leases_of_a_dead_instance_are_waited_out_not_dead_lettered(
    azurite_server: Azurite,
) -> None:
    conn, clock = azurite_server.connection_string, ManualClock()
    name = table(azurite_server)
    store = TableIdempotencyStore(name, connection_string=conn, clock=clock)
    sink, letters = TableSink(name, connection_string=conn), MemorySink()
    pipe = Pipeline(Doubler(), sink, store, letters, clock=clock, lease_seconds=LEASE)
    bodies = [json.dumps({"n": n}).encode() for n in range(EVENTS)]
    records = decode_event_hub(event_hub_batch(bodies), event_hub_name="orders")
    # Instance A claims every key and dies holding the leases.
    claims = await store.claim([pipe.key_of(r) for r in records], LEASE)
    assert all(c.token for c in claims)

    trigger = EventHubTrigger("orders", retry_seconds=60, max_retry_count=1)
    [function] = function_app(pipe, trigger).get_functions()
    run = function.get_user_function()
    with pytest.raises(BatchFailed, match="another worker holds"):
        await run(event_hub_batch(bodies), invocation_context(0, 1))
    clock.advance(5.0)  # the retry policy's interval
    # The last retry starts 65 s in, well inside A's lease: it is held until the lease lapses.
    await run(event_hub_batch(bodies), invocation_context(1, 1))

    assert letters.values() == []
    contents = await sink.contents()
    assert sorted(v["double"] for v in contents.values()) == [2 * n for n in range(EVENTS)]


class Relay:
    """A store that lets a live worker take every lease over again as soon as it lapses."""

    def __init__(self, store: TableIdempotencyStore, lease: float) -> None:
        self.store, self.lease = store, lease
        self.keys: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_lanes"):
            # Per-key leases only: a partition's lane has its own takeover scenario
            # (tests/support/lane_scenarios.py), so this store keeps no lanes.
            raise AttributeError(name)
        return getattr(self.store, name)

    async def claim(self, keys: Sequence[str], lease_seconds: float) -> list[Claim]:
        await self.store.claim(self.keys, self.lease)  # the live worker, first each time
        return await self.store.claim(keys, lease_seconds)


@pytest.mark.anyio
async def test_leases_a_live_worker_keeps_taking_raise_rather_than_dead_letter(
    azurite_server: Azurite,
) -> None:
    conn, clock = azurite_server.connection_string, ManualClock()
    name = table(azurite_server)
    store = TableIdempotencyStore(name, connection_string=conn, clock=clock)
    relay = Relay(store, LEASE)
    letters = MemorySink()
    pipe = Pipeline(
        Doubler(),
        MemorySink(),
        relay,
        letters,
        clock=clock,
        lease_seconds=LEASE,
    )
    bodies = [json.dumps({"n": n}).encode() for n in range(3)]
    records = decode_event_hub(event_hub_batch(bodies), event_hub_name="orders")
    relay.keys = [pipe.key_of(r) for r in records]
    [function] = function_app(
        pipe, EventHubTrigger("orders", retry_seconds=10, max_retry_count=0)
    ).get_functions()
    with pytest.raises(BatchFailed, match="another worker holds"):
        await function.get_user_function()(event_hub_batch(bodies), invocation_context(0, 0))
    assert letters.values() == []
    assert clock.now() - 1_700_000_000.0 >= LEASE  # it did wait the lease out first
