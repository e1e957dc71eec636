"""The Amazon States Language definition and SAM resources of the chunked path.

`chunked_state_machine` is the definition: a Map over the execution's `chunks` (inline,
or a Distributed Map for plans of thousands of chunks) running the chunk worker with
retries and exponential backoff; a chunk that still fails is caught and its error sent
to the dead-letter queue (the chunk's name and error, never its records); then the
fan-in, and a Choice that fails the execution when a chunk is missing.
`chunked_resources` is what a SAM template needs for it: the three functions, the state
machine with its substitutions and policies. The template generator
(`onceflow aws template`) merges them into its `Resources`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RETRIED_ERRORS", "chunked_resources", "chunked_state_machine"]

RETRIED_ERRORS = [
    "ChunkBusy",
    "ChunkIncomplete",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
"""Errors worth another attempt: a chunk leased elsewhere, an outage, Lambda's own trouble."""

_OBJECT = {"bucket.$": "$.bucket", "key.$": "$.key", "version.$": "$.version"}


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
    """The state machine: Map the chunk worker over `$.chunks`, dead-letter, fan in."""
    processor: dict[str, Any] = {"Mode": "INLINE"}
    if distributed:
        processor = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    run_chunk = {
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": worker_arn, "Payload.$": "$"},
        "ResultSelector": {"receipt.$": "$.Payload"},
        "Retry": [
            {
                "ErrorEquals": RETRIED_ERRORS,
                "IntervalSeconds": first_interval,
                "BackoffRate": 2.0,
                "MaxAttempts": attempts,
                "JitterStrategy": "FULL",
            }
        ],
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "DeadLetter"}],
        "End": True,
    }
    dead_letter = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage",
        "Parameters": {
            "QueueUrl": dead_letter_queue_url,
            "MessageBody": {
                "reason": "a chunk failed after its retries",
                "bucket.$": "$.bucket",
                "key.$": "$.key",
                "version.$": "$.version",
                "chunk.$": "$.index",
                "error.$": "$.error.Error",
                "cause.$": "$.error.Cause",
            },
        },
        "ResultPath": None,
        "Next": "ChunkDeadLettered",
    }
    return {
        "Comment": "onceflow: one large object in chunks, each exactly once, then fan-in",
        "StartAt": "Chunks",
        "States": {
            "Chunks": {
                "Type": "Map",
                "ItemsPath": "$.chunks",
                "ItemSelector": {**_OBJECT, "index.$": "$$.Map.Item.Value.index"},
                "MaxConcurrency": max_concurrency,
                "ItemProcessor": {
                    "ProcessorConfig": processor,
                    "StartAt": "RunChunk",
                    "States": {
                        "RunChunk": run_chunk,
                        "DeadLetter": dead_letter,
                        "ChunkDeadLettered": {"Type": "Pass", "End": True},
                    },
                },
                # The receipts are in the ledger: the execution's state stays small.
                "ResultPath": None,
                "Next": "FanIn",
            },
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
    definition = chunked_state_machine(
        worker_arn="${ChunkWorkerArn}",
        fan_in_arn="${ChunkFanInArn}",
        dead_letter_queue_url="${DeadLetterQueueUrl}",
        max_concurrency=max_concurrency,
        distributed=distributed,
    )
    machine_policies: list[Any] = [
        {"LambdaInvokePolicy": {"FunctionName": {"Ref": "ChunkWorkerFunction"}}},
        {"LambdaInvokePolicy": {"FunctionName": {"Ref": "ChunkFanInFunction"}}},
        {"SQSSendMessagePolicy": {"QueueName": {"Fn::GetAtt": [dead_letter_queue, "QueueName"]}}},
    ]
    if distributed:
        machine_policies.append({"StepFunctionsExecutionPolicy": {"StateMachineName": "*"}})
    return {
        "ChunkRouterFunction": router,
        "ChunkWorkerFunction": function("chunk_worker", Policies=read_write),
        "ChunkFanInFunction": function("fan_in", Policies=read_write),
        "ChunkStateMachine": {
            "Type": "AWS::Serverless::StateMachine",
            "Properties": {
                "Definition": definition,
                "DefinitionSubstitutions": {
                    "ChunkWorkerArn": {"Fn::GetAtt": ["ChunkWorkerFunction", "Arn"]},
                    "ChunkFanInArn": {"Fn::GetAtt": ["ChunkFanInFunction", "Arn"]},
                    "DeadLetterQueueUrl": {"Ref": dead_letter_queue},
                },
                "Policies": machine_policies,
            },
        },
    }
