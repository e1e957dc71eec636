"""Outputs as SQS messages, standard or FIFO."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from onceflow.adapters.aws.sdk import run_blocking
from onceflow.adapters.aws.send_loop import Entry, MessageSink, batches, encode, send_all
from onceflow.records import Output
from onceflow.retry import RetryPolicy

__all__ = ["SQSSink"]

_LIMIT = 256 * 1024
"""An SQS message's size limit: body and message attributes together."""


def _attributes_size(output: Output) -> int:
    """What the message attributes onceflow sends add to a message's size."""
    size = len(output.output_id.encode()) + len(output.event_key.encode()) + 40
    if output.attributes:  # trace context, canary mark: name, type and value each
        size += sum(len(k.encode()) + len(v.encode()) + 6 for k, v in output.attributes.items())
    return size


class SQSSink(MessageSink):
    """Outputs as SQS messages (JSON bodies), in SendMessageBatch calls of 10.

    On a FIFO queue each message's group is the output's partition key (or event key)
    and its deduplication id derives from `output_id`, so a rewrite is dropped by SQS.
    """

    service = "sqs"
    max_message_bytes = _LIMIT - 16 * 1024
    """256 KiB counts the message attributes too: 16 KiB is left for them."""

    def __init__(
        self, queue_url: str, *, client: Any = None, retry: RetryPolicy | None = None
    ) -> None:
        super().__init__(client, retry)
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")

    async def write(self, outputs: Sequence[Output]) -> None:
        """Send every output; only refused entries are sent again."""
        if outputs:
            entries = encode(outputs, _LIMIT, "SQS message", _attributes_size)
            await run_blocking(self._write, entries)

    def _write(self, entries: list[Entry]) -> None:
        for batch in batches(entries, 10, _LIMIT):
            send_all(batch, self._send, self.retry, f"SQS {self.queue_url}")

    def _send(self, batch: list[Entry]) -> tuple[list[Entry], dict[str, str]]:
        request = []
        for n, entry in enumerate(batch):
            out = entry.output
            message: dict[str, Any] = {
                "Id": str(n),
                "MessageBody": entry.body.decode(),
                "MessageAttributes": {
                    "output_id": {"DataType": "String", "StringValue": out.output_id},
                    "event_key": {"DataType": "String", "StringValue": out.event_key},
                },
            }
            if out.attributes:  # trace context (W3C traceparent), canary mark
                message["MessageAttributes"].update(
                    (name, {"DataType": "String", "StringValue": value})
                    for name, value in out.attributes.items()
                )
            if self.fifo:
                message["MessageGroupId"] = (out.partition_key or out.event_key)[:128]
                message["MessageDeduplicationId"] = hashlib.sha256(
                    out.output_id.encode()
                ).hexdigest()
            request.append(message)
        response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=request)
        retry, permanent = [], {}
        for failure in response.get("Failed", []):
            entry = batch[int(failure["Id"])]
            if failure.get("SenderFault"):
                permanent[entry.output.output_id] = (
                    f"{failure.get('Code')}: {failure.get('Message')}"
                )
            else:
                retry.append(entry)
        return retry, permanent
