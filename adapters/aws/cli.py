"""`onceflow aws template`: an AWS SAM template for a pipeline's Lambda function."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from onceflow.cli import CliError

__all__ = ["SOURCES", "register", "template"]

SOURCES = ("kinesis", "dynamodb", "sqs", "sqs-fifo", "s3")
MODES = ("upsert", "optimistic", "atomic")


def register(subparsers: Any) -> None:
    """Add `aws template` to the `onceflow` command line."""
    aws = subparsers.add_parser("aws", help="AWS Lambda tooling")
    commands = aws.add_subparsers(dest="aws_command", metavar="COMMAND", required=True)
    parser = commands.add_parser(
        "template",
        help="print an AWS SAM template (JSON) for a pipeline's Lambda function",
        description="Print an AWS SAM template: the function, its trigger with partial batch "
        "responses, the DynamoDB tables (TTL on), the dead-letter queue and a least-privilege "
        "role naming only those resources.",
    )
    parser.add_argument(
        "module",
        metavar="PIPELINE_MODULE",
        help="module whose `handler` is an onceflow.adapters.aws.lambda_handler "
        "(e.g. examples.orders.lambda_function)",
    )
    parser.add_argument("--source", choices=SOURCES, default="kinesis", help="the trigger")
    parser.add_argument("--mode", choices=MODES, default="upsert", help="DynamoDB commit mode")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--max-retries",
        type=int,
        default=-1,
        help="MaximumRetryAttempts (streams) or maxReceiveCount (SQS); the default, -1, "
        "leaves giving up to the pipeline's max_deliveries, so an outage never makes "
        "Lambda discard records (SQS: 100 receives)",
    )
    parser.add_argument(
        "--max-record-age",
        type=int,
        default=-1,
        help="MaximumRecordAgeInSeconds for stream records (-1: the stream's retention)",
    )
    parser.add_argument("--timeout", type=int, default=120, help="function timeout, seconds")
    parser.add_argument("--memory", type=int, default=1024, help="function memory, MB")
    parser.add_argument("--runtime", default="python3.12")
    parser.add_argument("--code-uri", default=".", help="where the packaged code is")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current directory
    try:
        module = importlib.import_module(args.module)
    except ModuleNotFoundError as exc:
        raise CliError(f"cannot import module {args.module!r}: {exc}") from exc
    from onceflow.adapters.aws.entry import LambdaHandler

    if not isinstance(getattr(module, "handler", None), LambdaHandler):
        raise CliError(
            f"module {args.module!r} has no `handler = onceflow.adapters.aws.lambda_handler(...)`"
        )
    doc = template(
        f"{args.module}.handler",
        source=args.source,
        mode=args.mode,
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        max_record_age=args.max_record_age,
        timeout=args.timeout,
        memory=args.memory,
        runtime=args.runtime,
        code_uri=args.code_uri,
    )
    print(json.dumps(doc, indent=2))
    return 0


SQS_RECEIVES = 100
"""maxReceiveCount when the pipeline's max_deliveries decides (SQS allows 1 to 1,000)."""


def _arn(name: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [name, "Arn"]}


def template(
    handler: str,
    *,
    source: str = "kinesis",
    mode: str = "upsert",
    batch_size: int = 500,
    max_retries: int = 3,
    max_record_age: int = 3600,
    timeout: int = 120,
    memory: int = 1024,
    runtime: str = "python3.12",
    code_uri: str = ".",
) -> dict[str, Any]:
    """The SAM template (as a dict) for a function whose handler is `handler`."""
    if source not in SOURCES:
        raise CliError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    function_name = {"Fn::Sub": "${AWS::StackName}-processor"}
    resources: dict[str, Any] = {
        "StateTable": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            },
        },
        "OutputTable": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            },
        },
        "DeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {"MessageRetentionPeriod": 1_209_600, "SqsManagedSseEnabled": True},
        },
        "LogGroup": {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": {"Fn::Sub": "/aws/lambda/${AWS::StackName}-processor"},
                "RetentionInDays": 30,
            },
        },
    }
    statements: list[dict[str, Any]] = [
        {
            "Sid": "IdempotencyAndOutputs",
            "Effect": "Allow",
            # TransactWriteItems is authorised per action: Put, Update, Delete, ConditionCheck.
            "Action": [
                "dynamodb:BatchGetItem",
                "dynamodb:BatchWriteItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:DeleteItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ],
            "Resource": [_arn("StateTable"), _arn("OutputTable")],
        },
        {
            "Sid": "DeadLetters",
            "Effect": "Allow",
            "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
            "Resource": [_arn("DeadLetterQueue")],
        },
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [{"Fn::Sub": "${LogGroup.Arn}"}],
        },
    ]
    event, source_resources, source_statement = _trigger(
        source, batch_size=batch_size, max_retries=max_retries, max_record_age=max_record_age
    )
    resources.update(source_resources)
    statements.append(source_statement)
    resources["FunctionRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {
                    "PolicyName": "onceflow-least-privilege",
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                }
            ],
        },
    }
    resources["Processor"] = {
        "Type": "AWS::Serverless::Function",
        "DependsOn": ["LogGroup"],
        "Properties": {
            "FunctionName": function_name,
            "Handler": handler,
            "Runtime": runtime,
            "CodeUri": code_uri,
            "MemorySize": memory,
            "Timeout": timeout,
            "Architectures": ["arm64"],
            "Role": _arn("FunctionRole"),
            "Environment": {
                "Variables": {
                    "ONCEFLOW_STATE_TABLE": {"Ref": "StateTable"},
                    "ONCEFLOW_OUTPUT_TABLE": {"Ref": "OutputTable"},
                    "ONCEFLOW_DEAD_LETTERS": {"Ref": "DeadLetterQueue"},
                    "ONCEFLOW_MODE": mode,
                }
            },
            "Events": {"Trigger": event},
        },
    }
    if source == "s3":
        resources["Processor"]["Properties"]["EventInvokeConfig"] = {
            "MaximumRetryAttempts": 2 if max_retries < 0 else min(max_retries, 2),
            "MaximumEventAgeInSeconds": 21_600
            if max_record_age < 0
            else max(60, min(max_record_age, 21_600)),
            "DestinationConfig": {
                "OnFailure": {"Type": "SQS", "Destination": _arn("DeadLetterQueue")}
            },
        }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": f"onceflow pipeline {handler} ({source} trigger, {mode} mode)",
        "Resources": resources,
        "Outputs": {
            "FunctionArn": {"Value": _arn("Processor")},
            "StateTableName": {"Value": {"Ref": "StateTable"}},
            "OutputTableName": {"Value": {"Ref": "OutputTable"}},
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
        },
    }


def _trigger(
    source: str, *, batch_size: int, max_retries: int, max_record_age: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The function's event, the resources it reads from, and the permission to read them."""
    stream_settings = {
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": min(batch_size, 10_000),
        "MaximumBatchingWindowInSeconds": 1,
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": max_retries,
        "MaximumRecordAgeInSeconds": max_record_age,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": _arn("DeadLetterQueue")}},
    }
    if source == "kinesis":
        resources = {
            "SourceStream": {
                "Type": "AWS::Kinesis::Stream",
                "Properties": {
                    "StreamModeDetails": {"StreamMode": "ON_DEMAND"},
                    "StreamEncryption": {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"},
                },
            }
        }
        event = {
            "Type": "Kinesis",
            "Properties": {"Stream": _arn("SourceStream"), **stream_settings},
        }
        statement = {
            "Sid": "ReadStream",
            "Effect": "Allow",
            "Action": [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards",
                "kinesis:SubscribeToShard",
            ],
            "Resource": [_arn("SourceStream")],
        }
        return event, resources, statement
    if source == "dynamodb":
        resources = {
            "SourceTable": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                    "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
                },
            }
        }
        event = {
            "Type": "DynamoDB",
            "Properties": {
                "Stream": {"Fn::GetAtt": ["SourceTable", "StreamArn"]},
                **stream_settings,
            },
        }
        statement = {
            "Sid": "ReadTableStream",
            "Effect": "Allow",
            "Action": [
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
            ],
            "Resource": [{"Fn::GetAtt": ["SourceTable", "StreamArn"]}],
        }
        return event, resources, statement
    if source in {"sqs", "sqs-fifo"}:
        queue: dict[str, Any] = {
            "SqsManagedSseEnabled": True,
            # Longer than the function may run, so a message is not redelivered mid-batch.
            "VisibilityTimeout": 900,
            "RedrivePolicy": {
                "deadLetterTargetArn": _arn("SourceDeadLetterQueue"),
                # Receives the open circuit hands back count too: leave room for an outage.
                "maxReceiveCount": SQS_RECEIVES if max_retries < 0 else max(1, max_retries + 1),
            },
        }
        dead: dict[str, Any] = {"MessageRetentionPeriod": 1_209_600, "SqsManagedSseEnabled": True}
        if source == "sqs-fifo":
            queue |= {"FifoQueue": True, "ContentBasedDeduplication": False}
            dead |= {"FifoQueue": True}
        resources = {
            "SourceQueue": {"Type": "AWS::SQS::Queue", "Properties": queue},
            "SourceDeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": dead},
        }
        event = {
            "Type": "SQS",
            "Properties": {
                "Queue": _arn("SourceQueue"),
                "BatchSize": min(batch_size, 10),
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
            },
        }
        statement = {
            "Sid": "ReadQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ],
            "Resource": [_arn("SourceQueue")],
        }
        return event, resources, statement
    # s3: an asynchronous invocation; Lambda retries it, then hands it to the DLQ. The
    # bucket is named, not referenced, in the policy: a reference would be circular.
    bucket = "${AWS::StackName}-${AWS::AccountId}-input"
    resources = {
        "SourceBucket": {
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "BucketName": {"Fn::Sub": bucket},
                "VersioningConfiguration": {"Status": "Enabled"},
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
            },
        }
    }
    event = {
        "Type": "S3",
        "Properties": {"Bucket": {"Ref": "SourceBucket"}, "Events": "s3:ObjectCreated:*"},
    }
    statement = {
        "Sid": "ReadObjects",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:GetObjectVersion"],
        "Resource": [{"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{bucket}/*"}],
    }
    return event, resources, statement
