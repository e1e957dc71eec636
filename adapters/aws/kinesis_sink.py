"""Outputs as Kinesis records.

A record has no attributes: an output's W3C `traceparent` (set when the pipeline traces)
travels as the first member of the record's JSON object, which the Kinesis decoder reads
back into `Event.attributes['traceparent']` (`onceflow.envelopes.with_leading_traceparent`).
Bodies that are not JSON objects carry no trace context; `tracestate` is not carried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from onceflow.adapters.aws.sdk import run_blocking
from onceflow.adapters.aws.send_loop import Entry, MessageSink, batches, encode, send_all
from onceflow.envelopes import trace_fields, with_leading_traceparent
from onceflow.records import Output
from onceflow.retry import RetryPolicy

__all__ = ["KinesisSink"]


class KinesisSink(MessageSink):
    """Outputs as Kinesis records (JSON), in PutRecords calls of 500 records / 5 MiB."""

    service = "kinesis"
    max_message_bytes = 1024 * 1024 - 256
    """A record's 1 MiB counts its partition key (up to 256 bytes) too."""

    def __init__(
        self,
        stream: str,
        *,
        client: Any = None,
        retry: RetryPolicy | None = None,
        partition_key: Callable[[Output], str] | None = None,
        trace_context: bool = True,
    ) -> None:
        super().__init__(client, retry)
        self.stream = stream
        self.trace_context = trace_context
        """Whether an output's `traceparent` leads its JSON object record (see above)."""
        self.partition_key = partition_key or (lambda o: o.partition_key or o.event_key)

    async def write(self, outputs: Sequence[Output]) -> None:
        """Put every output; only the records Kinesis refused are put again."""
        if outputs:
            entries = encode(outputs, self.max_message_bytes, "Kinesis record", _trace_overhead)
            if self.trace_context:
                entries = _traced(entries)
            await run_blocking(self._write, entries)

    def _write(self, entries: list[Entry]) -> None:
        for batch in batches(entries, 500, 5 * 1024 * 1024):
            send_all(batch, self._send, self.retry, f"Kinesis {self.stream}")

    def _send(self, batch: list[Entry]) -> tuple[list[Entry], dict[str, str]]:
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


def _trace_overhead(output: Output) -> int:
    return 72 if trace_fields(output.attributes) else 0


def _traced(entries: list[Entry]) -> list[Entry]:
    """Entries whose output brings a trace context, with it leading the JSON object."""
    return [
        Entry(e.output, with_leading_traceparent(e.body.decode(), e.output.attributes).encode())
        if e.output.attributes and trace_fields(e.output.attributes)
        else e
        for e in entries
    ]
