"""The Azure Functions entry (Python v2 programming model): one function bound to one trigger."""

from __future__ import annotations

import logging
import typing
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import azure.functions as func

from onceflow.adapters.azure.decode import (
    Record,
    decode_blob,
    decode_event_hub,
    decode_queue_message,
)
from onceflow.deployment import Deployment
from onceflow.errors import ConfigurationError, OnceflowError
from onceflow.failures import Failure, FailureKind
from onceflow.pipeline import BatchResult, Pipeline, built_once
from onceflow.records import InvalidRecord

__all__ = [
    "BatchFailed",
    "BlobTrigger",
    "EventHubTrigger",
    "FunctionHandler",
    "QueueTrigger",
    "Trigger",
    "function_app",
]

log = logging.getLogger("onceflow.azure")

# The worker passes the invocation context to a function with a `context` parameter
# annotated exactly `azure.functions.Context`; a direct call (a unit test) may leave it out.
_NO_CONTEXT = typing.cast(func.Context, None)
_TRACKED_BATCHES = 1024  # batches whose invocations a worker counts without a retry context

Batch = tuple[str, str, int]
"""A batch as the host delivers it again: its first and last event ids and its size."""


class BatchFailed(OnceflowError):
    """Raised from a function so the host delivers the invocation again."""


@dataclass(frozen=True)
class EventHubTrigger:
    """An Event Hubs trigger, `cardinality="many"`, binary bodies.

    The host checkpoints when the function returns, failed or not, so the handler holds
    failed events in-process for up to `retry_seconds` (backing off, and waiting out an
    open circuit breaker's cool-down), then raises so the function's exponential
    `@app.retry` policy (`max_retry_count` retries) runs the same events again. Only on
    the last retry is what still fails dead-lettered as undelivered, with its reason.
    """

    event_hub_name: str
    connection: str = "EventHubConnection"
    consumer_group: str = "$Default"
    namespace: str | None = None
    """Used in keys when the trigger metadata carries no `PartitionContext`."""
    key_field: str | None = None
    """A JSON body field to use as the event id instead of the sequence number."""
    retry_seconds: float = 60.0
    max_retry_count: int = 5
    minimum_interval: str = "00:00:05"
    maximum_interval: str = "00:05:00"


@dataclass(frozen=True)
class BlobTrigger:
    """A Blob trigger on `path` (`container/{name}`); a failed blob raises so the host retries."""

    path: str
    connection: str = "AzureWebJobsStorage"
    account: str | None = None
    event_grid: bool = False
    """Use the Event Grid blob source (lower latency) instead of container polling."""


@dataclass(frozen=True)
class QueueTrigger:
    """A Storage Queue trigger; a failed message raises so the host makes it visible again."""

    queue_name: str
    connection: str = "AzureWebJobsStorage"


Trigger = EventHubTrigger | BlobTrigger | QueueTrigger


class FunctionHandler:
    """Runs one pipeline (built once per worker) over what the trigger delivers."""

    def __init__(
        self,
        pipeline: Pipeline | Callable[[], Pipeline],
        trigger: Trigger,
        deployment: Deployment | None = None,
    ) -> None:
        self.trigger = trigger
        self.deployment = deployment
        """What else the app needs deployed (its table...); `onceflow azure scaffold` reads it."""
        self._pipeline = built_once(pipeline, self._check)
        self._invocations: OrderedDict[Batch, int] = OrderedDict()
        """Invocations so far of batches still failing, when no retry context says."""
        self._leased_since: OrderedDict[Batch, float] = OrderedDict()
        """When this worker first found a batch's events leased by another worker."""

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline, built by the factory on first use (the worker's cold start)."""
        return self._pipeline()

    def _check(self, pipeline: Pipeline) -> None:
        if isinstance(self.trigger, EventHubTrigger) and pipeline.dead_letter is None:
            raise ConfigurationError(
                "an Event Hubs function checkpoints failed events too: give the pipeline a "
                "dead-letter sink (Pipeline(..., dead_letter=...)) so none is lost"
            )

    # -- Event Hubs ------------------------------------------------------------------------

    async def event_hub(
        self, events: Sequence[func.EventHubEvent], context: func.Context | None = None
    ) -> BatchResult:
        """Process a batch; hold failures in-process, then raise for the retry policy.

        `context` is the invocation's (its `retry_context` says which retry this is).
        """
        trigger = self.trigger
        assert isinstance(trigger, EventHubTrigger)
        records = decode_event_hub(
            events,
            event_hub_name=trigger.event_hub_name,
            consumer_group=trigger.consumer_group,
            namespace=trigger.namespace,
            key_field=trigger.key_field,
        )
        return await self.settle(
            records, trigger.retry_seconds, last_try=self._last_try(records, context)
        )

    def _last_try(self, records: Sequence[Record], context: func.Context | None) -> bool:
        """Whether this invocation is the retry policy's last for the batch.

        From the invocation's retry context when there is one; without it, this worker
        counts its own invocations of the same batch against the trigger's
        `max_retry_count` (the host retries an invocation in the instance that ran it).
        """
        retry = getattr(context, "retry_context", None) if context is not None else None
        if retry is not None:
            return int(retry.retry_count) >= int(retry.max_retry_count)
        trigger = self.trigger
        assert isinstance(trigger, EventHubTrigger)
        if not records:
            return True
        batch = _batch(records)
        tries = self._invocations.pop(batch, 0)
        if tries < trigger.max_retry_count:
            self._invocations[batch] = tries + 1
            while len(self._invocations) > _TRACKED_BATCHES:
                self._invocations.popitem(last=False)
            return False
        return True

    async def settle(
        self, records: Sequence[Record], retry_seconds: float, *, last_try: bool = True
    ) -> BatchResult:
        """Run `records` until none fails or `retry_seconds` pass; then settle the rest.

        What still fails raises `BatchFailed` (the function's retry policy runs the same
        events again), unless `last_try`: then it is dead-lettered as `Undelivered` and
        reported among the result's `dead_lettered`, its failure of kind
        `FailureKind.UNDELIVERED`. Raises `BatchFailed` too when that write fails. An
        event another worker's lease holds back is never dead-lettered: on the last try
        the batch is held until such leases lapse (`Pipeline.lease_seconds` after this
        worker first met them), and one leased again by a live worker raises.
        """
        pipeline = self.pipeline
        started = pipeline.clock.now()
        settled = await pipeline.redeliver(records, deadline=started + retry_seconds)
        if settled.failed and _leased(settled):
            since = self._note_leased(records, started)
            if last_try:
                settled = await self._outwait_leases(records, settled, since, retry_seconds)
        if not settled.failed:
            self._forget(records)
            return settled
        by_id = {r.id: r for r in records}
        leased = _leased(settled)
        if not last_try or leased:
            sample = "; ".join(
                settled.failures[rid].text for rid in settled.failed[:3] if rid in settled.failures
            )
            log.warning(
                "%d event(s) still failing after %.0fs held in-process; raising so the "
                "retry policy delivers them again: %s",
                len(settled.failed),
                retry_seconds,
                sample,
            )
            if last_try:
                # Leased again after the lease we waited out lapsed: a live worker took
                # them and commits them. Dead-lettering them would report unprocessed
                # events as lost (or, once that worker commits, as lost and applied).
                await self._dead_letter_undelivered(
                    settled,
                    [rid for rid in settled.failed if rid not in leased],
                    by_id,
                    retry_seconds,
                )
                self._forget(records)
            raise BatchFailed(
                f"{len(settled.failed)} event(s) still failing after {retry_seconds:.0f}s of "
                f"retries; the function's retry policy runs the batch again: {sample}"
            )
        self._forget(records)
        await self._dead_letter_undelivered(settled, list(settled.failed), by_id, retry_seconds)
        return settled

    async def _dead_letter_undelivered(
        self,
        settled: BatchResult,
        failed: list[str],
        by_id: Mapping[str, Record],
        retry_seconds: float,
    ) -> None:
        """Dead-letter `failed` as undelivered and settle them in `settled` as such."""
        if not failed:
            return
        pipeline = self.pipeline
        undelivered = {
            rid: Failure(FailureKind.UNDELIVERED, _undelivered_text(by_id[rid], settled.failures))
            for rid in failed
        }
        letters = [
            pipeline.dead_letter_for(by_id[rid], failure.text, error_type="Undelivered")
            for rid, failure in undelivered.items()
        ]
        assert pipeline.dead_letter is not None  # _check refuses a pipeline without one
        try:
            await pipeline.dead_letter.write(letters)
        except Exception as exc:
            raise BatchFailed(
                f"{len(letters)} event(s) could not be processed or dead-lettered "
                f"({type(exc).__name__}: {exc}); the host will run the batch again"
            ) from exc
        settled.dead_lettered += failed
        settled.failed = [rid for rid in settled.failed if rid not in undelivered]
        settled.failures.update(undelivered)
        log.error(
            "%d event(s) still failed on the last retry, after %.0fs of retries, and were "
            "dead-lettered: %s",
            len(undelivered),
            retry_seconds,
            "; ".join(failure.text for failure in list(undelivered.values())[:5]),
        )

    def _note_leased(self, records: Sequence[Record], now: float) -> float:
        """When this worker first found the batch leased elsewhere (`now`, the first time)."""
        batch = _batch(records)
        since = self._leased_since.setdefault(batch, now)
        while len(self._leased_since) > _TRACKED_BATCHES:
            self._leased_since.popitem(last=False)
        return since

    async def _outwait_leases(
        self, records: Sequence[Record], settled: BatchResult, since: float, retry_seconds: float
    ) -> BatchResult:
        """On the last retry, hold the batch until leases held elsewhere have lapsed.

        A worker that died holding leases (on Event Hubs, a takeover of its partitions)
        leaves them live for up to the pipeline's `lease_seconds`; no lease seen at
        `since` outlasts `since + lease_seconds`. Past it the key is taken over here, or
        found completed by the worker that held it; dead-lettering it before then would
        write letters for events nobody processed while the checkpoint moves past them.
        """
        pipeline = self.pipeline
        lapsed = since + pipeline.lease_seconds
        if pipeline.clock.now() >= lapsed + retry_seconds:
            return settled  # held past it already: what is leased now, a live worker leased
        log.warning(
            "%d event(s) leased by another worker on the last retry; holding them until its "
            "leases lapse (%.0fs more) rather than dead-lettering them",
            len(_leased(settled)),
            max(0.0, lapsed - pipeline.clock.now()),
        )
        wanted = set(settled.failed)
        again = await pipeline.redeliver(
            [r for r in records if r.id in wanted], deadline=lapsed + retry_seconds
        )
        settled.failed = []
        for rid in wanted:
            settled.failures.pop(rid, None)
        settled.absorb(again)
        return settled

    def _forget(self, records: Sequence[Record]) -> None:
        if records:
            batch = _batch(records)
            self._invocations.pop(batch, None)
            self._leased_since.pop(batch, None)

    # -- Blob and Queue ----------------------------------------------------------------------

    async def blob(self, stream: func.InputStream) -> BatchResult:
        """Process one blob; raise so the host retries when it must come again."""
        trigger = self.trigger
        assert isinstance(trigger, BlobTrigger)
        return await self._single(decode_blob(stream, account=trigger.account))

    async def queue(self, message: func.QueueMessage) -> BatchResult:
        """Process one message; raise so the host makes it visible again when it must."""
        trigger = self.trigger
        assert isinstance(trigger, QueueTrigger)
        return await self._single(decode_queue_message(message, queue_name=trigger.queue_name))

    async def _single(self, record: Record) -> BatchResult:
        result = await self.pipeline.process_batch([record])
        failure = result.failures.get(record.id)
        if failure is not None and failure.kind.redelivers:
            # The host retries (the queue's maxDequeueCount, then its poison queue).
            raise BatchFailed(f"{_name(record)}: {failure.text}")
        return result


def _batch(records: Sequence[Record]) -> Batch:
    return (records[0].id, records[-1].id, len(records))


def _leased(result: BatchResult) -> set[str]:
    """The failed events of `result` that another worker's live lease held back."""
    return {
        rid
        for rid in result.failed
        if (f := result.failures.get(rid)) is not None and f.kind is FailureKind.LEASED_ELSEWHERE
    }


def _undelivered_text(record: Record, failures: Mapping[str, Failure]) -> str:
    """The reason of a dead letter for an event the platform will not deliver again."""
    last = failures.get(record.id)
    return (
        f"{_name(record)}: still failing on the retry policy's last retry, and the Event "
        f"Hubs checkpoint moves past it: {last.text if last is not None else 'unknown'}"
    )


def _name(record: Record) -> str:
    """The record as people find it: hub, partition and sequence number, a blob, a key."""
    if isinstance(record, InvalidRecord):
        return record.locator
    a = record.attributes
    if a.get("eventhub.name"):
        return (
            f"event hub {a.get('eventhub.namespace')}/{a['eventhub.name']} partition "
            f"{a.get('eventhub.partition')} sequence number {a.get('eventhub.sequence_number')}"
        )
    return f"event {record.key}"


HANDLERS: weakref.WeakKeyDictionary[func.FunctionApp, dict[str, FunctionHandler]] = (
    weakref.WeakKeyDictionary()
)
"""Each app's onceflow functions by name, for `onceflow azure scaffold` to read."""


def function_app(
    pipeline: Pipeline | Callable[[], Pipeline],
    trigger: Trigger,
    *,
    name: str = "onceflow",
    app: func.FunctionApp | None = None,
    deployment: Deployment | None = None,
) -> func.FunctionApp:
    """A `FunctionApp` whose function `name` runs `pipeline` on `trigger`'s deliveries.

    `pipeline` may be a zero-argument factory, built on the first invocation. Pass `app`
    to add the function to an existing app, and `deployment` to declare what else it needs
    (its table, outputs, dead letters) for `onceflow azure scaffold`.
    """
    app = app or func.FunctionApp()
    handler = FunctionHandler(pipeline, trigger, deployment)
    HANDLERS.setdefault(app, {})[name] = handler
    if isinstance(trigger, EventHubTrigger):
        # typing.List, not list[...]: the Python worker's annotation check only knows the
        # typing generics, and refuses to load a function annotated `list[EventHubEvent]`.
        async def on_events(
            events: typing.List[func.EventHubEvent],  # noqa: UP006
            context: func.Context = _NO_CONTEXT,
        ) -> None:
            await handler.event_hub(events, context)

        app.function_name(name)(
            app.retry(
                strategy="exponential_backoff",
                max_retry_count=str(trigger.max_retry_count),
                minimum_interval=trigger.minimum_interval,
                maximum_interval=trigger.maximum_interval,
            )(
                app.event_hub_message_trigger(
                    arg_name="events",
                    event_hub_name=trigger.event_hub_name,
                    connection=trigger.connection,
                    consumer_group=trigger.consumer_group,
                    cardinality="many",
                    data_type="binary",
                )(on_events)
            )
        )
    elif isinstance(trigger, BlobTrigger):

        async def on_blob(blob: func.InputStream) -> None:
            await handler.blob(blob)

        source = func.BlobSource.EVENT_GRID if trigger.event_grid else None
        app.function_name(name)(
            app.blob_trigger(
                arg_name="blob", path=trigger.path, connection=trigger.connection, source=source
            )(on_blob)
        )
    elif isinstance(trigger, QueueTrigger):

        async def on_message(message: func.QueueMessage) -> None:
            await handler.queue(message)

        app.function_name(name)(
            app.queue_trigger(
                arg_name="message", queue_name=trigger.queue_name, connection=trigger.connection
            )(on_message)
        )
    else:
        raise ConfigurationError(
            f"unknown trigger {trigger!r}: use EventHubTrigger, BlobTrigger or QueueTrigger"
        )
    return app
