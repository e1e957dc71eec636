"""The AWS backend: Lambda entry, decoders, DynamoDB store and sink, S3, SQS, Kinesis, EventBridge.

Names load on first use, so importing this package costs nothing until one is touched:

    from onceflow.adapters.aws import lambda_handler, DynamoDBIdempotencyStore, S3ObjectStore
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.adapters.aws.dynamodb_sink import DynamoDBSink
    from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore, create_table
    from onceflow.adapters.aws.lambda_entry import BatchFailed, LambdaHandler, lambda_handler
    from onceflow.adapters.aws.lambda_events import (
        DynamoDBChange,
        S3Object,
        UnrecognisedEvent,
        dynamodb_change,
        s3_object,
    )
    from onceflow.adapters.aws.messaging import EventBridgeSink, KinesisSink, SendFailed, SQSSink
    from onceflow.adapters.aws.s3_objects import S3ObjectStore
    from onceflow.adapters.aws.sqs_source import SQSSource

# Public name -> module that defines it; the module is imported when the name is first used.
_EXPORTS: dict[str, str] = {
    "BatchFailed": "onceflow.adapters.aws.lambda_entry",
    "DynamoDBChange": "onceflow.adapters.aws.lambda_events",
    "DynamoDBIdempotencyStore": "onceflow.adapters.aws.dynamodb_store",
    "DynamoDBSink": "onceflow.adapters.aws.dynamodb_sink",
    "EventBridgeSink": "onceflow.adapters.aws.messaging",
    "KinesisSink": "onceflow.adapters.aws.messaging",
    "LambdaHandler": "onceflow.adapters.aws.lambda_entry",
    "S3Object": "onceflow.adapters.aws.lambda_events",
    "S3ObjectStore": "onceflow.adapters.aws.s3_objects",
    "SQSSink": "onceflow.adapters.aws.messaging",
    "SQSSource": "onceflow.adapters.aws.sqs_source",
    "SendFailed": "onceflow.adapters.aws.messaging",
    "UnrecognisedEvent": "onceflow.adapters.aws.lambda_events",
    "create_table": "onceflow.adapters.aws.dynamodb_store",
    "dynamodb_change": "onceflow.adapters.aws.lambda_events",
    "lambda_handler": "onceflow.adapters.aws.lambda_entry",
    "s3_object": "onceflow.adapters.aws.lambda_events",
}

__all__ = [
    "BatchFailed",
    "DynamoDBChange",
    "DynamoDBIdempotencyStore",
    "DynamoDBSink",
    "EventBridgeSink",
    "KinesisSink",
    "LambdaHandler",
    "S3Object",
    "S3ObjectStore",
    "SQSSink",
    "SQSSource",
    "SendFailed",
    "UnrecognisedEvent",
    "create_table",
    "dynamodb_change",
    "lambda_handler",
    "s3_object",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra="aws")
