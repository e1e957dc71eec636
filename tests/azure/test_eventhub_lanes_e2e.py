"""A 1,000-event Event Hubs batch through the Functions handler on Azurite, Table store and
sink on separate tables: the partition's lane settles it, in entity operations counted."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from azure.data.tables import TableClient

from onceflow.adapters.azure.entry import EventHubTrigger, FunctionHandler
from onceflow.adapters.azure.table_sink import TableSink
from onceflow.adapters.azure.table_store import TableIdempotencyStore
from onceflow.adapters.azure.testing import TableRequestCounter as Counter
from onceflow.adapters.azure.testing import event_hub_batch
from onceflow.adapters.memory import MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator

EVENTS = int(os.environ.get("ONCEFLOW_LANE_E2E_RECORDS", "1000"))


class Doubler:
    def process(self, event: Event) -> dict[str, Any]:
        return {"n": json.loads(event.data)["n"] * 2}


def _tables(azurite: Azurite, counter: Counter) -> tuple[TableClient, TableClient]:
    tag = uuid.uuid4().hex[:8]
    made = []
    for name in (f"lanestate{tag}", f"laneorders{tag}"):
        client = TableClient.from_connection_string(
            azurite.connection_string, name, per_retry_policies=[counter]
        )
        client.create_table()
        made.append(client)
    return made[0], made[1]


@pytest.mark.anyio
async def test_an_event_hub_batch_settles_on_its_partitions_lane(azurite_server: Azurite) -> None:
    """Outputs in entity transactions, the lane row read and written twice; redelivery
    reads the lane row and writes nothing."""
    counter = Counter()
    state, orders = _tables(azurite_server, counter)
    letters = MemorySink(atomic=False)
    pipeline = Pipeline(Doubler(), TableSink(orders), TableIdempotencyStore(state), letters)
    assert pipeline.watermarks
    handler = FunctionHandler(pipeline, EventHubTrigger("orders"))
    batch = event_hub_batch(
        [json.dumps({"n": n}).encode() for n in range(EVENTS)], partition="4", first_sequence=10
    )
    counter.__init__()  # type: ignore[misc]
    result = await handler.event_hub(batch)
    assert len(result.processed) == EVENTS and not result.failed
    first = (counter.writes / EVENTS, counter.operations / EVENTS, counter.requests / EVENTS)
    print(f"first delivery: requests={counter.requests} operations={counter.operations} "
          f"writes={counter.writes}: per event {first}")  # fmt: skip
    assert first[0] <= 1.05 and first[1] <= 1.05
    counter.__init__()  # type: ignore[misc]
    again = await handler.event_hub(batch)
    assert len(again.duplicates) == EVENTS and not again.failed
    print(f"redelivery: requests={counter.requests} operations={counter.operations} "
          f"writes={counter.writes}")  # fmt: skip
    assert counter.requests / EVENTS <= 0.01
    assert counter.writes == 0  # the lane row is only read
    assert len(list(orders.list_entities())) == EVENTS
