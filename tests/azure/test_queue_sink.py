"""QueueSink against Azurite's Queue and Blob services."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from onceflow.adapters.azure import BlobObjectStore
from onceflow.adapters.azure.queue_sink import MESSAGE_LIMIT, QueueSink, decode_queue_output
from onceflow.errors import OutputRejected
from onceflow.interfaces import Sink
from onceflow.records import Output
from onceflow.testing import SinkContract
from tests.support.servers import Azurite

pytestmark = pytest.mark.emulator


class QueueReader:
    """A consumer that drains the queue and keeps the last message per output_id."""

    def __init__(self, queue: QueueClient, spill: BlobObjectStore | None) -> None:
        self.queue, self.spill = queue, spill
        self.seen: dict[str, Any] = {}

    async def __call__(self, sink: Sink) -> dict[str, Any]:
        # Hidden for an hour instead of deleted: one request per 32 messages.
        for message in self.queue.receive_messages(messages_per_page=32, visibility_timeout=3600):
            envelope = await decode_queue_output(message.content, self.spill)
            self.seen[envelope["output_id"]] = envelope["value"]
        return self.seen


@pytest.fixture(scope="module")
def spill(azurite_server: Azurite) -> BlobObjectStore:
    return BlobObjectStore(
        f"spill-{uuid.uuid4().hex[:8]}",
        connection_string=azurite_server.connection_string,
        create=True,
    )


class TestQueueSink(SinkContract):
    @pytest.fixture
    def sink(self, azurite_server: Azurite, spill: BlobObjectStore) -> QueueSink:
        self.name = f"q-{uuid.uuid4().hex[:12]}"
        return QueueSink(
            self.name, connection_string=azurite_server.connection_string, spill=spill, create=True
        )

    @pytest.fixture
    def read_sink(self, sink: QueueSink, spill: BlobObjectStore) -> QueueReader:
        return QueueReader(sink.queue, spill)


@pytest.mark.anyio
async def test_big_output_spills_to_blob_and_round_trips(
    azurite_server: Azurite, spill: BlobObjectStore
) -> None:
    sink = QueueSink(
        f"q-{uuid.uuid4().hex[:12]}",
        connection_string=azurite_server.connection_string,
        spill=spill,
        create=True,
    )
    big = {"blob": "x" * (MESSAGE_LIMIT * 2)}
    await sink.write([Output("src#e1#0", "src#e1", "e1", 0, big)])
    [message] = list(sink.queue.receive_messages())
    assert len(message.content) < 1024
    envelope = await decode_queue_output(message.content, spill)
    assert envelope["value"] == big


@pytest.mark.anyio
async def test_big_output_without_spill_is_refused_by_name(azurite_server: Azurite) -> None:
    sink = QueueSink(
        f"q-{uuid.uuid4().hex[:12]}",
        connection_string=azurite_server.connection_string,
        create=True,
    )
    with pytest.raises(OutputRejected) as caught:
        await sink.write([Output("src#e2#0", "src#e2", "e2", 0, {"x": "y" * MESSAGE_LIMIT})])
    assert "src#e2#0" in caught.value.rejected
