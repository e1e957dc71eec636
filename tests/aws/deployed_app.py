"""A user's Lambda module as `onceflow aws template` and `sam build` see it (tests copy it).

Totals per order into a DynamoDB table, dead letters to SQS, state in DynamoDB; one
handler per trigger, each with its deployment. Configured only by the environment the
generated template sets.
"""

from __future__ import annotations

import json
from typing import Any

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.aws import lambda_handler
from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind

STATE = Resource(ResourceKind.DYNAMODB_TABLE, "ORDERS_STATE_TABLE")
TOTALS = Resource(ResourceKind.DYNAMODB_TABLE, "ORDERS_TOTALS_TABLE")
LETTERS = Resource(ResourceKind.SQS_QUEUE, "ORDERS_DEAD_LETTERS")


class Totals:
    """An order's total in cents; an order without an id can never succeed."""

    def process(self, event: Event) -> dict[str, Any]:
        order = json.loads(event.data)
        if "bucket" in order and "key" in order:  # an S3 notification: the object's size
            return {"order_id": order["key"], "cents": int(order.get("size") or 0)}
        if order.get("flaky"):
            raise ConnectionError("the payments service is down")  # transient: comes back
        if "order_id" not in order:
            raise PermanentError("an order needs an order_id")
        return {"order_id": order["order_id"], "cents": round(float(order["amount"]) * 100)}


def build() -> Pipeline:
    """The pipeline, from the environment the template sets."""
    from onceflow.adapters.aws import DynamoDBMode, SQSSink, dynamodb_pipeline_parts

    store, sink = dynamodb_pipeline_parts(
        STATE.name(), TOTALS.name(), mode=DynamoDBMode.UPSERT, ttl_seconds=3600
    )
    return Pipeline(Totals(), sink, store, SQSSink(LETTERS.name()), name="orders")


def _deployment(trigger: Trigger) -> Deployment:
    return Deployment(trigger, STATE, (TOTALS,), LETTERS, commit="upsert", name="orders")


kinesis_handler = lambda_handler(
    build,
    deployment=_deployment(
        Trigger(TriggerKind.KINESIS, Resource(ResourceKind.KINESIS_STREAM, "ORDERS_STREAM"))
    ),
)
sqs_handler = lambda_handler(
    build,
    deployment=_deployment(
        Trigger(TriggerKind.SQS, Resource(ResourceKind.SQS_QUEUE, "ORDERS_QUEUE"), batch_size=10)
    ),
)
s3_handler = lambda_handler(
    build,
    deployment=_deployment(
        Trigger(TriggerKind.S3, Resource(ResourceKind.S3_BUCKET, "ORDERS_BUCKET"))
    ),
)


def make_handler() -> Any:
    """A factory, as `onceflow aws template deployed_app:make_handler` may name one."""
    return kinesis_handler


def not_a_handler() -> Any:
    """A factory that returns something else."""
    return {"not": "a handler"}
