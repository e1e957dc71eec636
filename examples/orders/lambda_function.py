"""The orders example as an AWS Lambda function, configured by environment variables only.

    ONCEFLOW_STATE_TABLE     DynamoDB table for idempotency records (required)
    ONCEFLOW_OUTPUT_TABLE    DynamoDB table for order totals (required)
    ONCEFLOW_DEAD_LETTERS    SQS queue URL for dead letters (optional; without it a bad
                             order is reported failed and delivered again)
    ONCEFLOW_MODE            upsert (default), optimistic or atomic
    ONCEFLOW_ORDERED         "true" to process each partition key strictly in sequence
    ONCEFLOW_TTL_SECONDS     how long completed keys are remembered (default 7 days)

Handler: examples.orders.lambda_function.handler. Importing this module touches no AWS
API and no boto3; the pipeline is built on the first invocation.
"""

from __future__ import annotations

import os

from examples.orders.processor import OrderProcessor
from onceflow.adapters.aws import lambda_handler
from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind
from onceflow.errors import ConfigurationError
from onceflow.pipeline import Pipeline

MODES = ("upsert", "optimistic", "atomic")
"""ONCEFLOW_MODE's values, the names of `DynamoDBMode`s (atomic is FENCED)."""


def _setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigurationError(f"environment variable {name} is not set; see {__name__}")
    return value


def build_pipeline() -> Pipeline:
    """The orders pipeline from the environment."""
    from onceflow.adapters.aws import DynamoDBMode, SQSSink, dynamodb_pipeline_parts

    mode = _setting("ONCEFLOW_MODE", "upsert")
    if mode not in MODES:
        raise ConfigurationError(f"ONCEFLOW_MODE is {mode!r}; use one of {', '.join(MODES)}")
    store, sink = dynamodb_pipeline_parts(
        _setting("ONCEFLOW_STATE_TABLE"),
        _setting("ONCEFLOW_OUTPUT_TABLE"),
        mode=DynamoDBMode.FENCED if mode == "atomic" else DynamoDBMode[mode.upper()],
        ttl_seconds=float(_setting("ONCEFLOW_TTL_SECONDS", str(7 * 86_400))),
    )
    letters = os.environ.get("ONCEFLOW_DEAD_LETTERS")
    return Pipeline(
        OrderProcessor(),
        sink,
        store,
        SQSSink(letters) if letters else None,
        ordered=_setting("ONCEFLOW_ORDERED", "false").lower() == "true",
        check_payload=True,  # report a key redelivered with a different payload
        name="orders",
    )


# What `onceflow aws template` deploys: the same variables build_pipeline reads.
DEPLOYMENT = Deployment(
    Trigger(TriggerKind.KINESIS, Resource(ResourceKind.KINESIS_STREAM, "ONCEFLOW_SOURCE_STREAM")),
    state=Resource(ResourceKind.DYNAMODB_TABLE, "ONCEFLOW_STATE_TABLE"),
    outputs=(Resource(ResourceKind.DYNAMODB_TABLE, "ONCEFLOW_OUTPUT_TABLE"),),
    dead_letters=Resource(ResourceKind.SQS_QUEUE, "ONCEFLOW_DEAD_LETTERS"),
    commit="upsert",
    name="orders",
)

handler = lambda_handler(build_pipeline, deployment=DEPLOYMENT)
