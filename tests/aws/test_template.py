"""`onceflow aws template`: derived from the handler's Deployment; cfn-lint and SAM accept it.

Offline: cfn-lint lints the SAM template and the CloudFormation the SAM translator
(samtranslator, the library `sam deploy` uses) expands it into; no AWS account.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from onceflow.adapters.aws.cli import SOURCES
from onceflow.adapters.aws.template import FunctionSettings, sam_template
from onceflow.cli import main
from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind

CFN_LINT = next(
    (str(p) for p in [Path(sys.executable).with_name("cfn-lint")] if p.exists()),
    shutil.which("cfn-lint") or "cfn-lint",
)
APP = "tests.aws.deployed_app"
SOURCE_KINDS = {
    "kinesis": ResourceKind.KINESIS_STREAM,
    "dynamodb": ResourceKind.DYNAMODB_TABLE,
    "sqs": ResourceKind.SQS_QUEUE,
    "sqs-fifo": ResourceKind.SQS_QUEUE,
    "s3": ResourceKind.S3_BUCKET,
}


def deployment(source: str, commit: Any = "fenced", *, every_sink: bool = True) -> Deployment:
    """A deployment of every sink kind, reading `source`."""
    outputs = (
        Resource(ResourceKind.DYNAMODB_TABLE, "OUT_TABLE"),
        Resource(ResourceKind.KINESIS_STREAM, "OUT_STREAM"),
        Resource(ResourceKind.S3_BUCKET, "LAKE_BUCKET"),
        Resource(ResourceKind.EVENTBRIDGE_BUS, "BUS"),
    )
    return Deployment(
        Trigger(TriggerKind(source), Resource(SOURCE_KINDS[source], "SOURCE")),
        state=Resource(ResourceKind.DYNAMODB_TABLE, "STATE"),
        outputs=outputs if every_sink else outputs[:1],
        dead_letters=Resource(ResourceKind.SQS_QUEUE, "LETTERS"),
        commit=commit,
    )


def template(d: Deployment) -> dict[str, Any]:
    return sam_template(d, FunctionSettings(handler="app.handler"))


def translated(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """CloudFormation as the SAM transform makes it (code as if `sam package` uploaded it)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    doc = json.loads(json.dumps(doc))
    for resource in doc["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/code.zip"
    out: dict[str, Any] = transform(doc, {}, NoManagedPolicies())
    return out


def policy(doc: dict[str, Any]) -> dict[str, list[str]]:
    """The role's actions by statement id."""
    role = doc["Resources"]["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    return {s["Sid"]: s["Action"] for s in role["Statement"]}


@pytest.mark.slow
def test_every_trigger_and_mode_passes_cfn_lint_before_and_after_the_sam_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    # The modes differ only in the role's actions: every trigger once, upsert once more.
    for source, commit in [*((source, "fenced") for source in SOURCES), ("kinesis", "upsert")]:
        doc = template(deployment(source, commit))
        for stage, body in (("sam", doc), ("cfn", translated(doc, monkeypatch))):
            path = tmp_path / f"{source}-{commit}-{stage}.json"
            path.write_text(json.dumps(body))
            paths.append(str(path))
    lint = subprocess.run(
        [CFN_LINT, *paths, "--regions", "us-east-1"], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_environment_is_exactly_what_the_deployment_names() -> None:
    d = deployment("kinesis")
    doc = template(d)
    function = doc["Resources"]["Processor"]["Properties"]
    assert sorted(function["Environment"]["Variables"]) == sorted(r.env for r in d.resources())
    queue_url = function["Environment"]["Variables"]["LETTERS"]["Fn::If"]
    assert queue_url[0] == "CreateDeadLetters" and queue_url[1] == {"Ref": "DeadLetters"}
    assert "https://sqs." in queue_url[2]["Fn::Sub"]  # SQSSink takes the queue URL


def test_resources_only_for_the_sinks_used_and_each_reusable_by_a_parameter() -> None:
    doc = template(deployment("sqs", every_sink=False))
    types = sorted(r["Type"] for r in doc["Resources"].values())
    assert "AWS::Kinesis::Stream" not in types and "AWS::S3::Bucket" not in types
    assert sorted(doc["Parameters"]) == [
        "AlarmTopicArn",
        "DeadLettersName",
        "Output1Name",
        "SourceQueueName",
        "StateTableName",
    ]
    for parameter in doc["Parameters"]:
        if parameter != "AlarmTopicArn":
            logical = parameter.removesuffix("Name")
            assert doc["Resources"][logical]["Condition"] == f"Create{logical}"
    # An existing stream's table is named by its stream ARN.
    assert "SourceTableStreamArn" in template(deployment("dynamodb"))["Parameters"]


def test_least_privilege_differs_by_mode_and_by_sink() -> None:
    upsert, fenced = (
        policy(template(deployment("kinesis", "upsert"))),
        policy(template(deployment("kinesis", "fenced"))),
    )
    assert upsert["State"] == [
        "dynamodb:BatchGetItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:UpdateItem",
    ]
    assert "dynamodb:BatchWriteItem" not in fenced["State"]
    assert "dynamodb:ConditionCheckItem" in fenced["State"]
    assert upsert["Output1"] == ["dynamodb:BatchWriteItem"]
    assert fenced["Output1"] == ["dynamodb:PutItem", "dynamodb:UpdateItem"]
    assert upsert["Output2"] == ["kinesis:PutRecord", "kinesis:PutRecords"]
    assert upsert["Output3Objects"] == ["s3:GetObject", "s3:PutObject"]
    assert upsert["Output4"] == ["events:PutEvents"]
    assert upsert["DeadLetters"] == ["sqs:SendMessage"]
    for source in SOURCES:
        doc = template(deployment(source))
        role = doc["Resources"]["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
        for statement in role["Statement"]:
            assert "*" not in json.dumps(statement["Action"])
            assert all(r != "*" for r in statement["Resource"])


def test_on_failure_destination_is_not_the_dead_letter_queue() -> None:
    for source in SOURCES:
        resources = template(deployment(source))["Resources"]
        assert resources["OnFailureQueue"]["Type"] == "AWS::SQS::Queue"
        trigger = resources["Processor"]["Properties"]["Events"]["Trigger"]["Properties"]
        if source in {"kinesis", "dynamodb"}:
            target = trigger["DestinationConfig"]["OnFailure"]["Destination"]
        elif source == "s3":
            config = resources["Processor"]["Properties"]["EventInvokeConfig"]
            target = config["DestinationConfig"]["OnFailure"]["Destination"]
        else:
            target = resources["SourceQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]
        assert target == {"Fn::GetAtt": ["OnFailureQueue", "Arn"]}, source


def test_trigger_defaults_leave_giving_up_to_the_pipeline() -> None:
    resources = template(deployment("kinesis"))["Resources"]
    trigger = resources["Processor"]["Properties"]["Events"]["Trigger"]["Properties"]
    assert trigger["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert trigger["BisectBatchOnFunctionError"] is True
    assert trigger["MaximumRetryAttempts"] == -1 and trigger["MaximumRecordAgeInSeconds"] == -1
    queue = template(deployment("sqs"))["Resources"]["SourceQueue"]["Properties"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 100
    fifo = template(deployment("sqs-fifo"))["Resources"]
    assert fifo["SourceQueue"]["Properties"]["FifoQueue"] is True
    assert fifo["OnFailureQueue"]["Properties"]["FifoQueue"] is True


def test_alarms_tracing_logging_and_a_retained_state_table() -> None:
    stream, queue = template(deployment("kinesis")), template(deployment("sqs"))
    metrics = {
        r["Properties"]["MetricName"]
        if isinstance(r["Properties"]["MetricName"], str)
        else "pipeline"
        for r in stream["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert metrics == {
        "IteratorAge",
        "ApproximateNumberOfMessagesVisible",
        "Errors",
        "pipeline",
        "ReconciliationGap",
    }
    assert "ApproximateAgeOfOldestMessage" in json.dumps(queue["Resources"]["OldestMessageAlarm"])
    depth = [n for n, r in stream["Resources"].items() if "Depth" in n]
    assert sorted(depth) == ["DeadLetterDepth", "OnFailureQueueDepth"]
    assert (
        "dead-lettering" in stream["Resources"]["DeadLetteredMetric"]["Properties"]["FilterPattern"]
    )
    function = stream["Resources"]["Processor"]
    assert function["Properties"]["Tracing"] == "Active"
    assert function["Properties"]["LoggingConfig"]["LogFormat"] == "JSON"
    assert function["Metadata"]["BuildMethod"] == "python3.12"
    state = stream["Resources"]["StateTable"]
    assert state["DeletionPolicy"] == state["UpdateReplacePolicy"] == "Retain"
    props = state["Properties"]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


def test_the_command_writes_the_template_and_the_requirement(tmp_path: Path) -> None:
    out = tmp_path / "template.json"
    spec = "onceflow[aws] @ file:///wheels/onceflow-0.1.0-py3-none-any.whl"
    assert (
        main(["aws", "template", f"{APP}:sqs_handler", "-o", str(out), "--requirement", spec]) == 0
    )
    doc = json.loads(out.read_text())
    assert doc["Resources"]["Processor"]["Properties"]["Handler"] == f"{APP}.sqs_handler"
    assert spec in (tmp_path / "requirements.txt").read_text()
    # A requirements.txt of the user's own that lacks onceflow is refused, nothing written.
    (tmp_path / "requirements.txt").write_text("requests\n")
    out.unlink()
    assert main(["aws", "template", f"{APP}:sqs_handler", "-o", str(out)]) == 2
    assert not out.exists()


def test_a_factory_runs_through_the_generic_handler(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aws", "template", f"{APP}:make_handler"]) == 0
    function = json.loads(capsys.readouterr().out)["Resources"]["Processor"]["Properties"]
    assert function["Handler"] == "onceflow.adapters.aws.runtime.handler"
    assert function["Environment"]["Variables"]["ONCEFLOW_HANDLER"] == f"{APP}:make_handler"


@pytest.mark.parametrize(
    ("target", "extra", "says"),
    [
        ("examples.orders.processor", [], "has no `handler = onceflow.adapters.aws.lambda_handler"),
        (f"{APP}:not_a_handler", [], "returned a dict, not a handler"),
        (f"{APP}:Totals", [], "is a type, not a handler"),
        (f"{APP}:kinesis_handler", ["--source", "sqs"], "declares a kinesis trigger, not sqs"),
        ("no.such.module", [], "cannot import module 'no.such.module'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    target: str, extra: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "template.json"
    assert main(["aws", "template", target, "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_the_example_handler_deploys_what_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aws", "template", "examples.orders.lambda_function"]) == 0
    variables = json.loads(capsys.readouterr().out)["Resources"]["Processor"]["Properties"][
        "Environment"
    ]["Variables"]
    assert {"ONCEFLOW_STATE_TABLE", "ONCEFLOW_OUTPUT_TABLE", "ONCEFLOW_DEAD_LETTERS"} <= set(
        variables
    )


def test_a_module_that_fails_to_import_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "needs_more.py").write_text("import no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["aws", "template", "needs_more:handler"]) == 2
    err = capsys.readouterr().err
    assert "importing 'needs_more' failed: No module named 'no_such_dependency'" in err
    assert err.count("\n") == 1
