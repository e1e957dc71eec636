"""Outputs as EventBridge events on a bus.

An output's W3C `traceparent` (set when the pipeline traces) travels as a `traceparent`
member of the event's `detail` when the detail is a JSON object (its first member); the
EventBridge decoder reads it back into `Event.attributes['traceparent']`. The entry's
`TraceHeader` is X-Ray's own format and is left alone; `tracestate` is not carried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from onceflow.adapters.aws.dynamodb_requests import error_code
from onceflow.adapters.aws.sdk import run_blocking
from onceflow.adapters.aws.send_loop import Entry, MessageSink, batches, encode, send_all
from onceflow.envelopes import trace_fields, with_leading_traceparent
from onceflow.records import Output
from onceflow.retry import RetryPolicy

__all__ = ["EventBridgeSink"]


class EventBridgeSink(MessageSink):
    """Outputs as EventBridge events on a bus, in PutEvents calls of 10."""

    service = "events"
    max_message_bytes = 256 * 1024 - 1024
    """An entry's 256 KB counts its source, detail type, resources and bus name too."""

    def __init__(
        self,
        bus: str = "default",
        *,
        source: str = "onceflow",
        detail_type: str | Callable[[Output], str] = "onceflow.output",
        client: Any = None,
        retry: RetryPolicy | None = None,
        trace_context: bool = True,
    ) -> None:
        super().__init__(client, retry)
        self.bus = bus
        self.trace_context = trace_context
        """Whether an output's `traceparent` leads its JSON object detail (see above)."""
        self.source = source
        self.detail_type = detail_type

    async def write(self, outputs: Sequence[Output]) -> None:
        """Put every output as an event; only refused entries are put again."""
        if outputs:
            entries = encode(
                outputs,
                self.max_message_bytes,
                "EventBridge entry",
                lambda o: 72 if trace_fields(o.attributes) else 0,
            )
            await run_blocking(self._write, entries)

    def _write(self, entries: list[Entry]) -> None:
        for batch in batches(entries, 10, 256 * 1024):
            send_all(batch, self._send, self.retry, f"EventBridge bus {self.bus}")

    def _send(self, batch: list[Entry]) -> tuple[list[Entry], dict[str, str]]:
        kind = self.detail_type
        request = [
            {
                "EventBusName": self.bus,
                "Source": self.source,
                "DetailType": kind(e.output) if callable(kind) else kind,
                "Detail": (
                    with_leading_traceparent(e.body.decode(), e.output.attributes)
                    if self.trace_context and e.output.attributes
                    else e.body.decode()
                ),
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
