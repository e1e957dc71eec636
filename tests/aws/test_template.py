"""`onceflow aws template`: a SAM template that cfn-lint accepts, offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onceflow.adapters.aws.cli import SOURCES
from onceflow.cli import main

CFN_LINT = next(
    (str(p) for p in [Path(sys.executable).with_name("cfn-lint")] if p.exists()),
    shutil.which("cfn-lint") or "cfn-lint",
)


def render(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["aws", "template", "examples.orders.lambda_function", *args]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


@pytest.mark.slow
def test_every_trigger_passes_cfn_lint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = []
    for source in SOURCES:
        path = tmp_path / f"{source}.json"
        path.write_text(json.dumps(render(capsys, "--source", source, "--mode", "atomic")))
        paths.append(str(path))
    lint = subprocess.run(
        [CFN_LINT, *paths, "--regions", "us-east-1"], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_stream_trigger_reports_partial_failures(capsys: pytest.CaptureFixture[str]) -> None:
    doc = render(capsys, "--source", "kinesis", "--max-retries", "5")
    resources = doc["Resources"]
    assert isinstance(resources, dict)
    function = resources["Processor"]["Properties"]
    trigger = function["Events"]["Trigger"]["Properties"]
    assert trigger["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert trigger["BisectBatchOnFunctionError"] is True
    assert trigger["MaximumRetryAttempts"] == 5
    assert trigger["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
    }
    assert function["Handler"] == "examples.orders.lambda_function.handler"
    default = render(capsys, "--source", "kinesis")["Resources"]["Processor"]["Properties"]
    # By default Lambda never discards a record: the pipeline's max_deliveries decides.
    assert default["Events"]["Trigger"]["Properties"]["MaximumRetryAttempts"] == -1
    assert default["Events"]["Trigger"]["Properties"]["MaximumRecordAgeInSeconds"] == -1
    sqs = render(capsys, "--source", "sqs")["Resources"]
    queue = next(
        r
        for r in sqs.values()
        if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in r["Properties"]
    )
    assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 100
    ttl = resources["StateTable"]["Properties"]["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": "expires_at", "Enabled": True}


def test_policy_names_only_its_own_resources(capsys: pytest.CaptureFixture[str]) -> None:
    for source in SOURCES:
        resources = render(capsys, "--source", source)["Resources"]
        assert isinstance(resources, dict)
        policy = resources["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
        for statement in policy["Statement"]:
            assert "*" not in json.dumps(statement["Action"])
            assert statement["Resource"] != "*" and "*" not in [
                r for r in statement["Resource"] if isinstance(r, str)
            ]


def test_module_without_a_handler_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aws", "template", "examples.orders.processor"]) == 2
    assert "has no `handler = onceflow.adapters.aws.lambda_handler(...)`" in capsys.readouterr().err
