"""The AWS SAM template for a Lambda handler, derived from its `Deployment`.

Every resource the deployment names becomes a parameter (leave it empty to create the
resource, give a name to reuse an existing one) and the environment variable the
handler reads. The role allows exactly what the commit mode and each sink's calls need
on exactly those resources. Records Lambda itself gives up on go to an on-failure queue
of their own, apart from the pipeline's dead letters.

An S3 pipeline deployed with `FunctionSettings(chunked=ChunkedSettings())` reads large
objects in chunks: its function is the router (`ChunkedHandlers.router`), and the
template adds the chunk-worker and fan-in functions (same role, environment and logs),
the ledger bucket, and the state machine (`state_machine.state_machine_resource`: a Map
over the chunk plan, retries with backoff, a catch path to the dead-letter queue) with
an alarm on its failed executions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from onceflow.deployment import Deployment, Resource, ResourceKind, TriggerKind
from onceflow.errors import ConfigurationError

__all__ = ["AWS_TRIGGERS", "SQS_RECEIVES", "ChunkedSettings", "FunctionSettings", "sam_template"]

AWS_TRIGGERS = (
    TriggerKind.KINESIS,
    TriggerKind.DYNAMODB,
    TriggerKind.SQS,
    TriggerKind.SQS_FIFO,
    TriggerKind.S3,
)
SQS_RECEIVES = 100
"""maxReceiveCount when the pipeline's max_deliveries decides (SQS allows 1 to 1,000)."""

ITERATOR_AGE_MS = 60_000
OLDEST_MESSAGE_SECONDS = 300
AWS_KINDS = {
    ResourceKind.DYNAMODB_TABLE,
    ResourceKind.SQS_QUEUE,
    ResourceKind.KINESIS_STREAM,
    ResourceKind.S3_BUCKET,
    ResourceKind.EVENTBRIDGE_BUS,
}
# The DynamoDB calls of each commit mode (TransactWriteItems is authorised per action).
STATE_ACTIONS = {
    "upsert": ["dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:UpdateItem"],
    "optimistic": [
        "dynamodb:BatchGetItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ],
    "fenced": [
        "dynamodb:BatchGetItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ],
}
TABLE_OUTPUT_ACTIONS = {
    "upsert": ["dynamodb:BatchWriteItem"],
    "optimistic": ["dynamodb:PutItem", "dynamodb:UpdateItem"],
    "fenced": ["dynamodb:PutItem", "dynamodb:UpdateItem"],
}


@dataclass(frozen=True)
class ChunkedSettings:
    """The chunked path of an S3 pipeline: the chunk worker and fan-in functions, the Map."""

    worker_handler: str | None = None
    """Default: `chunk_worker` in the router's module (what `chunked_handlers` gives)."""
    fan_in_handler: str | None = None
    """Default: `fan_in` in the router's module."""
    timeout: int = 900
    """The chunk worker's and fan-in's timeout, seconds (Lambda allows up to 900)."""
    memory: int = 2048
    max_concurrency: int = 10
    """Chunks run at once by the Map state."""
    distributed: bool = False
    """A Distributed Map (child executions): for plans of thousands of chunks."""

    def handlers(self, router: str) -> tuple[str, str]:
        """The chunk worker's and the fan-in's Handler strings, next to `router`'s."""
        module = router.rpartition(".")[0]
        if not module:
            raise ConfigurationError(
                f"the router's Handler {router!r} has no module: give MODULE.router, or "
                "ChunkedSettings(worker_handler=..., fan_in_handler=...)"
            )
        return (
            self.worker_handler or f"{module}.chunk_worker",
            self.fan_in_handler or f"{module}.fan_in",
        )


@dataclass(frozen=True)
class FunctionSettings:
    """The function's own settings, which the pipeline does not decide."""

    handler: str
    code_uri: str = "."
    runtime: str = "python3.12"
    architecture: str = "arm64"
    timeout: int = 120
    memory: int = 1024
    chunked: ChunkedSettings | None = None
    """S3 only: `handler` is the chunked router, and the chunked path is deployed with it."""


def _arn(name: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [name, "Arn"]}


def _logical(env: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", env) if part)


@dataclass
class _Placed:
    """One resource of the template: created (its condition holds) or given by name."""

    resource: Resource
    logical: str
    parameter: str
    """The parameter naming an existing resource; empty when the template always creates it."""
    fixed: Any = None
    """The name, when the template fixes it (a reference would be circular)."""

    @property
    def create(self) -> str:
        return f"Create{self.logical}"

    def pick(self, created: Any, existing: Any) -> Any:
        return {"Fn::If": [self.create, created, existing]} if self.parameter else created

    def value(self) -> Any:
        """What the handler's environment variable holds: a name (SQS: the queue URL)."""
        kind, p = self.resource.kind, self.parameter
        if self.fixed is not None:
            return self.fixed
        if kind is ResourceKind.SQS_QUEUE:
            url = f"https://sqs.${{AWS::Region}}.${{AWS::URLSuffix}}/${{AWS::AccountId}}/${{{p}}}"
            return self.pick({"Ref": self.logical}, {"Fn::Sub": url})
        if kind is ResourceKind.DYNAMODB_TABLE and self.logical == "SourceTable":
            table = {"Fn::Select": [1, {"Fn::Split": ["/", {"Ref": p}]}]}
            return self.pick({"Ref": self.logical}, table)
        return self.pick({"Ref": self.logical}, {"Ref": p})

    def arn(self) -> Any:
        kind, p = self.resource.kind, self.parameter
        region = "arn:${AWS::Partition}:%s:${AWS::Region}:${AWS::AccountId}:%s"
        existing: Any
        if kind is ResourceKind.SQS_QUEUE:
            existing = {"Fn::Sub": region % ("sqs", f"${{{p}}}")}
        elif kind is ResourceKind.DYNAMODB_TABLE:
            existing = {"Fn::Sub": region % ("dynamodb", f"table/${{{p}}}")}
        elif kind is ResourceKind.KINESIS_STREAM:
            existing = {"Fn::Sub": region % ("kinesis", f"stream/${{{p}}}")}
        elif kind is ResourceKind.EVENTBRIDGE_BUS:
            existing = {"Fn::Sub": region % ("events", f"event-bus/${{{p}}}")}
        else:  # S3: the ARN holds only the name
            return {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Name}", {"Name": self.value()}]}
        return self.pick(_arn(self.logical), existing)


class _Builder:
    def __init__(self, deployment: Deployment, function: FunctionSettings) -> None:
        self.d = deployment
        self.f = function
        self.parameters: dict[str, Any] = {}
        self.conditions: dict[str, Any] = {}
        self.resources: dict[str, Any] = {}
        self.statements: list[dict[str, Any]] = []
        self.outputs: dict[str, Any] = {}
        self.placed: dict[str, _Placed] = {}

    # -- resources ---------------------------------------------------------------------------

    def place(self, resource: Resource, logical: str, description: str) -> _Placed:
        if resource.kind not in AWS_KINDS:
            raise ConfigurationError(
                f"{resource.env} names a {resource.kind}, which is not an AWS resource: "
                "declare an AWS kind (dynamodb-table, sqs-queue, kinesis-stream, s3-bucket, "
                "eventbridge-bus) for a Lambda function"
            )
        if resource.env in self.placed:
            return self.placed[resource.env]
        parameter = f"{logical}StreamArn" if logical == "SourceTable" else f"{logical}Name"
        placed = _Placed(resource, logical, parameter)
        self.placed[resource.env] = placed
        given = "the stream ARN of" if logical == "SourceTable" else "the name of"
        self.parameters[parameter] = {
            "Type": "String",
            "Default": "",
            "Description": f"{description}: {given} an existing one, or empty to create it "
            f"(the function reads it from {resource.env})",
        }
        self.conditions[placed.create] = {"Fn::Equals": [{"Ref": parameter}, ""]}
        self.outputs[f"{logical}Value"] = {
            "Description": f"{resource.env}: {description}",
            "Value": placed.value(),
        }
        return placed

    def add(self, placed: _Placed, definition: dict[str, Any]) -> None:
        self.resources[placed.logical] = {"Condition": placed.create, **definition}

    def create_resource(self, placed: _Placed, *, retain: bool, state: bool = False) -> None:
        kind = placed.resource.kind
        keep = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"} if retain else {}
        if kind is ResourceKind.DYNAMODB_TABLE:
            props: dict[str, Any] = {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "SSESpecification": {"SSEEnabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            }
            if state:
                props["TimeToLiveSpecification"] = {
                    "AttributeName": "expires_at",
                    "Enabled": True,
                }
            if placed.logical == "SourceTable":
                props["StreamSpecification"] = {"StreamViewType": "NEW_AND_OLD_IMAGES"}
            self.add(placed, {"Type": "AWS::DynamoDB::Table", **keep, "Properties": props})
        elif kind is ResourceKind.SQS_QUEUE:
            queue: dict[str, Any] = {
                "MessageRetentionPeriod": 1_209_600,
                "SqsManagedSseEnabled": True,
            }
            if self.d.trigger.kind is TriggerKind.SQS_FIFO and placed.logical == "SourceQueue":
                queue |= {"FifoQueue": True, "ContentBasedDeduplication": False}
            self.add(placed, {"Type": "AWS::SQS::Queue", **keep, "Properties": queue})
        elif kind is ResourceKind.KINESIS_STREAM:
            stream = {
                "StreamModeDetails": {"StreamMode": "ON_DEMAND"},
                "StreamEncryption": {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"},
            }
            self.add(placed, {"Type": "AWS::Kinesis::Stream", **keep, "Properties": stream})
        elif kind is ResourceKind.S3_BUCKET:
            self.add(placed, {"Type": "AWS::S3::Bucket", **keep, "Properties": _bucket()})
        else:
            bus = {"Name": {"Fn::Sub": f"${{AWS::StackName}}-{placed.logical}"}}
            self.add(placed, {"Type": "AWS::Events::EventBus", "Properties": bus})

    def allow(self, sid: str, actions: list[str], resources: list[Any]) -> None:
        self.statements.append(
            {"Sid": sid, "Effect": "Allow", "Action": sorted(actions), "Resource": resources}
        )

    # -- the parts -----------------------------------------------------------------------------

    def state(self) -> None:
        state = self.d.state
        if state.kind is not ResourceKind.DYNAMODB_TABLE:
            raise ConfigurationError(
                f"the state {state.env} is a {state.kind}: a Lambda pipeline keeps its state "
                "in a DynamoDB table (Resource(ResourceKind.DYNAMODB_TABLE, ...))"
            )
        placed = self.place(state, "StateTable", "the idempotency state table")
        self.create_resource(placed, retain=True, state=True)
        actions = list(STATE_ACTIONS[self.d.commit])
        outputs_here = any(o.env == state.env for o in self.d.outputs)
        if outputs_here:
            actions += TABLE_OUTPUT_ACTIONS[self.d.commit]
        self.allow("State", sorted(set(actions)), [placed.arn()])

    def sink(self, resource: Resource, role: str, logical: str) -> None:
        if resource.env == self.d.state.env:
            return  # the state table's statement covers it
        placed = self.place(resource, logical, role)
        self.create_resource(placed, retain=resource.kind is not ResourceKind.EVENTBRIDGE_BUS)
        kind = resource.kind
        sid = "".join(ch for ch in logical if ch.isalnum())
        if kind is ResourceKind.DYNAMODB_TABLE:
            self.allow(sid, TABLE_OUTPUT_ACTIONS[self.d.commit], [placed.arn()])
        elif kind is ResourceKind.SQS_QUEUE:
            self.allow(sid, ["sqs:SendMessage"], [placed.arn()])
        elif kind is ResourceKind.KINESIS_STREAM:
            self.allow(sid, ["kinesis:PutRecords", "kinesis:PutRecord"], [placed.arn()])
        elif kind is ResourceKind.S3_BUCKET:
            objects = {"Fn::Sub": ["${Bucket}/*", {"Bucket": placed.arn()}]}
            self.allow(f"{sid}Objects", ["s3:GetObject", "s3:PutObject"], [objects])
            self.allow(f"{sid}List", ["s3:ListBucket"], [placed.arn()])
        else:
            self.allow(sid, ["events:PutEvents"], [placed.arn()])

    def on_failure_queue(self) -> None:
        """Where Lambda puts what it gives up on: apart from the pipeline's dead letters."""
        self.resources["OnFailureQueue"] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {"MessageRetentionPeriod": 1_209_600, "SqsManagedSseEnabled": True},
        }
        self.allow("OnFailure", ["sqs:SendMessage"], [_arn("OnFailureQueue")])
        self.outputs["OnFailureQueueUrl"] = {"Value": {"Ref": "OnFailureQueue"}}
        self.depth_alarm("OnFailureQueueDepth", {"Fn::GetAtt": ["OnFailureQueue", "QueueName"]})

    def trigger(self) -> dict[str, Any]:
        t = self.d.trigger
        if t.kind not in AWS_TRIGGERS:
            raise ConfigurationError(
                f"a {t.kind} trigger is not a Lambda trigger: declare one of "
                f"{', '.join(AWS_TRIGGERS)}"
            )
        if t.kind in {TriggerKind.KINESIS, TriggerKind.DYNAMODB}:
            logical = "SourceStream" if t.kind is TriggerKind.KINESIS else "SourceTable"
            placed = self.place(t.source, logical, "the stream the function reads")
            self.create_resource(placed, retain=True)
            if t.kind is TriggerKind.KINESIS:
                stream_arn = placed.arn()
                actions = [
                    "kinesis:DescribeStream",
                    "kinesis:DescribeStreamSummary",
                    "kinesis:GetRecords",
                    "kinesis:GetShardIterator",
                    "kinesis:ListShards",
                    "kinesis:SubscribeToShard",
                ]
                event_type = "Kinesis"
            else:
                stream_arn = placed.pick(
                    {"Fn::GetAtt": ["SourceTable", "StreamArn"]}, {"Ref": placed.parameter}
                )
                actions = [
                    "dynamodb:DescribeStream",
                    "dynamodb:GetRecords",
                    "dynamodb:GetShardIterator",
                    "dynamodb:ListStreams",
                ]
                event_type = "DynamoDB"
            self.allow("ReadStream", actions, [stream_arn])
            self.on_failure_queue()
            self.alarm(
                "IteratorAgeAlarm",
                "the oldest record waits: the function falls behind or an outage holds a shard",
                "AWS/Lambda",
                "IteratorAge",
                [{"Name": "FunctionName", "Value": {"Ref": "Processor"}}],
                ITERATOR_AGE_MS,
                statistic="Maximum",
            )
            return {
                "Type": event_type,
                "Properties": {
                    "Stream": stream_arn,
                    "StartingPosition": "TRIM_HORIZON",
                    "BatchSize": min(t.batch_size, 10_000),
                    "MaximumBatchingWindowInSeconds": t.batching_window,
                    "BisectBatchOnFunctionError": True,
                    "MaximumRetryAttempts": t.max_retries,
                    "MaximumRecordAgeInSeconds": t.max_record_age,
                    "ParallelizationFactor": t.parallelization_factor,
                    "FunctionResponseTypes": ["ReportBatchItemFailures"],
                    "DestinationConfig": {
                        "OnFailure": {"Type": "SQS", "Destination": _arn("OnFailureQueue")}
                    },
                },
            }
        if t.kind in {TriggerKind.SQS, TriggerKind.SQS_FIFO}:
            placed = self.place(t.source, "SourceQueue", "the queue the function reads")
            self.create_resource(placed, retain=False)
            fifo = t.kind is TriggerKind.SQS_FIFO
            # The source queue's own redrive target: what SQS gives up on, apart from the
            # pipeline's dead letters.
            dead: dict[str, Any] = {
                "MessageRetentionPeriod": 1_209_600,
                "SqsManagedSseEnabled": True,
            }
            if fifo:
                dead["FifoQueue"] = True
            self.resources["OnFailureQueue"] = {
                "Type": "AWS::SQS::Queue",
                "Condition": placed.create,
                "Properties": dead,
            }
            source = self.resources["SourceQueue"]["Properties"]
            # Longer than the function may run, so a message is not redelivered mid-batch.
            source["VisibilityTimeout"] = max(900, 6 * self.f.timeout)
            source["RedrivePolicy"] = {
                "deadLetterTargetArn": _arn("OnFailureQueue"),
                # Receives the open circuit hands back count too: leave room for an outage.
                "maxReceiveCount": SQS_RECEIVES if t.max_retries < 0 else t.max_retries + 1,
            }
            self.outputs["OnFailureQueueUrl"] = {
                "Condition": placed.create,
                "Value": {"Ref": "OnFailureQueue"},
            }
            self.depth_alarm(
                "OnFailureQueueDepth",
                {"Fn::GetAtt": ["OnFailureQueue", "QueueName"]},
                condition=placed.create,
            )
            self.allow(
                "ReadQueue",
                [
                    "sqs:ChangeMessageVisibility",
                    "sqs:DeleteMessage",
                    "sqs:GetQueueAttributes",
                    "sqs:ReceiveMessage",
                ],
                [placed.arn()],
            )
            queue_name = placed.pick(
                {"Fn::GetAtt": ["SourceQueue", "QueueName"]}, {"Ref": placed.parameter}
            )
            self.alarm(
                "OldestMessageAlarm",
                "the oldest message waits: the function falls behind or an outage holds it",
                "AWS/SQS",
                "ApproximateAgeOfOldestMessage",
                [{"Name": "QueueName", "Value": queue_name}],
                OLDEST_MESSAGE_SECONDS,
                statistic="Maximum",
            )
            return {
                "Type": "SQS",
                "Properties": {
                    "Queue": placed.arn(),
                    "BatchSize": min(t.batch_size, 10),
                    "FunctionResponseTypes": ["ReportBatchItemFailures"],
                },
            }
        # S3: SAM's S3 event needs the bucket in the template, so it is always created; its
        # name is fixed, not referenced, in the policy (a reference would be circular).
        name = {"Fn::Sub": "${AWS::StackName}-${AWS::AccountId}-input"}
        placed = _Placed(t.source, "SourceBucket", "", fixed=name)
        self.placed[t.source.env] = placed
        self.resources["SourceBucket"] = {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {"BucketName": name, **_bucket()},
        }
        self.allow(
            "ReadObjects",
            ["s3:GetObject", "s3:GetObjectVersion"],
            [{"Fn::Sub": "arn:${AWS::Partition}:s3:::${AWS::StackName}-${AWS::AccountId}-input/*"}],
        )
        self.outputs["SourceBucketValue"] = {"Value": name}
        self.on_failure_queue()
        return {
            "Type": "S3",
            "Properties": {"Bucket": {"Ref": "SourceBucket"}, "Events": "s3:ObjectCreated:*"},
        }

    # -- alarms ----------------------------------------------------------------------------------

    def alarm(
        self,
        logical: str,
        description: str,
        namespace: str,
        metric: Any,
        dimensions: list[dict[str, Any]],
        threshold: float,
        *,
        statistic: str = "Sum",
        condition: str | None = None,
    ) -> None:
        alarm: dict[str, Any] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmDescription": description,
                "Namespace": namespace,
                "MetricName": metric,
                "Dimensions": dimensions,
                "Statistic": statistic,
                "Period": 60,
                "EvaluationPeriods": 5,
                "DatapointsToAlarm": 3 if statistic == "Maximum" else 1,
                "Threshold": threshold,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
                "AlarmActions": {
                    "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
                },
            },
        }
        if not dimensions:
            del alarm["Properties"]["Dimensions"]
        if condition:
            alarm["Condition"] = condition
        self.resources[logical] = alarm

    def depth_alarm(self, logical: str, queue_name: Any, condition: str | None = None) -> None:
        self.alarm(
            logical,
            "messages wait in a dead-letter queue: look at their reasons, then replay them",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            [{"Name": "QueueName", "Value": queue_name}],
            0,
            statistic="Maximum",
            condition=condition,
        )

    # -- large objects in chunks ---------------------------------------------------------------

    def chunked_parts(self) -> None:
        """The ledger bucket, its role statements, and where failed chunks are dead-lettered."""
        chunked = self.f.chunked
        if chunked is None:
            return
        if self.d.trigger.kind is not TriggerKind.S3:
            raise ConfigurationError(
                f"chunked= deploys the large-object path of an S3 trigger, not of a "
                f"{self.d.trigger.kind} trigger: drop chunked= or read an S3 bucket"
            )
        chunked.handlers(self.f.handler)  # refuses a Handler without a module
        self.resources["ChunkLedgerBucket"] = {
            "Type": "AWS::S3::Bucket",
            # Receipts keep a rerun from redoing committed chunks: kept like the state table.
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": _bucket(),
        }
        ledger = _arn("ChunkLedgerBucket")
        self.allow(
            "ChunkLedgerObjects",
            ["s3:GetObject", "s3:PutObject"],
            [{"Fn::Sub": ["${Bucket}/*", {"Bucket": ledger}]}],
        )
        self.allow("ChunkLedgerList", ["s3:ListBucket"], [ledger])
        # HEAD of a deleted object answers 404 (not 403) only with ListBucket.
        source = "arn:${AWS::Partition}:s3:::${AWS::StackName}-${AWS::AccountId}-input"
        self.allow("ListSource", ["s3:ListBucket"], [{"Fn::Sub": source}])
        self.outputs["ChunkLedgerBucketValue"] = {"Value": {"Ref": "ChunkLedgerBucket"}}

    def chunk_dead_letters(self) -> tuple[Any, Any]:
        """(URL, ARN) of the queue a chunk failing all its attempts is sent to."""
        letters = self.d.dead_letters
        if letters is not None and letters.kind is ResourceKind.SQS_QUEUE:
            placed = self.placed[letters.env]
            return placed.value(), placed.arn()
        # No dead-letter queue of the pipeline's: the queue Lambda's own failures go to.
        return {"Ref": "OnFailureQueue"}, _arn("OnFailureQueue")

    def chunked_functions(self, function: dict[str, Any]) -> None:
        """The chunk worker, the fan-in and the state machine, beside the router `function`."""
        chunked = self.f.chunked
        if chunked is None:
            return
        from onceflow.adapters.aws.chunks import LEDGER_BUCKET_ENV, STATE_MACHINE_ENV
        from onceflow.adapters.aws.state_machine import state_machine_resource

        worker_handler, fan_in_handler = chunked.handlers(self.f.handler)
        variables = function["Environment"]["Variables"]
        variables[LEDGER_BUCKET_ENV] = {"Ref": "ChunkLedgerBucket"}
        for logical, handler, name in (
            ("ChunkWorkerFunction", worker_handler, "chunk-worker"),
            ("ChunkFanInFunction", fan_in_handler, "chunk-fan-in"),
        ):
            properties = {
                **function,
                "FunctionName": {"Fn::Sub": f"${{AWS::StackName}}-{name}"},
                "Handler": handler,
                "Timeout": chunked.timeout,
                "MemorySize": chunked.memory,
                "Environment": {"Variables": dict(variables)},
            }
            # Step Functions invokes them synchronously: no trigger, no async destination.
            properties.pop("Events", None)
            properties.pop("EventInvokeConfig", None)
            self.resources[logical] = {
                "Type": "AWS::Serverless::Function",
                "Metadata": {"BuildMethod": self.f.runtime},
                "Properties": properties,
            }
        url, arn = self.chunk_dead_letters()
        self.resources["ChunkStateMachine"] = state_machine_resource(
            worker="ChunkWorkerFunction",
            fan_in="ChunkFanInFunction",
            dead_letter_queue_url=url,
            dead_letter_queue_arn=arn,
            max_concurrency=chunked.max_concurrency,
            distributed=chunked.distributed,
            ledger_bucket_arn=_arn("ChunkLedgerBucket"),
        )
        # Only the router starts executions; a policy of its own, since the state machine
        # names the functions that use the role (in the role itself it would be a cycle).
        self.resources["ChunkStartPolicy"] = {
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "PolicyName": "onceflow-start-chunked-executions",
                "Roles": [{"Ref": "FunctionRole"}],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": ["states:StartExecution"],
                            "Resource": [{"Ref": "ChunkStateMachine"}],
                        }
                    ],
                },
            },
        }
        variables[STATE_MACHINE_ENV] = {"Ref": "ChunkStateMachine"}
        self.alarm(
            "ChunkExecutionsFailedAlarm",
            "a large object's run failed: a chunk was dead-lettered, no manifest, no _SUCCESS",
            "AWS/States",
            "ExecutionsFailed",
            [{"Name": "StateMachineArn", "Value": {"Ref": "ChunkStateMachine"}}],
            0,
        )
        self.outputs["ChunkStateMachineArn"] = {"Value": {"Ref": "ChunkStateMachine"}}

    # -- the whole -------------------------------------------------------------------------------

    def operations(self) -> None:
        """The scheduled reconciliation and canary functions, and their alarms."""
        from onceflow.adapters.aws.operations_template import operations_resources

        d = self.d
        state = self.placed[d.state.env]
        table = next(
            (self.placed[o.env] for o in d.outputs if o.kind is ResourceKind.DYNAMODB_TABLE),
            None,
        )
        queue = None
        if d.trigger.kind in (TriggerKind.SQS, TriggerKind.SQS_FIFO):
            queue = self.placed[d.trigger.source.env]
        self.resources.update(
            operations_resources(
                d,
                state_table=state.value(),
                sink_table=None if table is None else table.value(),
                source_queue=None
                if queue is None
                else queue.pick(
                    {"Fn::GetAtt": [queue.logical, "QueueName"]}, {"Ref": queue.parameter}
                ),
                source_queue_url=None if queue is None else queue.value(),
                # The processor's code and runtime: `sam build` builds the functions once.
                code_uri=self.f.code_uri,
                runtime=self.f.runtime,
            )
        )

    def build(self) -> dict[str, Any]:
        d, f = self.d, self.f
        self.parameters["AlarmTopicArn"] = {
            "Type": "String",
            "Default": "",
            "Description": "an SNS topic for the alarms, or empty for none",
        }
        self.conditions["HasAlarmTopic"] = {
            "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
        }
        event = self.trigger()
        self.chunked_parts()
        self.state()
        for n, output in enumerate(d.outputs):
            self.sink(output, "an output the pipeline writes", f"Output{n + 1}")
        if d.dead_letters is not None:
            self.sink(d.dead_letters, "the pipeline's dead letters", "DeadLetters")
            placed = self.placed[d.dead_letters.env]
            if placed.resource.kind is ResourceKind.SQS_QUEUE and placed.logical != "StateTable":
                name = placed.pick(
                    {"Fn::GetAtt": [placed.logical, "QueueName"]}, {"Ref": placed.parameter}
                )
                self.depth_alarm("DeadLetterDepth", name)
        log_group = {"Fn::Sub": "/aws/lambda/${AWS::StackName}-processor"}
        self.resources["LogGroup"] = {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {"LogGroupName": log_group, "RetentionInDays": 30},
        }
        self.allow(
            "Logs",
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [{"Fn::GetAtt": ["LogGroup", "Arn"]}],
        )
        # The runner logs one line per dead-lettered event; this counts them.
        metric = {"Fn::Sub": "${AWS::StackName}-dead-lettered"}
        self.resources["DeadLetteredMetric"] = {
            "Type": "AWS::Logs::MetricFilter",
            "Properties": {
                "LogGroupName": {"Ref": "LogGroup"},
                "FilterPattern": '{ $.message = "*dead-lettering*" }',
                "MetricTransformations": [
                    {
                        "MetricNamespace": "onceflow",
                        "MetricName": metric,
                        "MetricValue": "1",
                        "DefaultValue": 0,
                    }
                ],
            },
        }
        self.alarm(
            "DeadLetteredAlarm",
            "the pipeline dead-lettered events: permanent errors or poison pills",
            "onceflow",
            metric,
            [],
            0,
        )
        self.alarm(
            "ErrorsAlarm",
            "invocations failed: an outage, a whole SQS batch handed back, or a crash",
            "AWS/Lambda",
            "Errors",
            [{"Name": "FunctionName", "Value": {"Ref": "Processor"}}],
            0,
        )
        self.operations()
        self.resources["FunctionRole"] = {
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
                # X-Ray accepts segments only for every resource: AWS's managed policy.
                "ManagedPolicyArns": [
                    {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"}
                ],
                "Policies": [
                    {
                        "PolicyName": "onceflow-least-privilege",
                        "PolicyDocument": {"Version": "2012-10-17", "Statement": self.statements},
                    }
                ],
            },
        }
        function: dict[str, Any] = {
            "FunctionName": {"Fn::Sub": "${AWS::StackName}-processor"},
            "Handler": f.handler,
            "Runtime": f.runtime,
            "CodeUri": f.code_uri,
            "MemorySize": f.memory,
            "Timeout": f.timeout,
            "Architectures": [f.architecture],
            "Role": _arn("FunctionRole"),
            "Tracing": "Active",
            "LoggingConfig": {
                "LogFormat": "JSON",
                "LogGroup": {"Ref": "LogGroup"},
                "ApplicationLogLevel": "INFO",
                "SystemLogLevel": "WARN",
            },
            "Environment": {
                "Variables": {env: placed.value() for env, placed in self.placed.items()}
            },
            "Events": {"Trigger": event},
        }
        if d.trigger.kind is TriggerKind.S3:
            function["EventInvokeConfig"] = {
                "MaximumRetryAttempts": 2
                if d.trigger.max_retries < 0
                else min(d.trigger.max_retries, 2),
                "MaximumEventAgeInSeconds": 21_600
                if d.trigger.max_record_age < 0
                else max(60, min(d.trigger.max_record_age, 21_600)),
                "DestinationConfig": {
                    "OnFailure": {"Type": "SQS", "Destination": _arn("OnFailureQueue")}
                },
            }
        self.chunked_functions(function)
        self.resources["Processor"] = {
            "Type": "AWS::Serverless::Function",
            # `sam build` installs CodeUri's requirements.txt (onceflow among them).
            "Metadata": {"BuildMethod": f.runtime},
            "Properties": function,
        }
        if f.chunked is not None:
            self.resources["Processor"]["DependsOn"] = ["ChunkStartPolicy"]
        self.outputs["FunctionArn"] = {"Value": _arn("Processor")}
        return {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Transform": "AWS::Serverless-2016-10-31",
            "Description": f"onceflow pipeline {d.name}: {f.handler} ({d.trigger.kind} trigger, "
            f"{d.commit} commits)",
            "Parameters": self.parameters,
            "Conditions": self.conditions,
            "Resources": self.resources,
            "Outputs": self.outputs,
        }


def sam_template(deployment: Deployment, function: FunctionSettings) -> dict[str, Any]:
    """The SAM template (as a dict) for a function deployed as `deployment` declares."""
    return _Builder(deployment, function).build()


def _bucket() -> dict[str, Any]:
    """A bucket's properties: versioned, encrypted, never public."""
    return {
        "VersioningConfiguration": {"Status": "Enabled"},
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            ]
        },
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        },
    }
