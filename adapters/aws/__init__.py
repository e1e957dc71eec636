"""The AWS backend: Lambda entry, decoders, DynamoDB store and sink, S3, SQS, Kinesis, EventBridge.

Names load on first use, so importing this package costs nothing until one is touched:

    from onceflow.adapters.aws import lambda_handler, dynamodb_pipeline_parts, DynamoDBMode

Lambda trigger-event builders for users' unit tests are in `onceflow.adapters.aws.testing`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from onceflow.lazy import lazy_exports

if TYPE_CHECKING:
    from onceflow.adapters.aws.decode import (
        DynamoDBChange,
        S3Object,
        UnrecognisedEvent,
        dynamodb_change,
        s3_object,
    )
    from onceflow.adapters.aws.dynamodb_mode import DynamoDBMode, dynamodb_pipeline_parts
    from onceflow.adapters.aws.dynamodb_sink import DynamoDBSink
    from onceflow.adapters.aws.dynamodb_store import DynamoDBIdempotencyStore, create_table
    from onceflow.adapters.aws.emf import EmfMetrics
    from onceflow.adapters.aws.entry import BatchFailed, LambdaHandler, lambda_handler
    from onceflow.adapters.aws.eventbridge_sink import EventBridgeSink
    from onceflow.adapters.aws.kinesis_sink import KinesisSink
    from onceflow.adapters.aws.objects import S3ObjectStore
    from onceflow.adapters.aws.send_loop import SendFailed
    from onceflow.adapters.aws.sqs_sink import SQSSink
    from onceflow.adapters.aws.sqs_source import SQSSource

# Public name -> module that defines it; the module is imported when the name is first used.
_EXPORTS: dict[str, str] = {
    "BatchFailed": "onceflow.adapters.aws.entry",
    "DynamoDBChange": "onceflow.adapters.aws.decode",
    "DynamoDBIdempotencyStore": "onceflow.adapters.aws.dynamodb_store",
    "DynamoDBMode": "onceflow.adapters.aws.dynamodb_mode",
    "DynamoDBSink": "onceflow.adapters.aws.dynamodb_sink",
    "EmfMetrics": "onceflow.adapters.aws.emf",
    "EventBridgeSink": "onceflow.adapters.aws.eventbridge_sink",
    "KinesisSink": "onceflow.adapters.aws.kinesis_sink",
    "LambdaHandler": "onceflow.adapters.aws.entry",
    "S3Object": "onceflow.adapters.aws.decode",
    "S3ObjectStore": "onceflow.adapters.aws.objects",
    "SQSSink": "onceflow.adapters.aws.sqs_sink",
    "SQSSource": "onceflow.adapters.aws.sqs_source",
    "SendFailed": "onceflow.adapters.aws.send_loop",
    "UnrecognisedEvent": "onceflow.adapters.aws.decode",
    "create_table": "onceflow.adapters.aws.dynamodb_store",
    "dynamodb_change": "onceflow.adapters.aws.decode",
    "dynamodb_pipeline_parts": "onceflow.adapters.aws.dynamodb_mode",
    "lambda_handler": "onceflow.adapters.aws.entry",
    "s3_object": "onceflow.adapters.aws.decode",
}

__all__ = [
    "BatchFailed",
    "DynamoDBChange",
    "DynamoDBIdempotencyStore",
    "DynamoDBMode",
    "DynamoDBSink",
    "EmfMetrics",
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
    "dynamodb_pipeline_parts",
    "lambda_handler",
    "s3_object",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, extra="aws")
