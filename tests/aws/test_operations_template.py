"""The operations resources (scheduled canary and reconciliation, their alarms): cfn-lint
accepts them inside the generated SAM template, before and after the SAM transform."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from onceflow.adapters.aws.operations_template import operations_resources
from onceflow.adapters.aws.template import FunctionSettings, _Builder
from onceflow.deployment import Deployment
from tests.aws.test_template import CFN_LINT, deployment, translated


def with_operations(d: Deployment) -> dict[str, Any]:
    """The SAM template `onceflow aws template` writes, operations resources included."""
    return _Builder(d, FunctionSettings(handler="app.handler")).build()


def packaged(doc: dict[str, Any]) -> dict[str, Any]:
    """The template as `sam package` leaves it: every function's code in S3."""
    doc = json.loads(json.dumps(doc))
    for resource in doc["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/code.zip"
    return doc


def test_reconciliation_and_canary_for_an_sqs_pipeline() -> None:
    d = deployment("sqs", every_sink=False)
    resources = operations_resources(
        d, state_table="state", sink_table="out", source_queue="q", source_queue_url="u"
    )
    assert sorted(resources) == [
        "CanaryAlarm",
        "CanaryFunction",
        "ReconcileFunction",
        "ReconciliationGapAlarm",
    ]
    gap = resources["ReconciliationGapAlarm"]["Properties"]
    assert (gap["Namespace"], gap["MetricName"]) == ("onceflow", "ReconciliationGap")
    assert gap["Dimensions"] == [{"Name": "pipeline", "Value": d.name}]
    canary = resources["CanaryFunction"]["Properties"]
    assert canary["Events"]["Schedule"]["Type"] == "Schedule"
    assert canary["Handler"] == "onceflow.adapters.aws.operations_entry.canary_handler"
    assert resources["CanaryAlarm"]["Properties"]["TreatMissingData"] == "breaching"
    actions = {s["Sid"]: s["Action"] for s in canary["Policies"][0]["Statement"]}
    assert actions == {
        "SendCanary": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
        "SeeOutput": ["dynamodb:GetItem", "dynamodb:DescribeTable"],
    }


def test_no_canary_where_onceflow_canary_has_no_target() -> None:
    resources = operations_resources(deployment("kinesis"), state_table="state")
    assert sorted(resources) == ["ReconcileFunction", "ReconciliationGapAlarm"]


@pytest.mark.slow
def test_cfn_lint_accepts_them_before_and_after_the_sam_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for source in ("sqs", "kinesis"):
        doc = with_operations(deployment(source, every_sink=False))
        cfn = translated(packaged(doc), monkeypatch)
        for stage, body in (("sam", doc), ("cfn", cfn)):
            path = tmp_path / f"{source}-{stage}.json"
            path.write_text(json.dumps(body))
            paths.append(str(path))
        if source == "sqs":
            rules = [r for r in cfn["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
            assert len(rules) == 2  # the canary's and the reconciliation's schedules
    lint = subprocess.run(
        [CFN_LINT, *paths, "--regions", "us-east-1"], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
