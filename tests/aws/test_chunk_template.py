"""The chunked path in the generated SAM template: an S3 pipeline with `chunked=`.

Offline, as `test_template.py`: cfn-lint on the SAM template and on the CloudFormation
the SAM translator expands it into (which also catches a dependency cycle), `sam validate
--lint` (the SAM CLI in `.venv-sam`, as `test_runtime.py` uses it), and the state
machine's definition, as the template carries it, by `asl-validator` (npm).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from onceflow.adapters.aws.chunks import LEDGER_BUCKET_ENV, STATE_MACHINE_ENV
from onceflow.adapters.aws.state_machine import RETRIED_ERRORS
from onceflow.adapters.aws.template import ChunkedSettings, FunctionSettings, sam_template
from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind
from onceflow.errors import ConfigurationError
from tests.aws.test_template import CFN_LINT, deployment, translated

ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"
SAM = ROOT / ".venv-sam" / "bin" / "sam"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:"


def chunked(d: Deployment, **settings: Any) -> dict[str, Any]:
    return sam_template(
        d, FunctionSettings(handler="app.router", chunked=ChunkedSettings(**settings))
    )


def table_letters() -> Deployment:
    """An S3 pipeline whose dead letters go to a DynamoDB table, not a queue."""
    return Deployment(
        Trigger(TriggerKind.S3, Resource(ResourceKind.S3_BUCKET, "SOURCE")),
        state=Resource(ResourceKind.DYNAMODB_TABLE, "STATE"),
        outputs=(Resource(ResourceKind.DYNAMODB_TABLE, "OUT_TABLE"),),
        dead_letters=Resource(ResourceKind.DYNAMODB_TABLE, "LETTERS"),
    )


@pytest.mark.slow
def test_the_chunked_template_passes_cfn_lint_before_and_after_the_sam_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    variants = {
        "inline": chunked(deployment("s3")),
        "distributed": chunked(deployment("s3", every_sink=False), distributed=True),
        "table-letters": chunked(table_letters()),
    }
    for name, doc in variants.items():
        for stage, body in (("sam", doc), ("cfn", translated(doc, monkeypatch))):
            path = tmp_path / f"{name}-{stage}.json"
            path.write_text(json.dumps(body))
            paths.append(str(path))
    lint = subprocess.run(
        [CFN_LINT, *paths, "--regions", "us-east-1"], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.slow
def test_sam_validate_lint_accepts_the_chunked_template(tmp_path: Path) -> None:
    if not SAM.exists():
        pytest.skip("aws-sam-cli is not installed in .venv-sam: run `make test`")
    path = tmp_path / "template.json"
    path.write_text(json.dumps(chunked(deployment("s3"), distributed=True)))
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [str(SAM), "validate", "--lint", "-t", str(path)],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_templates_definition_passes_asl_validator(tmp_path: Path) -> None:
    if not ASL_VALIDATOR.exists():
        pytest.fail("asl-validator is not installed: run scripts/install-emulators.sh")
    for distributed in (False, True):
        machine = chunked(deployment("s3"), distributed=distributed)["Resources"]
        properties = machine["ChunkStateMachine"]["Properties"]
        text = json.dumps(properties["Definition"])
        # What CloudFormation substitutes at deploy time.
        for name, value in {
            "ChunkWorkerArn": ARN + "worker",
            "ChunkFanInArn": ARN + "fan-in",
            "DeadLetterQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/letters",
        }.items():
            assert name in properties["DefinitionSubstitutions"]
            text = text.replace("${" + name + "}", value)
        assert "${" not in text
        path = tmp_path / f"definition-{distributed}.json"
        path.write_text(text)
        checked = subprocess.run(
            [str(ASL_VALIDATOR), "--json-path", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_functions_share_the_pipelines_role_environment_and_logs() -> None:
    d = deployment("s3")
    resources = chunked(d, timeout=600, memory=3008)["Resources"]
    router = resources["Processor"]["Properties"]
    assert router["Handler"] == "app.router"
    assert router["Events"]["Trigger"]["Type"] == "S3"
    assert resources["Processor"]["DependsOn"] == ["ChunkStartPolicy"]
    variables = router["Environment"]["Variables"]
    assert variables[STATE_MACHINE_ENV] == {"Ref": "ChunkStateMachine"}
    assert variables[LEDGER_BUCKET_ENV] == {"Ref": "ChunkLedgerBucket"}
    for logical, handler in (
        ("ChunkWorkerFunction", "app.chunk_worker"),
        ("ChunkFanInFunction", "app.fan_in"),
    ):
        function = resources[logical]["Properties"]
        assert function["Handler"] == handler
        assert (function["Timeout"], function["MemorySize"]) == (600, 3008)
        assert function["Role"] == router["Role"] and function["CodeUri"] == router["CodeUri"]
        assert function["LoggingConfig"] == router["LoggingConfig"]
        assert "Events" not in function and "EventInvokeConfig" not in function
        # The pipeline's resources, and the ledger; not the state machine (a cycle).
        own = function["Environment"]["Variables"]
        assert own == {k: v for k, v in variables.items() if k != STATE_MACHINE_ENV}
        assert sorted(r.env for r in d.resources()) == sorted(set(own) - {LEDGER_BUCKET_ENV})
    start = resources["ChunkStartPolicy"]["Properties"]
    assert start["Roles"] == [{"Ref": "FunctionRole"}]
    assert start["PolicyDocument"]["Statement"][0]["Resource"] == [{"Ref": "ChunkStateMachine"}]
    role = resources["FunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    sids = {s["Sid"]: s for s in role["Statement"]}
    assert sids["ChunkLedgerObjects"]["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert sids["ReadObjects"]["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert "ListSource" in sids and "ChunkLedgerList" in sids
    assert resources["ChunkLedgerBucket"]["DeletionPolicy"] == "Retain"


def test_the_state_machine_maps_retries_and_dead_letters_to_the_pipelines_queue() -> None:
    resources = chunked(deployment("s3"), max_concurrency=7)["Resources"]
    machine = resources["ChunkStateMachine"]["Properties"]
    definition = machine["Definition"]
    chunks = definition["States"]["Chunks"]
    assert (chunks["Type"], chunks["ItemsPath"], chunks["MaxConcurrency"]) == (
        "Map",
        "$.chunks",
        7,
    )
    assert chunks["ItemSelector"]["pin.$"] == "$.pin"
    task = chunks["ItemProcessor"]["States"]["RunChunk"]
    (retry,) = task["Retry"]
    assert retry["BackoffRate"] == 2.0 and retry["MaxAttempts"] >= 3
    assert "ChunkOutOfTime" in retry["ErrorEquals"] == RETRIED_ERRORS
    assert "ObjectChanged" not in retry["ErrorEquals"]
    assert task["Catch"][0]["Next"] == "DeadLetter"
    # The catch path hands the chunk and its error to the chunk worker, which writes the
    # pipeline's own letter; only if that fails does the bare name go to the queue.
    states = chunks["ItemProcessor"]["States"]
    letter = states["DeadLetter"]
    assert letter["Parameters"]["FunctionName"] == "${ChunkWorkerArn}"
    assert letter["Parameters"]["Payload"]["failed.$"] == "$.error"
    assert letter["Catch"][0]["Next"] == "DeadLetterQueue"
    assert states["DeadLetterQueue"]["Resource"] == "arn:aws:states:::sqs:sendMessage"
    # The fallback sends to the pipeline's own dead-letter queue (created or given).
    url = machine["DefinitionSubstitutions"]["DeadLetterQueueUrl"]
    assert url["Fn::If"][0] == "CreateDeadLetters" and url["Fn::If"][1] == {"Ref": "DeadLetters"}
    statements = [p for p in machine["Policies"] if "Statement" in p]
    (send,) = [s for p in statements for s in p["Statement"] if "sqs:SendMessage" in s["Action"]]
    assert send["Resource"][0]["Fn::If"][1] == {"Fn::GetAtt": ["DeadLetters", "Arn"]}
    invoked = [p["LambdaInvokePolicy"]["FunctionName"] for p in machine["Policies"][:2]]
    assert invoked == [{"Ref": "ChunkWorkerFunction"}, {"Ref": "ChunkFanInFunction"}]
    alarm = resources["ChunkExecutionsFailedAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/States", "ExecutionsFailed")


def test_a_distributed_map_reads_the_plans_items_from_the_ledger_bucket() -> None:
    resources = chunked(deployment("s3"), distributed=True)["Resources"]
    machine = resources["ChunkStateMachine"]["Properties"]
    chunks = machine["Definition"]["States"]["Chunks"]
    assert "ItemsPath" not in chunks
    reader = chunks["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert reader["Parameters"] == {"Bucket.$": "$.ledger_bucket", "Key.$": "$.items"}
    statements = [s for p in machine["Policies"] if "Statement" in p for s in p["Statement"]]
    (get,) = [s for s in statements if s["Action"] == ["s3:GetObject"]]
    ledger = {"Fn::GetAtt": ["ChunkLedgerBucket", "Arn"]}
    assert get["Resource"] == [{"Fn::Sub": ["${Bucket}/*", {"Bucket": ledger}]}]


def test_without_a_dead_letter_queue_failed_chunks_go_to_the_on_failure_queue() -> None:
    machine = chunked(table_letters())["Resources"]["ChunkStateMachine"]["Properties"]
    assert machine["DefinitionSubstitutions"]["DeadLetterQueueUrl"] == {"Ref": "OnFailureQueue"}


def test_no_chunked_resources_without_chunked_and_none_for_other_triggers() -> None:
    plain = sam_template(deployment("s3"), FunctionSettings(handler="app.handler"))
    assert not [name for name in plain["Resources"] if name.startswith("Chunk")]
    with pytest.raises(ConfigurationError, match="not of a sqs trigger"):
        chunked(deployment("sqs"))
    with pytest.raises(ConfigurationError, match="has no module"):
        sam_template(
            deployment("s3"), FunctionSettings(handler="router", chunked=ChunkedSettings())
        )


def test_the_handlers_deployment_must_read_s3() -> None:
    from onceflow import Pipeline
    from onceflow.adapters.aws.chunks import chunked_handlers

    d = deployment("s3")
    assert chunked_handlers(lambda: Pipeline(object()), deployment=d).deployment is d
    with pytest.raises(ConfigurationError, match="declares a kinesis trigger"):
        chunked_handlers(lambda: Pipeline(object()), deployment=deployment("kinesis"))


CHUNKED_APP = """
from onceflow import Pipeline
from onceflow.adapters.aws.chunks import chunked_handlers
from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind

DEPLOYMENT = Deployment(
    Trigger(TriggerKind.S3, Resource(ResourceKind.S3_BUCKET, "LANDING")),
    state=Resource(ResourceKind.DYNAMODB_TABLE, "STATE"),
    dead_letters=Resource(ResourceKind.SQS_QUEUE, "DEAD_LETTERS"),
)
handlers = chunked_handlers(lambda: Pipeline(object()), deployment=DEPLOYMENT)
router, chunk_worker, fan_in = handlers.router, handlers.chunk_worker, handlers.fan_in
"""


def test_the_command_generates_the_chunked_template_from_chunked_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from onceflow.cli import main

    (tmp_path / "chunked_app.py").write_text(CHUNKED_APP)
    (tmp_path / "half_app.py").write_text(CHUNKED_APP.rsplit("\n", 2)[0] + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["aws", "template", "chunked_app:handlers"]) == 0
    resources = json.loads(capsys.readouterr().out)["Resources"]
    assert resources["Processor"]["Properties"]["Handler"] == "chunked_app.router"
    assert {"ChunkWorkerFunction", "ChunkFanInFunction", "ChunkStateMachine"} <= set(resources)
    # A module that names the handlers but not the three functions: one line naming them.
    assert main(["aws", "template", "half_app:handlers"]) == 2
    err = capsys.readouterr().err
    assert "router, chunk_worker, fan_in" in err and err.count("\n") == 1, err
