"""The Amazon States Language definition and SAM resources of the chunked path.

`chunked_state_machine` is the definition: a Map running the chunk worker with retries and
exponential backoff over the chunks, inline over the execution's `chunks`, or as a
Distributed Map whose ItemReader reads the plan's items file (`items.json`, one
`{"index": i}` per chunk, next to `plan.json` in the ledger) from S3, so a plan of any
number of chunks fits (the execution input is at most 256 KB: ~8,000 chunks inline). A
chunk that still fails is caught and handed back to the chunk worker with its error,
which writes a dead letter in the pipeline's own format to the pipeline's dead-letter
sink (`ChunkedHandlers.chunk_failed`: the object, version, chunk and cause, never its
records), so `ChunkedHandlers.replay` runs it again; should that fail too, the chunk's
name and error go to the dead-letter queue as they are. Then the fan-in, and a Choice
that fails the execution when a chunk is missing.
`state_machine_resource` is the `AWS::Serverless::StateMachine` running it, with its
substitutions and least-privilege policies: the template generator (`template.py`, for
an S3 pipeline built with `FunctionSettings(chunked=...)`) adds it next to the pipeline's
own functions. `chunked_resources` is a standalone set (the three functions and the
state machine) for a template of your own.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RETRIED_ERRORS",
    "chunked_resources",
    "chunked_state_machine",
    "state_machine_resource",
]

RETRIED_ERRORS = [
    "ChunkBusy",
    "ChunkIncomplete",
    "ChunkOutOfTime",
    "Sandbox.Timedout",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
"""Errors worth another attempt: a chunk leased elsewhere, an outage, a worker that ran out
of time (its committed records are duplicates next time, so each attempt gets further),
Lambda's own trouble. `ObjectChanged` (the object was rewritten) is not: it is caught."""

_OBJECT = {"bucket.$": "$.bucket", "key.$": "$.key", "version.$": "$.version"}
_ITEM = {**_OBJECT, "pin.$": "$.pin", "index.$": "$$.Map.Item.Value.index"}
_FAILED = {**_OBJECT, "pin.$": "$.pin", "index.$": "$.index", "failed.$": "$.error"}
"""The chunk worker's payload on the catch path: the item and the error caught."""
_LAMBDA_TRANSIENT = [e for e in RETRIED_ERRORS if e.startswith("Lambda.")]


def chunked_state_machine(
    *,
    worker_arn: str,
    fan_in_arn: str,
    dead_letter_queue_url: str,
    max_concurrency: int = 10,
    attempts: int = 6,
    first_interval: int = 2,
    distributed: bool = False,
) -> dict[str, Any]:
    """The state machine: Map the chunk worker over the chunks, dead-letter, fan in.

    Inline, the Map iterates the execution's `$.chunks`; `distributed`, its ItemReader
    reads `s3://$.ledger_bucket/$.items` (what `ChunkedHandlers.router` puts in the input).
    """
    processor: dict[str, Any] = {"Mode": "INLINE"}
    if distributed:
        processor = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    retry = {
        "IntervalSeconds": first_interval,
        "BackoffRate": 2.0,
        "MaxAttempts": attempts,
        "JitterStrategy": "FULL",
    }
    run_chunk = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": worker_arn, "Payload.$": "$"},
        "ResultSelector": {"receipt.$": "$.Payload"},
        "Retry": [{"ErrorEquals": RETRIED_ERRORS, **retry}],
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "DeadLetter"}],
        "End": True,
    }
    # The letter is the pipeline's own (its dead-letter sink, its format): the chunk
    # worker writes it; only if that fails too does the chunk's bare name reach the queue.
    dead_letter = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": worker_arn, "Payload": _FAILED},
        "ResultPath": None,
        "Retry": [{"ErrorEquals": _LAMBDA_TRANSIENT, **retry}],
        "Catch": [
            {
                "ErrorEquals": ["States.ALL"],
                "ResultPath": "$.letter_error",
                "Next": "DeadLetterQueue",
            }
        ],
        "Next": "ChunkDeadLettered",
    }
    dead_letter_queue = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage",
        "Parameters": {
            "QueueUrl": dead_letter_queue_url,
            "MessageBody": {
                "reason": "a chunk failed after its retries, and so did writing its dead letter",
                "bucket.$": "$.bucket",
                "key.$": "$.key",
                "version.$": "$.version",
                "chunk.$": "$.index",
                "error.$": "$.error.Error",
                "cause.$": "$.error.Cause",
                "letter_error.$": "$.letter_error.Error",
            },
        },
        "ResultPath": None,
        "Next": "ChunkDeadLettered",
    }
    chunks: dict[str, Any] = {
        "Type": "Map",
        "ItemsPath": "$.chunks",
        "ItemSelector": _ITEM,
        "MaxConcurrency": max_concurrency,
        "ItemProcessor": {
            "ProcessorConfig": processor,
            "StartAt": "RunChunk",
            "States": {
                "RunChunk": run_chunk,
                "DeadLetter": dead_letter,
                "DeadLetterQueue": dead_letter_queue,
                "ChunkDeadLettered": {"Type": "Pass", "End": True},
            },
        },
        # The receipts are in the ledger: the execution's state stays small.
        "ResultPath": None,
        "Next": "FanIn",
    }
    if distributed:
        del chunks["ItemsPath"]
        chunks["ItemReader"] = {
            "Resource": "arn:aws:states:::s3:getObject",
            "ReaderConfig": {"InputType": "JSON"},
            "Parameters": {"Bucket.$": "$.ledger_bucket", "Key.$": "$.items"},
        }
    return {
        "Comment": "onceflow: one large object in chunks, each exactly once, then fan-in",
        "StartAt": "Chunks",
        "States": {
            "Chunks": chunks,
            "FanIn": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": fan_in_arn, "Payload": _OBJECT},
                "ResultSelector": {"result.$": "$.Payload"},
                "ResultPath": "$.fan_in",
                "Retry": [
                    {
                        "ErrorEquals": RETRIED_ERRORS,
                        "IntervalSeconds": first_interval,
                        "BackoffRate": 2.0,
                        "MaxAttempts": attempts,
                    }
                ],
                "Next": "Complete?",
            },
            "Complete?": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": "$.fan_in.result.complete",
                        "BooleanEquals": True,
                        "Next": "Done",
                    }
                ],
                "Default": "ChunksMissing",
            },
            "Done": {"Type": "Succeed"},
            "ChunksMissing": {
                "Type": "Fail",
                "Error": "ChunksMissing",
                "Cause": "a chunk was dead-lettered: no manifest, no _SUCCESS; rerun fixes it",
            },
        },
    }


def state_machine_resource(
    *,
    worker: str,
    fan_in: str,
    dead_letter_queue_url: Any,
    dead_letter_queue_arn: Any,
    max_concurrency: int = 10,
    distributed: bool = False,
    name: Any = None,
    ledger_bucket_arn: Any = None,
) -> dict[str, Any]:
    """The `AWS::Serverless::StateMachine` of the chunked path, mapping function `worker`.

    `worker` and `fan_in` are logical ids of functions in the same template; the
    dead-letter queue is given by URL and ARN (created or existing, as the template
    decides). A Distributed Map starts child executions of its own state machine, so it
    is given a fixed `name` (default `<stack>-chunks`) its policy can name without a cycle,
    and reads the plan's items from the ledger bucket `ledger_bucket_arn` (default: any
    bucket, for a ledger kept in each landing bucket).
    """
    definition = chunked_state_machine(
        worker_arn="${ChunkWorkerArn}",
        fan_in_arn="${ChunkFanInArn}",
        dead_letter_queue_url="${DeadLetterQueueUrl}",
        max_concurrency=max_concurrency,
        distributed=distributed,
    )
    policies: list[Any] = [
        {"LambdaInvokePolicy": {"FunctionName": {"Ref": worker}}},
        {"LambdaInvokePolicy": {"FunctionName": {"Ref": fan_in}}},
        {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["sqs:SendMessage"],
                    "Resource": [dead_letter_queue_arn],
                }
            ]
        },
    ]
    properties: dict[str, Any] = {
        "Type": "STANDARD",
        "Definition": definition,
        "DefinitionSubstitutions": {
            "ChunkWorkerArn": {"Fn::GetAtt": [worker, "Arn"]},
            "ChunkFanInArn": {"Fn::GetAtt": [fan_in, "Arn"]},
            "DeadLetterQueueUrl": dead_letter_queue_url,
        },
        "Policies": policies,
    }
    if distributed:
        name = name or {"Fn::Sub": "${AWS::StackName}-chunks"}
        properties["Name"] = name
        where = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
        items: Any = {"Fn::Sub": "arn:${AWS::Partition}:s3:::*/*"}
        if ledger_bucket_arn is not None:
            items = {"Fn::Sub": ["${Bucket}/*", {"Bucket": ledger_bucket_arn}]}
        policies.append(
            {
                "Statement": [
                    {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [items]},
                    {
                        "Effect": "Allow",
                        "Action": ["states:StartExecution"],
                        "Resource": [
                            {"Fn::Sub": [where + ":stateMachine:${Name}", {"Name": name}]}
                        ],
                    },
                    {
                        "Effect": "Allow",
                        "Action": ["states:DescribeExecution", "states:StopExecution"],
                        "Resource": [{"Fn::Sub": [where + ":execution:${Name}/*", {"Name": name}]}],
                    },
                ]
            }
        )
    return {"Type": "AWS::Serverless::StateMachine", "Properties": properties}


def chunked_resources(
    *,
    handler_module: str,
    code_uri: str = ".",
    runtime: str = "python3.12",
    dead_letter_queue: str = "DeadLetterQueue",
    bucket: str | None = None,
    memory_size: int = 1024,
    timeout: int = 900,
    max_concurrency: int = 10,
    distributed: bool = False,
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAM resources of the chunked path, by logical id.

    `handler_module` exposes `router`, `chunk_worker` and `fan_in` (from
    `chunked_handlers`); `dead_letter_queue` is the logical id of an SQS queue in the same
    template; `bucket`, the logical id of the landing bucket, adds the router's S3 trigger.
    """
    env = {
        "Variables": {
            **(environment or {}),
            "ONCEFLOW_STATE_MACHINE_ARN": {"Ref": "ChunkStateMachine"},
        }
    }

    def function(handler: str, **extra: Any) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "CodeUri": code_uri,
            "Handler": f"{handler_module}.{handler}",
            "Runtime": runtime,
            "MemorySize": memory_size,
            "Timeout": timeout,
            **extra,
        }
        return {"Type": "AWS::Serverless::Function", "Properties": properties}

    read_write = (
        [{"S3CrudPolicy": {"BucketName": {"Ref": bucket}}}] if bucket else ["AmazonS3FullAccess"]
    )
    router_events: dict[str, Any] = {}
    if bucket:
        router_events = {
            "Landed": {
                "Type": "S3",
                "Properties": {"Bucket": {"Ref": bucket}, "Events": "s3:ObjectCreated:*"},
            }
        }
    router = function(
        "router",
        Environment=env,
        Policies=[
            *read_write,
            {
                "StepFunctionsExecutionPolicy": {
                    "StateMachineName": {"Fn::GetAtt": ["ChunkStateMachine", "Name"]}
                }
            },
        ],
        **({"Events": router_events} if router_events else {}),
    )
    return {
        "ChunkRouterFunction": router,
        "ChunkWorkerFunction": function("chunk_worker", Policies=read_write),
        "ChunkFanInFunction": function("fan_in", Policies=read_write),
        "ChunkStateMachine": state_machine_resource(
            worker="ChunkWorkerFunction",
            fan_in="ChunkFanInFunction",
            dead_letter_queue_url={"Ref": dead_letter_queue},
            dead_letter_queue_arn={"Fn::GetAtt": [dead_letter_queue, "Arn"]},
            max_concurrency=max_concurrency,
            distributed=distributed,
            ledger_bucket_arn={"Fn::GetAtt": [bucket, "Arn"]} if bucket else None,
        ),
    }
