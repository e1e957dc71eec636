"""`onceflow.deployment`: the description a handler carries, checked when it is built."""

from __future__ import annotations

import pytest

from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind
from onceflow.errors import ConfigurationError

STREAM = Resource(ResourceKind.KINESIS_STREAM, "STREAM")
STATE = Resource(ResourceKind.DYNAMODB_TABLE, "STATE", default="state")


def test_names_come_from_the_environment_then_the_default() -> None:
    assert STATE.name({}) == "state"
    assert STATE.name({"STATE": "prod-state"}) == "prod-state"
    with pytest.raises(ConfigurationError, match=r"environment variable STREAM .* is not set"):
        STREAM.name({})


def test_environment_names_every_resource_once() -> None:
    letters = Resource(ResourceKind.SQS_QUEUE, "LETTERS")
    d = Deployment(Trigger(TriggerKind.KINESIS, STREAM), STATE, (STATE,), letters)
    env = {"STREAM": "s", "LETTERS": "https://queue"}
    assert d.environment(env) == {"STREAM": "s", "STATE": "state", "LETTERS": "https://queue"}


def test_a_trigger_must_read_its_own_kind_of_resource() -> None:
    with pytest.raises(ConfigurationError, match="a sqs trigger reads a sqs-queue"):
        Trigger(TriggerKind.SQS, STREAM)
    with pytest.raises(ConfigurationError, match="batch_size is 0"):
        Trigger(TriggerKind.KINESIS, STREAM, batch_size=0)


def test_one_variable_cannot_name_two_kinds_of_resource() -> None:
    clash = Resource(ResourceKind.SQS_QUEUE, "STATE")
    with pytest.raises(ConfigurationError, match="STATE names both a dynamodb-table and a"):
        Deployment(Trigger(TriggerKind.KINESIS, STREAM), STATE, (clash,))
    with pytest.raises(ConfigurationError, match="is not an environment variable name"):
        Resource(ResourceKind.SQS_QUEUE, "not-a-name")


def test_outputs_given_as_a_list_are_kept_as_a_tuple() -> None:
    d = Deployment(Trigger(TriggerKind.KINESIS, STREAM), STATE, [STATE])  # type: ignore[arg-type]
    assert d.outputs == (STATE,)
