"""Pull mode on an SQS queue: long polling, delete on success, visibility change on failure."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

from onceflow.adapters.aws.decode import Delivery, decode
from onceflow.adapters.aws.entry import failed_items
from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.event import Event
from onceflow.records import InvalidRecord
from onceflow.retry import Backoff, RetryPolicy

__all__ = ["SQSSource"]

Record = Event | InvalidRecord


class SQSSource:
    """Batches from an SQS queue, decoded exactly as the Lambda SQS trigger decodes them.

    Records that succeed are deleted; failed ones are made visible again after
    `retry.delay(receive count)` (FIFO: with the rest of their group). Only the policy's
    backoff is used: the queue's redrive policy decides when a message stops coming back.
    """

    client = ClientOnFirstUse("sqs")

    def __init__(
        self,
        queue_url: str,
        *,
        client: Any = None,
        wait_seconds: int = 20,
        visibility_timeout: int | None = None,
        stop_when_empty: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.queue_url = queue_url
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.stop_when_empty = stop_when_empty
        self.retry = retry or RetryPolicy(backoff=Backoff(base=1.0, cap=300.0))
        self._client = client
        self._arn: str | None = None
        self._stopped = False
        self._deliveries: dict[int, tuple[Delivery, dict[str, dict[str, Any]]]] = {}

    def stop(self) -> None:
        """End `batches` after the batch being processed."""
        self._stopped = True

    async def batches(self, max_size: int) -> AsyncIterator[Sequence[Record]]:
        """Batches of up to `max_size` records, until stopped (or empty, if asked to stop then)."""
        while not self._stopped:
            messages: list[dict[str, Any]] = await run_blocking(self._receive, max_size)
            if not messages:
                if self.stop_when_empty:
                    return
                continue
            records = [self._as_lambda_record(m) for m in messages]
            delivery = decode({"Records": records})
            batch = delivery.records
            self._deliveries[id(batch)] = (delivery, {m["MessageId"]: m for m in messages})
            yield batch

    async def ack(self, batch: Sequence[Record], failed_ids: Collection[str]) -> None:
        """Delete what succeeded; make what failed visible again after a backoff."""
        delivery, messages = self._deliveries.pop(id(batch))
        failed = {item.identifier for item in failed_items(delivery, failed_ids)}
        done = [
            messages[item.identifier] for item in delivery.items if item.identifier not in failed
        ]
        again = [messages[mid] for mid in failed]
        await run_blocking(self._settle, done, again)

    # -- requests ----------------------------------------------------------------------------

    def _receive(self, max_size: int) -> list[dict[str, Any]]:
        if self._arn is None:
            self._arn = self.client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
        messages: list[dict[str, Any]] = []
        wait = self.wait_seconds
        while len(messages) < max_size:
            request: dict[str, Any] = {
                "QueueUrl": self.queue_url,
                "MaxNumberOfMessages": min(10, max_size - len(messages)),
                "WaitTimeSeconds": wait,
                "MessageSystemAttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
            }
            if self.visibility_timeout is not None:
                request["VisibilityTimeout"] = self.visibility_timeout
            got = self.client.receive_message(**request).get("Messages", [])
            if not got:
                break
            messages.extend(got)
            wait = 0  # fill the batch with what is already there, without waiting again
        return messages

    def _as_lambda_record(self, message: dict[str, Any]) -> dict[str, Any]:
        """A received message in the shape the Lambda SQS trigger delivers it."""
        attributes = {
            name: {"stringValue": attr.get("StringValue"), "dataType": attr.get("DataType")}
            for name, attr in (message.get("MessageAttributes") or {}).items()
        }
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message.get("Body"),
            "attributes": message.get("Attributes") or {},
            "messageAttributes": attributes,
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._arn,
        }

    def _settle(self, done: list[dict[str, Any]], again: list[dict[str, Any]]) -> None:
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)
                ],
            )
        for start in range(0, len(again), 10):
            chunk = again[start : start + 10]
            entries = []
            for n, message in enumerate(chunk):
                count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
                delay = int(self.retry.delay(count))
                entries.append(
                    {
                        "Id": str(n),
                        "ReceiptHandle": message["ReceiptHandle"],
                        "VisibilityTimeout": min(delay, 43_200),
                    }
                )
            self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
