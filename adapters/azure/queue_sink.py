"""A sink on Azure Storage Queues, for dead letters and hand-offs; big messages spill to Blob."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient

from onceflow.adapters.azure.objects import BlobObjectStore
from onceflow.adapters.azure.throttling import default_retry, send
from onceflow.envelopes import trace_fields
from onceflow.errors import OutputRejected
from onceflow.records import Output
from onceflow.retry import RetryPolicy
from onceflow.serialization import dumps

__all__ = ["QueueSink", "decode_queue_output"]

MESSAGE_LIMIT = 64 * 1024
"""The service's limit on a message, after base64 encoding."""
WORKERS = 16


class QueueSink:
    """`onceflow.interfaces.Sink` sending one base64 JSON message per output.

    A message is `{"output_id", "event_key", "event_id", "index", "value"}`; when its
    encoding would pass the 64 KiB limit, the JSON is written to `spill` (a
    `BlobObjectStore`) under `spilled/<sha256 of output_id>.json` and the message
    carries `"spilled": <path>` instead of the value. When the output carries a W3C trace
    context (the pipeline traces), the envelope starts with `"traceparent"` (and holds
    `"tracestate"` when there is one), so the Queue decoder reads it back into
    `Event.attributes` without parsing the body. A queue cannot overwrite, so a
    rewrite sends the output again: consumers keep the last message per `output_id`.
    Without `spill`, an output too large for a message is refused (`OutputRejected`).
    """

    def __init__(
        self,
        queue: QueueClient | str,
        *,
        connection_string: str | None = None,
        spill: BlobObjectStore | None = None,
        create: bool = False,
        throttle_retry: RetryPolicy | None = None,
    ) -> None:
        if isinstance(queue, str):
            if connection_string is None:
                raise ValueError(f"QueueSink({queue!r}) needs connection_string= or a QueueClient")
            queue = QueueClient.from_connection_string(connection_string, queue)
        self.queue = queue
        self.spill = spill
        self.throttle_retry = throttle_retry or default_retry()
        """Sends again while Queue storage throttles them (the SDK never retries a 429)."""
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="onceflow-queue")
        if create:
            with contextlib.suppress(ResourceExistsError):
                send(self.throttle_retry, "a queue creation", queue.create_queue)

    async def write(self, outputs: Sequence[Output]) -> None:
        """Send every output as one message, spilling large ones to Blob first."""
        if not outputs:
            return
        messages: list[str] = []
        spills: list[tuple[str, bytes]] = []
        too_big: dict[str, str] = {}
        for output in outputs:
            # The trace context first: decoders find it by a prefix, not a parse.
            envelope: dict[str, Any] = {
                **trace_fields(output.attributes),
                "output_id": output.output_id,
                "event_key": output.event_key,
                "event_id": output.event_id,
                "index": output.index,
            }
            value = dumps(output.value)
            encoded = _encode(dumps(envelope)[:-1] + ',"value":' + value + "}")
            if len(encoded) <= MESSAGE_LIMIT:
                messages.append(encoded)
                continue
            if self.spill is None:
                too_big[output.output_id] = (
                    f"{len(encoded)} bytes encoded is over the queue's {MESSAGE_LIMIT}-byte "
                    "message limit and the sink has no spill store"
                )
                continue
            path = f"spilled/{hashlib.sha256(output.output_id.encode()).hexdigest()}.json"
            spills.append((path, value.encode()))
            envelope["spilled"] = path
            envelope["bytes"] = len(value.encode())
            messages.append(_encode(dumps(envelope)))
        if too_big:
            raise OutputRejected(too_big)
        for path, data in spills:
            # The blob lands before the message that points at it.
            await self.spill.put(path, data)  # type: ignore[union-attr]
        await anyio.to_thread.run_sync(lambda: list(self._pool.map(self._send, messages)))

    def _send(self, message: str) -> None:
        send(self.throttle_retry, "a message", self.queue.send_message, message)


def _encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


async def decode_queue_output(content: str, spill: BlobObjectStore | None = None) -> dict[str, Any]:
    """A message `QueueSink` sent, as its envelope with `value` (fetched back when spilled)."""
    envelope: dict[str, Any] = json.loads(base64.b64decode(content))
    path = envelope.pop("spilled", None)
    if path is not None:
        if spill is None:
            raise ValueError(f"message {envelope['output_id']} spilled to {path}: pass spill=")
        envelope["value"] = json.loads(await spill.get(path))
        envelope.pop("bytes", None)
    return envelope
