"""The orders processor as an Azure Function: Event Hubs in, Table storage state and outputs.

Deploy this folder with `func azure functionapp publish APP` (or generate your own
with `onceflow azure scaffold`). App settings it reads:

- `EventHubConnection`: the Event Hubs namespace connection (the trigger's).
- `AzureWebJobsStorage`: the storage account holding the `orders` table (keys and
  totals, committed together) and the `orders-dead-letters` queue (large letters
  spill to the `onceflow-spill` container).

The same `OrderProcessor` runs unchanged on memory, locally and on Lambda.
"""

from __future__ import annotations

import os

from examples.orders.processor import OrderProcessor
from onceflow import Pipeline
from onceflow.adapters.azure import (
    BlobObjectStore,
    EventHubTrigger,
    QueueSink,
    TableIdempotencyStore,
    TableSink,
    function_app,
)

TABLE = "orders"
DEAD_LETTERS = "orders-dead-letters"


def build_pipeline() -> Pipeline:
    """The pipeline, built once per worker on its first invocation."""
    storage = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the platform names it
    store = TableIdempotencyStore(TABLE, connection_string=storage, create=True)
    return Pipeline(
        OrderProcessor(),
        TableSink(TABLE, connection_string=storage),  # same table: atomic with the store
        store,
        QueueSink(
            DEAD_LETTERS,
            connection_string=storage,
            spill=BlobObjectStore("onceflow-spill", connection_string=storage, create=True),
            create=True,
        ),
        name="orders",
    )


# Orders are deduplicated by their business key, whichever partition they arrive on.
app = function_app(build_pipeline, EventHubTrigger("orders", key_field="order_id"), name="orders")
