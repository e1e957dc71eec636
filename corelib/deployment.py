"""What a deployed pipeline needs, declared once: its trigger, state, outputs and dead letters.

A Lambda handler or a function app carries a `Deployment`. At run time the pipeline
factory reads each resource's name from the environment (`Resource.name()`); the
infrastructure generators (`onceflow aws template`, `onceflow azure scaffold`) read the
same object to create those resources and set those variables, so the infrastructure
cannot disagree with the code:

    DEPLOYMENT = Deployment(
        Trigger(TriggerKind.KINESIS, Resource(ResourceKind.KINESIS_STREAM, "ORDERS_STREAM")),
        state=Resource(ResourceKind.DYNAMODB_TABLE, "ONCEFLOW_STATE_TABLE"),
        outputs=(Resource(ResourceKind.DYNAMODB_TABLE, "ONCEFLOW_OUTPUT_TABLE"),),
        dead_letters=Resource(ResourceKind.SQS_QUEUE, "ONCEFLOW_DEAD_LETTERS"),
        commit="upsert",
    )

    def build() -> Pipeline:
        store, sink = dynamodb_pipeline_parts(
            DEPLOYMENT.state.name(), DEPLOYMENT.outputs[0].name(), mode=DynamoDBMode.UPSERT
        )
        return Pipeline(Orders(), sink, store, SQSSink(DEPLOYMENT.dead_letters.name()))

    handler = lambda_handler(build, deployment=DEPLOYMENT)

Plain data, no cloud SDK: the core describes, the adapters' generators write.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from onceflow.errors import ConfigurationError

__all__ = ["CommitMode", "Deployment", "Resource", "ResourceKind", "Trigger", "TriggerKind"]

CommitMode = Literal["fenced", "optimistic", "upsert"]
"""How the state store commits (the values of `onceflow.adapters.aws.DynamoDBMode`)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ResourceKind(enum.StrEnum):
    """A kind of resource a pipeline reads, keeps state in, or writes to."""

    DYNAMODB_TABLE = "dynamodb-table"
    SQS_QUEUE = "sqs-queue"
    KINESIS_STREAM = "kinesis-stream"
    S3_BUCKET = "s3-bucket"
    EVENTBRIDGE_BUS = "eventbridge-bus"
    AZURE_TABLE = "azure-table"
    STORAGE_QUEUE = "storage-queue"
    BLOB_CONTAINER = "blob-container"
    EVENT_HUB = "event-hub"
    COSMOS_CONTAINER = "cosmos-container"


class TriggerKind(enum.StrEnum):
    """What invokes the function; the names `onceflow aws template --source` takes."""

    KINESIS = "kinesis"
    DYNAMODB = "dynamodb"
    SQS = "sqs"
    SQS_FIFO = "sqs-fifo"
    S3 = "s3"
    EVENT_HUB = "eventhub"
    BLOB = "blob"
    QUEUE = "queue"


_TRIGGER_SOURCES: dict[TriggerKind, ResourceKind] = {
    TriggerKind.KINESIS: ResourceKind.KINESIS_STREAM,
    TriggerKind.DYNAMODB: ResourceKind.DYNAMODB_TABLE,
    TriggerKind.SQS: ResourceKind.SQS_QUEUE,
    TriggerKind.SQS_FIFO: ResourceKind.SQS_QUEUE,
    TriggerKind.S3: ResourceKind.S3_BUCKET,
    TriggerKind.EVENT_HUB: ResourceKind.EVENT_HUB,
    TriggerKind.BLOB: ResourceKind.BLOB_CONTAINER,
    TriggerKind.QUEUE: ResourceKind.STORAGE_QUEUE,
}


@dataclass(frozen=True)
class Resource:
    """A resource known by an environment variable holding its name (`default` if unset)."""

    kind: ResourceKind
    env: str
    """The environment variable the runtime reads the name (SQS: the queue URL) from."""
    default: str | None = None
    """The name when the variable is unset: local runs, tests, or a fixed name."""
    connection: str | None = None
    """Azure: the app setting holding the connection string (None: AzureWebJobsStorage)."""

    def __post_init__(self) -> None:
        if not _ENV_NAME.fullmatch(self.env):
            raise ConfigurationError(
                f"{self.env!r} is not an environment variable name: use letters, digits, _"
            )

    def name(self, environ: Mapping[str, str] | None = None) -> str:
        """The resource's name from the environment, or the default; refuses neither."""
        value = (os.environ if environ is None else environ).get(self.env) or self.default
        if not value:
            raise ConfigurationError(
                f"environment variable {self.env} (the {self.kind} name) is not set: "
                "deploy with the generated template, or set it"
            )
        return value


@dataclass(frozen=True)
class Trigger:
    """The trigger, the resource it reads, and the platform settings that decide delivery."""

    kind: TriggerKind
    source: Resource
    batch_size: int = 100
    max_retries: int = -1
    """Streams: MaximumRetryAttempts; SQS: maxReceiveCount - 1; -1 leaves giving up to the
    pipeline's max_deliveries (streams retry until the record expires, SQS allows 100)."""
    max_record_age: int = -1
    """Streams: MaximumRecordAgeInSeconds (-1: the stream's retention)."""
    batching_window: int = 1
    """Seconds Lambda may wait to fill a stream's batch."""
    parallelization_factor: int = 1
    """Streams: concurrent batches per shard (1-10). Above 1 a shard's batches are no
    contiguous runs of it, so the handler settles its records by per-key markers, not
    by shard watermarks."""

    def __post_init__(self) -> None:
        expected = _TRIGGER_SOURCES[self.kind]
        if self.source.kind is not expected:
            raise ConfigurationError(
                f"a {self.kind} trigger reads a {expected}, not a {self.source.kind}: "
                f"give Trigger(TriggerKind.{self.kind.name}, Resource(ResourceKind."
                f"{expected.name}, ...))"
            )
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size is {self.batch_size}: use 1 or more")
        if not 1 <= self.parallelization_factor <= 10:
            raise ConfigurationError(
                f"parallelization_factor is {self.parallelization_factor}: use 1 to 10"
            )
        streams = {TriggerKind.KINESIS, TriggerKind.DYNAMODB}
        if self.parallelization_factor != 1 and self.kind not in streams:
            raise ConfigurationError(
                f"parallelization_factor is for stream triggers, not {self.kind}: drop it"
            )


@dataclass(frozen=True)
class Deployment:
    """Everything the infrastructure must provide for one pipeline's function."""

    trigger: Trigger
    state: Resource
    outputs: tuple[Resource, ...] = ()
    dead_letters: Resource | None = None
    commit: CommitMode = "fenced"
    name: str = "onceflow"
    """The pipeline's name: resource names and alarms are derived from it."""

    def __post_init__(self) -> None:
        if not isinstance(self.outputs, tuple):
            object.__setattr__(self, "outputs", tuple(self.outputs))
        seen: dict[str, Resource] = {}
        for resource in self.resources():
            other = seen.setdefault(resource.env, resource)
            if other.kind is not resource.kind:
                raise ConfigurationError(
                    f"environment variable {resource.env} names both a {other.kind} and a "
                    f"{resource.kind}: give each resource its own variable"
                )

    def resources(self) -> Iterator[Resource]:
        """Every resource: the trigger's source, the state, the outputs, the dead letters."""
        yield self.trigger.source
        yield self.state
        yield from self.outputs
        if self.dead_letters is not None:
            yield self.dead_letters

    def environment(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Each resource's variable and its name now; refuses, naming it, one that is unset."""
        return {r.env: r.name(environ) for r in self.resources()}
