"""The real runtime path: `sam build` packages the generated template, AWS's runtime client runs it.

What is exercised: `onceflow aws template` writes the template and requirements.txt; the
SAM CLI (aws-sam-cli from PyPI, in its own venv, `.venv-sam`, which `make test` makes)
builds the function from them, installing the onceflow wheel built from this checkout and
its dependencies into the artifact; `awslambdaric`, the runtime interface client Lambda's
Python images run, starts the artifact's handler (onceflow imported from the artifact,
no site-packages) against a Runtime API this suite serves on loopback; the handler's
DynamoDB and SQS calls go to the moto server. Not exercised: the Lambda service itself
(its pollers, retries and on-failure destinations), X-Ray, CloudWatch.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceflow.adapters.aws.testing import (
    kinesis_event,
    kinesis_record,
    s3_event,
    s3_record,
    sqs_event,
    sqs_record,
)
from tests.aws.runtime_api import RuntimeAPI, runtime_api
from tests.support.dist import built_dist
from tests.support.servers import ROOT, MotoServer

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

SAM = ROOT / ".venv-sam" / "bin" / "sam"
APP = Path(__file__).with_name("deployed_app.py")
# What Lambda's Python runtime provides beside the function's code: the runtime client
# and boto3. The package need not carry boto3 (`onceflow`, not `onceflow[aws]`), which
# keeps `sam build` to seconds.
# The artifact runs here, so it is built for this interpreter and this machine.
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
MACHINE = platform.machine()
ARCHITECTURE = "arm64" if MACHINE in {"aarch64", "arm64"} else "x86_64"
RUNTIME_PROVIDES = (
    "awslambdaric",
    "simplejson",
    "snapshot-restore-py",
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "python-dateutil",
    "six",
    "urllib3",
)


def sam_build(project: Path, trigger: str, requirement: str, wheelhouse: Path) -> Path:
    """`onceflow aws template` then `sam build` for one trigger; the built function's folder.

    Every trigger's template packages the same code folder, so `--cached` builds the
    dependencies once and the other builds reuse them.
    """
    code = project / "code"
    if not code.exists():
        code.mkdir(parents=True)
        shutil.copy(APP, code / "deployed_app.py")
    template = project / f"template-{trigger}.json"
    written = subprocess.run(
        [
            *(sys.executable, "-m", "onceflow.cli", "aws", "template"),
            f"deployed_app:{trigger}_handler",
            *("-o", str(template), "--code-uri", "code", "--requirement", requirement),
            *("--runtime", RUNTIME, "--architecture", ARCHITECTURE),
        ],
        cwd=code,
        capture_output=True,
        text=True,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    # SAM's pip resolves from the wheelhouse the fixture filled: one index round per session.
    env = {
        **os.environ,
        "SAM_CLI_TELEMETRY": "0",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
    }
    build = project / f"build-{trigger}"
    done = subprocess.run(
        [str(SAM), "build", "-t", template.name, "--build-dir", build.name, "--cached"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return build / "Processor"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Kinesis, SQS and S3 functions as `sam build` makes them."""
    if not SAM.exists():
        pytest.skip("aws-sam-cli is not installed in .venv-sam: run `make test`")
    base = tmp_path_factory.mktemp("sam")
    wheel = built_dist(base / "dist").wheel
    requirement = f"onceflow @ {wheel.as_uri()}"
    wheelhouse = base / "wheelhouse"
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse)]
    wheels_for = ["--only-binary=:all:", "--platform", f"manylinux2014_{MACHINE}"]
    subprocess.run(
        [*download, *wheels_for, "--python-version", RUNTIME.removeprefix("python"), requirement],
        check=True,
        capture_output=True,
    )
    project = base / "project"
    return {t: sam_build(project, t, requirement, wheelhouse) for t in ("kinesis", "sqs", "s3")}


@pytest.fixture(scope="module")
def runtime_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """awslambdaric and boto3, alone in a folder, as Lambda's Python runtime provides them."""
    folder = tmp_path_factory.mktemp("runtime-client")
    for name in RUNTIME_PROVIDES:
        dist = importlib.metadata.distribution(name)
        for top in {file.parts[0] for file in dist.files or [] if ".." not in file.parts}:
            link = folder / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
    return folder


class Function:
    """A built function running under awslambdaric, and the resources it uses on moto."""

    def __init__(self, api: RuntimeAPI, moto: MotoServer, names: dict[str, str], log: Path) -> None:
        self.api = api
        self.moto = moto
        self.names = names
        self.log = log

    def log_records(self) -> list[dict[str, Any]]:
        """The function's JSON log lines, as Lambda would send them to CloudWatch."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def invoke(self, event: Any) -> Any:
        return self.api.invoke(event)

    def totals(self) -> dict[str, int]:
        client = self.moto.client("dynamodb")
        items = client.scan(TableName=self.names["ORDERS_TOTALS_TABLE"])["Items"]
        from boto3.dynamodb.types import TypeDeserializer

        values = [TypeDeserializer().deserialize(item["value"]) for item in items]
        return {v["order_id"]: int(v["cents"]) for v in values}

    def dead_letters(self) -> list[dict[str, Any]]:
        client = self.moto.client("sqs")
        url = self.names["ORDERS_DEAD_LETTERS"]
        letters = []
        while True:
            got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
            if not got.get("Messages"):
                return letters
            letters += [json.loads(m["Body"]) for m in got["Messages"]]


def environment(built: Path) -> set[str]:
    """The variables the built template gives the function."""
    import yaml

    template = yaml.safe_load((built.parent / "template.yaml").read_text())
    return set(template["Resources"]["Processor"]["Properties"]["Environment"]["Variables"])


@pytest.fixture
def start(artifacts: dict[str, Path], runtime_client: Path, moto: MotoServer) -> Iterator[Any]:
    processes: list[subprocess.Popen[bytes]] = []

    def run(trigger: str) -> Function:
        built = artifacts[trigger]
        from onceflow.adapters.aws.dynamodb_store import create_table

        suffix = uuid.uuid4().hex[:8]
        dynamodb = moto.client("dynamodb")
        names = {
            "ORDERS_STATE_TABLE": f"state-{suffix}",
            "ORDERS_TOTALS_TABLE": f"totals-{suffix}",
        }
        for table in names.values():
            create_table(dynamodb, table)
        names["ORDERS_DEAD_LETTERS"] = moto.client("sqs").create_queue(
            QueueName=f"letters-{suffix}"
        )["QueueUrl"]
        source = {"kinesis": "ORDERS_STREAM", "sqs": "ORDERS_QUEUE", "s3": "ORDERS_BUCKET"}
        names[source[trigger]] = f"source-{suffix}"
        assert environment(built) == set(names)  # the template sets what the handler reads
        handler = json.loads((built.parent.parent / f"template-{trigger}.json").read_text())[
            "Resources"
        ]["Processor"]["Properties"]["Handler"]
        api_context = runtime_api()
        api = api_context.__enter__()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": f"{built}{os.pathsep}{runtime_client}",
            "LAMBDA_TASK_ROOT": str(built),
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_LAMBDA_FUNCTION_NAME": "orders-processor",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_FORMAT": "JSON",  # the template's LoggingConfig
            "AWS_LAMBDA_LOG_LEVEL": "INFO",
            "AWS_REGION": moto.region,
            "AWS_DEFAULT_REGION": moto.region,
            "AWS_ACCESS_KEY_ID": moto.access_key,
            "AWS_SECRET_ACCESS_KEY": moto.secret_key,
            "AWS_ENDPOINT_URL": moto.endpoint,
            **names,
        }
        log = (built.parent.parent / f"{trigger}-{suffix}.log").open("wb")
        logs.append(log)
        # -S: no site-packages, so onceflow and its dependencies come from the artifact.
        process = subprocess.Popen(
            [sys.executable, "-S", "-m", "awslambdaric", handler],
            cwd=built,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        stop.append(api_context)
        return Function(api, moto, names, Path(log.name))

    stop: list[Any] = []
    logs: list[Any] = []
    yield run
    for process in processes:
        process.kill()
        process.wait()
    for context in stop:
        context.__exit__(None, None, None)
    for log in logs:
        log.close()


def order(order_id: str, amount: str, **extra: Any) -> str:
    return json.dumps({"order_id": order_id, "amount": amount, **extra})


def test_kinesis_batch_through_sam_build_and_the_runtime_client(start: Any) -> None:
    function = start("kinesis")
    batch = kinesis_event(
        kinesis_record(1, order("o1", "2.50").encode()),
        kinesis_record(2, order("o2", "1.00").encode()),
        kinesis_record(1, order("o1", "2.50").encode()),  # the same record twice
        kinesis_record(3, json.dumps({"amount": "9"}).encode()),  # no order id: poison
        kinesis_record(4, order("o4", "3.00", flaky=True).encode()),  # downstream down
    )
    first = function.invoke(batch)
    assert first.ok, first.body
    flaky_sequence = batch["Records"][4]["kinesis"]["sequenceNumber"]
    assert first.body == {"batchItemFailures": [{"itemIdentifier": flaky_sequence}]}
    again = function.invoke(batch)  # Lambda retries the batch from the failure on
    assert again.body == first.body
    assert function.totals() == {"o1": 250, "o2": 100}
    [letter] = function.dead_letters()
    assert "order_id" in json.dumps(letter) and "9" not in json.dumps(letter.get("reason", ""))
    # The template's dead-letter metric filter matches `$.message = "*dead-lettering*"`.
    messages = [r.get("message", "") for r in function.log_records()]
    assert sum("dead-lettering" in m for m in messages) == 1, messages


def test_sqs_batch_through_sam_build_and_the_runtime_client(start: Any) -> None:
    function = start("sqs")
    batch = sqs_event(
        sqs_record("m1", order("o1", "2.50")),
        sqs_record("m2", order("o2", "1.00")),
        sqs_record("m1", order("o1", "2.50"), receive_count=2),  # delivered twice
        sqs_record("m3", json.dumps({"amount": "9"})),
        sqs_record("m4", order("o4", "3.00", flaky=True)),
    )
    first = function.invoke(batch)
    assert first.ok and first.body == {"batchItemFailures": [{"itemIdentifier": "m4"}]}
    assert function.invoke(batch).body == first.body
    assert function.totals() == {"o1": 250, "o2": 100}
    assert len(function.dead_letters()) == 1
    # Every message failing: an error, so the poller backs off.
    failed = function.invoke(sqs_event(sqs_record("m5", order("o5", "1", flaky=True))))
    assert not failed.ok and failed.body["errorType"] == "BatchFailed", failed.body


def test_s3_notification_through_sam_build_and_the_runtime_client(start: Any) -> None:
    function = start("s3")
    event = s3_event(s3_record(function.names["ORDERS_BUCKET"], "in/day+1.json", size=42))
    first = function.invoke(event)
    assert first.ok and first.body["processed"] == 1, first.body
    second = function.invoke(event)
    assert second.ok and second.body["duplicates"] == 1
    assert function.totals() == {"in/day 1.json": 42}
