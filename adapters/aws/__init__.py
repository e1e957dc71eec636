"""The AWS backend: Lambda entry, decoders, DynamoDB store and sink, S3, SQS, Kinesis, EventBridge.

Names load on first use, so importing this package costs nothing until one is touched:

    from adapters.aws import lambda_handler, DynamoDBIdempotencyStore, S3ObjectStore
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corelib.lazy import lazy_exports

if TYPE_CHECKING:
    from adapters.aws.dynamodb_sink import DynamoDBSink
    from adapters.aws.dynamodb_store import DynamoDBIdempotencyStore, create_table
    from adapters.aws.lambda_entry import BatchFailed, LambdaHandler, lambda_handler
    from adapters.aws.lambda_events import (
        DynamoDBChange,
        S3Object,
        UnrecognisedEvent,
        dynamodb_change,
        s3_object,
    )
    from adapters.aws.messaging import EventBridgeSink, KinesisSink, SendFailed, SQSSink
    from adapters.aws.s3_objects import S3ObjectStore
    from adapters.aws.sqs_source import SQSSource

# Public name -> module that defines it; the module is imported when the name is first used.
_EXPORTS: dict[str, str] = {
    "BatchFailed": "adapters.aws.lambda_entry",
    "DynamoDBChange": "adapters.aws.lambda_events",
    "DynamoDBIdempotencyStore": "adapters.aws.dynamodb_store",
    "DynamoDBSink": "adapters.aws.dynamodb_sink",
    "EventBridgeSink": "adapters.aws.messaging",
    "KinesisSink": "adapters.aws.messaging",
    "LambdaHandler": "adapters.aws.lambda_entry",
    "S3Object": "adapters.aws.lambda_events",
    "S3ObjectStore": "adapters.aws.s3_objects",
    "SQSSink": "adapters.aws.messaging",
    "SQSSource": "adapters.aws.sqs_source",
    "SendFailed": "adapters.aws.messaging",
    "UnrecognisedEvent": "adapters.aws.lambda_events",
    "create_table": "adapters.aws.dynamodb_store",
    "dynamodb_change": "adapters.aws.lambda_events",
    "lambda_handler": "adapters.aws.lambda_entry",
    "s3_object": "adapters.aws.lambda_events",
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
