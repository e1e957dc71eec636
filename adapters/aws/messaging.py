"""Sinks that send outputs as messages (SQS, Kinesis, EventBridge), re-sending only failures.

Messages are at-least-once by nature: a batch that is written again after a crash is
sent again. Every message carries the output's `output_id` so consumers can drop
repeats (a FIFO queue does so itself, through the deduplication id).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onceflow.adapters.aws.dynamodb_requests import error_code
from onceflow.adapters.aws.sdk import ClientOnFirstUse, run_blocking
from onceflow.errors import OutputRejected
from onceflow.records import Output
from onceflow.retry import Backoff
from onceflow.serialization import dumps

__all__ = ["EventBridgeSink", "KinesisSink", "SQSSink", "SendFailed"]

MAX_ROUNDS = 8


class SendFailed(RuntimeError):
    """Some entries were still refused after every retry (throttling, service errors)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    output: Output
    body: bytes


def _encode(outputs: Sequence[Output], limit: int, what: str) -> list[_Entry]:
    """Each output's JSON; outputs over `limit` bytes are rejected before anything is sent."""
    entries = [_Entry(o, dumps(o.value).encode()) for o in outputs]
    too_big = {
        e.output.output_id: f"{len(e.body)} bytes is over the {limit}-byte {what} limit"
        for e in entries
        if len(e.body) > limit
    }
    if too_big:
        raise OutputRejected(too_big)
    return entries


def _batches(entries: Sequence[_Entry], count: int, size: int) -> list[list[_Entry]]:
    """Consecutive batches of at most `count` entries and `size` bytes."""
    batches: list[list[_Entry]] = []
    current: list[_Entry] = []
    total = 0
    for entry in entries:
        weight = len(entry.body) + 256  # attributes and keys count towards the limit too
        if current and (len(current) >= count or total + weight > size):
            batches.append(current)
            current, total = [], 0
        current.append(entry)
        total += weight
    if current:
        batches.append(current)
    return batches


def _send_all(
    batch: list[_Entry],
    send: Callable[[list[_Entry]], tuple[list[_Entry], dict[str, str]]],
    backoff: Backoff,
    what: str,
) -> None:
    """Send a batch; re-send only the entries the service refused as transient."""
    pending = batch
    for attempt in range(1, MAX_ROUNDS + 1):
        pending, permanent = send(pending)
        if permanent:
            raise OutputRejected(permanent)
        if not pending:
            return
        time.sleep(backoff.delay(attempt))
    raise SendFailed(f"{what}: {len(pending)} entries still refused after {MAX_ROUNDS} tries")


class _Client:
    service = ""
    client = ClientOnFirstUse()  # made for `service` on first use

    def __init__(self, client: Any, backoff: Backoff | None) -> None:
        self._client = client
        self.backoff = backoff or Backoff(base=0.05, cap=2.0)


class SQSSink(_Client):
    """Outputs as SQS messages (JSON bodies), in SendMessageBatch calls of 10.

    On a FIFO queue each message's group is the output's partition key (or event key)
    and its deduplication id derives from `output_id`, so a rewrite is dropped by SQS.
    """

    service = "sqs"

    def __init__(
        self, queue_url: str, *, client: Any = None, backoff: Backoff | None = None
    ) -> None:
        super().__init__(client, backoff)
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")

    async def write(self, outputs: Sequence[Output]) -> None:
        """Send every output; only refused entries are sent again."""
        if outputs:
            entries = _encode(outputs, 256 * 1024, "SQS message")
            await run_blocking(self._write, entries)

    def _write(self, entries: list[_Entry]) -> None:
        for batch in _batches(entries, 10, 256 * 1024):
            _send_all(batch, self._send, self.backoff, f"SQS {self.queue_url}")

    def _send(self, batch: list[_Entry]) -> tuple[list[_Entry], dict[str, str]]:
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


class KinesisSink(_Client):
    """Outputs as Kinesis records (JSON), in PutRecords calls of 500 records / 5 MiB."""

    service = "kinesis"

    def __init__(
        self,
        stream: str,
        *,
        client: Any = None,
        backoff: Backoff | None = None,
        partition_key: Callable[[Output], str] | None = None,
    ) -> None:
        super().__init__(client, backoff)
        self.stream = stream
        self.partition_key = partition_key or (lambda o: o.partition_key or o.event_key)

    async def write(self, outputs: Sequence[Output]) -> None:
        """Put every output; only the records Kinesis refused are put again."""
        if outputs:
            entries = _encode(outputs, 1024 * 1024 - 256, "Kinesis record")
            await run_blocking(self._write, entries)

    def _write(self, entries: list[_Entry]) -> None:
        for batch in _batches(entries, 500, 5 * 1024 * 1024):
            _send_all(batch, self._send, self.backoff, f"Kinesis {self.stream}")

    def _send(self, batch: list[_Entry]) -> tuple[list[_Entry], dict[str, str]]:
        target = (
            {"StreamARN": self.stream}
            if self.stream.startswith("arn:")
            else {"StreamName": self.stream}
        )
        records = [
            {"Data": e.body, "PartitionKey": self.partition_key(e.output)[:256]} for e in batch
        ]
        response = self.client.put_records(Records=records, **target)
        if not response.get("FailedRecordCount"):
            return [], {}
        # Refusals are throughput or internal errors: all worth another try.
        return [
            e for e, r in zip(batch, response["Records"], strict=True) if r.get("ErrorCode")
        ], {}


class EventBridgeSink(_Client):
    """Outputs as EventBridge events on a bus, in PutEvents calls of 10."""

    service = "events"

    def __init__(
        self,
        bus: str = "default",
        *,
        source: str = "onceflow",
        detail_type: str | Callable[[Output], str] = "onceflow.output",
        client: Any = None,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(client, backoff)
        self.bus = bus
        self.source = source
        self.detail_type = detail_type

    async def write(self, outputs: Sequence[Output]) -> None:
        """Put every output as an event; only refused entries are put again."""
        if outputs:
            entries = _encode(outputs, 256 * 1024 - 1024, "EventBridge entry")
            await run_blocking(self._write, entries)

    def _write(self, entries: list[_Entry]) -> None:
        for batch in _batches(entries, 10, 256 * 1024):
            _send_all(batch, self._send, self.backoff, f"EventBridge bus {self.bus}")

    def _send(self, batch: list[_Entry]) -> tuple[list[_Entry], dict[str, str]]:
        kind = self.detail_type
        request = [
            {
                "EventBusName": self.bus,
                "Source": self.source,
                "DetailType": kind(e.output) if callable(kind) else kind,
                "Detail": e.body.decode(),
                "Resources": [],
            }
            for e in batch
        ]
        try:
            response = self.client.put_events(Entries=request)
        except Exception as exc:
            if error_code(exc) in {"ThrottlingException", "InternalException"}:
                return batch, {}
            raise
        if not response.get("FailedEntryCount"):
            return [], {}
        retry, permanent = [], {}
        for entry, result in zip(batch, response["Entries"], strict=True):
            code = result.get("ErrorCode")
            if not code:
                continue
            if code in {"ThrottlingException", "InternalFailure", "InternalException"}:
                retry.append(entry)
            else:
                permanent[entry.output.output_id] = f"{code}: {result.get('ErrorMessage')}"
        return retry, permanent
