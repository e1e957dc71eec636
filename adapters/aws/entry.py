"""The Lambda entry point: decode the payload, run the pipeline, answer in Lambda's terms."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from onceflow.adapters.aws.decode import Delivery, Item, decode
from onceflow.errors import OnceflowError
from onceflow.logs import log_context
from onceflow.pipeline import BatchResult, Pipeline, built_once
from onceflow.retry import deadline_in

if TYPE_CHECKING:  # the handler reads a deployment it is given; building one imports it
    from onceflow.deployment import Deployment

__all__ = ["BatchFailed", "LambdaHandler", "answer", "failed_items", "lambda_handler"]

log = logging.getLogger("onceflow.aws")

DEFAULT_SAFETY_MARGIN = 3.0
"""Seconds kept free before the function's timeout to commit what was processed."""


class BatchFailed(OnceflowError):
    """Raised for asynchronous triggers (S3, EventBridge) so Lambda retries the invocation,
    and for an SQS batch whose every message failed, so the poller backs off."""


class LambdaHandler:
    """`handler(event, context)` for Lambda, running one pipeline built once per container."""

    def __init__(
        self,
        pipeline: Pipeline | Callable[[], Pipeline],
        *,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
        deployment: Deployment | None = None,
        lanes: bool | None = None,
    ) -> None:
        self._pipeline = built_once(pipeline)
        self.safety_margin = safety_margin
        self.deployment = deployment
        """What the function needs deployed; `onceflow aws template` writes it."""
        self.lanes = lanes_for(deployment) if lanes is None else lanes
        """Whether ordered lanes (Kinesis shards, FIFO groups) are settled by watermarks."""
        self._warned = False
        self._invocations = 0

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline, built by the factory on first use (the container's cold start)."""
        return self._pipeline()

    def __call__(self, event: Any, context: Any = None) -> dict[str, Any]:
        """Process one invocation; a partial batch response for stream and queue triggers."""
        self._invocations += 1
        _describe_invocation(context, cold_start=self._invocations == 1)
        delivery = decode(event, lanes=self.lanes)
        pipeline = self.pipeline
        if delivery.kind == "sqs-fifo" and not pipeline.ordered and not self._warned:
            self._warned = True
            log.warning(
                "a FIFO queue feeds an unordered pipeline: messages of one group may be "
                "processed out of order; build the Pipeline with ordered=True"
            )
        remaining = _remaining_seconds(context)
        if remaining is not None and remaining <= self.safety_margin:
            # Too late to start anything: every record comes back, nothing half-applied.
            result = BatchResult(failed=[r.id for r in delivery.records])
        else:
            deadline = None
            if remaining is not None:
                deadline = pipeline.clock.now() + remaining - self.safety_margin
            # The same deadline, in wall time, for every retry loop of the stores and sinks.
            with deadline_in(None if remaining is None else remaining - self.safety_margin):
                result = pipeline.run_batch(delivery.records, deadline=deadline)
        return answer(delivery, result)


LANES_ENV = "ONCEFLOW_LANES"
"""Set to `off` where a stream's event source mapping is managed outside the template with
a ParallelizationFactor above 1 (a shard's batches then interleave)."""


def lanes_for(deployment: Deployment | None) -> bool:
    """Lane watermarks unless the mapping runs a shard's batches concurrently, or
    `ONCEFLOW_LANES=off`: a watermark is safe only over contiguous runs of a lane."""
    if os.environ.get(LANES_ENV, "").strip().lower() in {"0", "off", "false", "no"}:
        return False
    return deployment is None or deployment.trigger.parallelization_factor == 1


def _describe_invocation(context: Any, *, cold_start: bool) -> None:
    """Put the invocation's request id, function name and cold start on every JSON log line."""
    log_context["cold_start"] = cold_start
    request_id = getattr(context, "aws_request_id", None)
    if request_id is not None:
        log_context["aws_request_id"] = request_id
    else:
        log_context.pop("aws_request_id", None)
    name = getattr(context, "function_name", None) or os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if name:
        log_context["function_name"] = name


def lambda_handler(
    pipeline: Pipeline | Callable[[], Pipeline],
    *,
    safety_margin: float = DEFAULT_SAFETY_MARGIN,
    deployment: Deployment | None = None,
    lanes: bool | None = None,
) -> LambdaHandler:
    """A Lambda handler for `pipeline`, or for the pipeline a zero-argument factory builds.

    `deployment` declares the trigger and resources it needs (see `onceflow.deployment`).
    `lanes` (default: on, unless the deployment's trigger has a ParallelizationFactor above
    1 or `ONCEFLOW_LANES=off`) settles Kinesis shards and SQS FIFO groups by watermarks.
    """
    return LambdaHandler(pipeline, safety_margin=safety_margin, deployment=deployment, lanes=lanes)


def answer(delivery: Delivery, result: BatchResult) -> dict[str, Any]:
    """The platform's answer for a processed delivery; raises `BatchFailed` for async triggers."""
    failed = failed_items(delivery, result.failed)
    summary = {
        "processed": len(result.processed),
        "duplicates": len(result.duplicates),
        "dead_lettered": len(result.dead_lettered),
        "failed": len(failed),
    }
    if result.failed:
        log.warning(
            "%d of %d records will be delivered again: %s",
            len(result.failed),
            len(delivery.records),
            "; ".join(f"{rid}: {result.reasons.get(rid, '?')}" for rid in result.failed[:5]),
        )
    if not delivery.partial_response:
        if failed:
            reasons = "; ".join(f"{rid}: {result.reasons.get(rid, '?')}" for rid in result.failed)
            raise BatchFailed(f"{len(failed)} {delivery.kind} record(s) must be retried: {reasons}")
        return summary
    if failed and len(failed) == len(delivery.items) and delivery.kind in {"sqs", "sqs-fifo"}:
        # Every message comes back either way; an error (not a full batchItemFailures list)
        # is what makes Lambda's SQS poller scale down and back off during an outage.
        reasons = "; ".join(f"{rid}: {result.reasons.get(rid, '?')}" for rid in result.failed[:3])
        raise BatchFailed(
            f"all {len(failed)} {delivery.kind} message(s) failed and will be delivered "
            f"again; raising so the poller backs off: {reasons}"
        )
    return {"batchItemFailures": [{"itemIdentifier": item.identifier} for item in failed]}


def failed_items(delivery: Delivery, failed_ids: Collection[str]) -> list[Item]:
    """The platform records to deliver again, in the order the platform wants them."""
    if not failed_ids:
        return []  # the common case: no item to look at
    failed_set = set(failed_ids)
    failed = [item for item in delivery.items if not failed_set.isdisjoint(item.record_ids)]
    if delivery.kind == "sqs-fifo":
        failed = _fifo_failures(delivery.items, failed)
    elif delivery.kind in {"kinesis", "dynamodb"}:
        # Lambda checkpoints before the lowest reported sequence number.
        failed.sort(key=lambda item: _as_number(item.identifier))
    return failed


def _fifo_failures(items: Sequence[Item], failed: Sequence[Item]) -> list[Item]:
    """Every message of a FIFO group from its first failure on, in delivery order."""
    failed_set = {id(item) for item in failed}
    broken: set[str | None] = set()
    out = []
    for item in items:
        if item.group in broken or id(item) in failed_set:
            broken.add(item.group)
            out.append(item)
    return out


def _as_number(identifier: str) -> tuple[int, str]:
    # Compared as digits, not int(): Python refuses to convert very long digit strings.
    if identifier.isascii() and identifier.isdigit():
        digits = identifier.lstrip("0")
        return (len(digits), digits)
    return (0, identifier)


def _remaining_seconds(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else float(remaining()) / 1000.0
