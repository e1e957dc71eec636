"""A sink sending outputs to an Event Hub, in batches filled to the hub's size limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import anyio.to_thread

from onceflow.errors import OutputRejected
from onceflow.records import Output
from onceflow.serialization import dumps

__all__ = ["EventHubSink"]


class Producer(Protocol):
    """What the sink needs of `azure.eventhub.EventHubProducerClient`."""

    def create_batch(self, **kwargs: Any) -> Any:
        """An empty `EventDataBatch`."""
        ...

    def send_batch(self, event_data_batch: Any, **kwargs: Any) -> None:
        """Send a filled batch."""
        ...


class EventHubSink:
    """`onceflow.interfaces.Sink` publishing one event per output through an Event Hubs producer.

    Each event's body is `{"output_id", "event_key", "event_id", "index", "value"}` as
    JSON, with `output_id` also in its application properties; outputs with the same
    partition key go in the same batches (so the hub keeps their order), batches are
    filled until the SDK's `EventDataBatch` says it is full, then sent. An Event Hub
    cannot overwrite, so a retried write sends an output again: consumers keep the
    last event per `output_id`. An output larger than an empty batch is refused with
    `OutputRejected`. Testing: no local Event Hubs server exists, so the tests drive
    this class with the SDK's real `EventData`/`EventDataBatch` (its size accounting)
    and a producer that records the batches instead of opening an AMQP connection.
    """

    def __init__(self, producer: Producer, *, max_batch_bytes: int | None = None) -> None:
        self.producer = producer
        self.max_batch_bytes = max_batch_bytes

    async def write(self, outputs: Sequence[Output]) -> None:
        """Send every output, batched by partition key and size."""
        if outputs:
            await anyio.to_thread.run_sync(lambda: self._send(outputs))

    def _send(self, outputs: Sequence[Output]) -> None:
        from azure.eventhub import EventData

        lanes: dict[str | None, list[Output]] = {}
        for output in outputs:
            lanes.setdefault(output.partition_key, []).append(output)
        # Check every size before sending anything, so a refusal sends nothing.
        events = {id(o): self._event(EventData, o) for o in outputs}
        too_big = {
            o.output_id: "larger than an empty Event Hubs batch can hold"
            for o in outputs
            if not self._fits(events[id(o)], o.partition_key)
        }
        if too_big:
            raise OutputRejected(too_big)
        for lane, members in lanes.items():
            batch = self._new_batch(lane)
            for output in members:
                try:
                    batch.add(events[id(output)])
                except ValueError:
                    self.producer.send_batch(batch)
                    batch = self._new_batch(lane)
                    batch.add(events[id(output)])
            if len(batch):
                self.producer.send_batch(batch)

    def _new_batch(self, partition_key: str | None) -> Any:
        options: dict[str, Any] = {}
        if partition_key is not None:
            options["partition_key"] = partition_key
        if self.max_batch_bytes is not None:
            options["max_size_in_bytes"] = self.max_batch_bytes
        return self.producer.create_batch(**options)

    def _fits(self, event: Any, partition_key: str | None) -> bool:
        try:
            self._new_batch(partition_key).add(event)
        except ValueError:
            return False
        return True

    @staticmethod
    def _event(event_type: Any, output: Output) -> Any:
        body = dumps(
            {
                "output_id": output.output_id,
                "event_key": output.event_key,
                "event_id": output.event_id,
                "index": output.index,
                "value": output.value,
            }
        )
        event = event_type(body)
        event.properties = {"output_id": output.output_id, "event_key": output.event_key}
        if output.attributes:  # trace context (W3C traceparent), canary mark
            event.properties.update(output.attributes)
        event.content_type = "application/json"
        return event
