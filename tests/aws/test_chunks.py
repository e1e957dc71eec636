"""Large S3 objects on Lambda: router, chunk worker, fan-in and the state machine.

Exercised for real: the router, chunk-worker and fan-in handlers on the moto server's S3
(every object read is a ranged GET), the execution started once per object version on
moto's Step Functions, the definition checked by `asl-validator` (npm) and the SAM
resources by cfn-lint, and the definition executed by moto's Step Functions interpreter
on a moto server of its own (`execute_state_machine`, Lambda without Docker): Map,
Retry, Catch to the SQS dead-letter queue, Choice, Fail. In that interpreter the Lambda
tasks answer with results queued beforehand, here the replies the real handlers gave,
so the interpreter runs the states and the handlers run the code; what is not exercised
is Lambda itself invoking our code inside the state machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceflow import Event, Pipeline
from onceflow.adapters.aws.chunks import chunked_handlers, execution_name
from onceflow.adapters.aws.state_machine import chunked_resources, chunked_state_machine
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from tests.support.servers import MotoServer, moto_server

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parents[2]
ASL_VALIDATOR = ROOT / "node_modules" / ".bin" / "asl-validator"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:"


class Doubler:
    def process(self, event: Event) -> dict[str, int]:
        n = event.json()["n"]
        return {"n": n, "double": 2 * n}


def body(count: int) -> bytes:
    return b"".join(
        json.dumps({"n": i, "pad": "p" * (i % 40)}).encode() + b"\n" for i in range(count)
    )


def notification(bucket: str, key: str, size: int) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-12-01T00:00:00.000Z",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": key, "size": size, "sequencer": "0055AED6DCD90281E5"},
                },
            }
        ]
    }


class Ranges:
    """The Range of every GetObject the client sends for the object `key`."""

    def __init__(self, client: Any, key: str) -> None:
        self.key = key
        self.seen: list[str | None] = []
        client.meta.events.register("provide-client-params.s3.GetObject", self._record)

    def _record(self, params: Any, **_: Any) -> None:
        if params.get("Key") == self.key:
            self.seen.append(params.get("Range"))


def state_machine_role(moto: Any) -> str:
    iam = moto.client("iam")
    name = f"sfn-{uuid.uuid4().hex[:8]}"
    allow = {"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}}
    doc = {"Version": "2012-10-17", "Statement": [{**allow, "Action": "sts:AssumeRole"}]}
    return str(
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(doc))["Role"]["Arn"]
    )


def test_chunk_workers_read_ranged_slices_and_fan_in_equals_one_read(
    moto: MotoServer, s3_bucket: str
) -> None:
    s3 = moto.client("s3")
    key = f"landing/{uuid.uuid4().hex[:6]}/big orders.jsonl"
    ranges = Ranges(s3, key)
    data = body(30_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    sfn = moto.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"chunks-{uuid.uuid4().hex[:8]}",
        definition=json.dumps(chunked_state_machine(
            worker_arn=ARN + "w", fan_in_arn=ARN + "f", dead_letter_queue_url="https://q")),
        roleArn=state_machine_role(moto),
    )["stateMachineArn"]  # fmt: skip
    sink = MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), MemorySink())
    handlers = chunked_handlers(
        pipeline, state_machine_arn=machine, inline_limit=100_000, chunk_size=150_000,
        s3=s3, stepfunctions=sfn,
    )  # fmt: skip
    event = notification(s3_bucket, key.replace(" ", "+"), len(data))
    assert handlers.router(event)["failed"] == 0
    assert handlers.router(event)["failed"] == 0  # notified twice: one execution
    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    started = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert execution["name"] == execution_name(s3_bucket, key, started["version"])
    assert len(started["chunks"]) == len(range(0, len(data), 150_000))
    # The Map state, item by item (twice: a retried item is skipped), then the fan-in.
    ranges.seen.clear()
    item = {"bucket": s3_bucket, "key": key, "version": started["version"]}
    replies = [handlers.chunk_worker({**item, "index": c["index"]}) for c in started["chunks"]]
    assert all(r["skipped"] for r in [handlers.chunk_worker({**item, "index": 0})])
    assert ranges.seen and all(r is not None and r.startswith("bytes=") for r in ranges.seen)
    read = sum(int(b) - int(a) + 1 for a, b in (r[6:].split("-") for r in ranges.seen if r))
    assert read == len(data)  # each byte once, never the whole object in one GET
    fanned = handlers.fan_in(item)
    assert fanned["complete"] and fanned["rows"] == 30_000 and not replies[0]["skipped"]
    assert sorted(v["n"] for v in sink.values()) == list(range(30_000))
    done = s3.list_objects_v2(Bucket=s3_bucket, Prefix="_onceflow/chunked/")["Contents"]
    quoted = key.replace("/", "%2F").replace(" ", "%20")
    assert sum(o["Key"].endswith("/_SUCCESS") for o in done if quoted in o["Key"]) == 1


def test_a_small_object_runs_inline_in_the_router(moto: MotoServer, s3_bucket: str) -> None:
    s3 = moto.client("s3")
    key = f"small/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(500) + b"{oops\n"
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    sink, letters = MemorySink(), MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), letters)
    handlers = chunked_handlers(pipeline, s3=s3, state_machine_arn="arn:unused")
    assert handlers.router(notification(s3_bucket, key, len(data)))["failed"] == 0
    assert len(sink) == 500 and len(letters) == 1


def test_the_definition_passes_asl_validator(tmp_path: Path) -> None:
    if not ASL_VALIDATOR.exists():
        pytest.fail("asl-validator is not installed: run scripts/install-emulators.sh")
    for distributed in (False, True):
        definition = chunked_state_machine(
            worker_arn=ARN + "worker", fan_in_arn=ARN + "fan-in",
            dead_letter_queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
            distributed=distributed,
        )  # fmt: skip
        path = tmp_path / f"definition-{distributed}.json"
        path.write_text(json.dumps(definition))
        checked = subprocess.run(
            [str(ASL_VALIDATOR), "--json-path", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_sam_resources_pass_cfn_lint(tmp_path: Path) -> None:
    lint = Path(sys.executable).with_name("cfn-lint")
    command = str(lint) if lint.exists() else shutil.which("cfn-lint") or "cfn-lint"
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Resources": {
            "DeadLetterQueue": {"Type": "AWS::SQS::Queue"},
            "Landing": {"Type": "AWS::S3::Bucket"},
            **chunked_resources(handler_module="app", bucket="Landing"),
        },
    }
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    checked = subprocess.run([command, str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- moto's Step Functions interpreter, on a moto server of its own ---------------------------


@pytest.fixture(scope="module")
def interpreter() -> Iterator[MotoServer]:
    with moto_server() as server:
        config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
        post(server, "/moto-api/config", config)
        yield server


def post(server: MotoServer, path: str, doc: Any) -> None:
    request = urllib.request.Request(
        server.endpoint + path, data=json.dumps(doc).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=10).close()


def run_execution(
    moto: MotoServer, definition: dict[str, Any], doc: dict[str, Any]
) -> dict[str, Any]:
    sfn = moto.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"chunks-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition),
        roleArn=state_machine_role(moto),
    )["stateMachineArn"]  # fmt: skip
    arn = sfn.start_execution(stateMachineArn=machine, input=json.dumps(doc))["executionArn"]
    deadline = time.monotonic() + 60
    while (found := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the execution never finished"
        time.sleep(0.1)
    return dict(found)


def lambda_function(moto: MotoServer, name: str) -> str:
    role = moto.client("iam").create_role(
        RoleName=f"fn-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    import io
    import zipfile

    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return event\n")
    made = moto.client("lambda").create_function(
        FunctionName=name, Runtime="python3.12", Role=role, Handler="app.handler",
        Code={"ZipFile": code.getvalue()},
    )  # fmt: skip
    return str(made["FunctionArn"])


def test_moto_interpreter_runs_the_map_and_the_fan_in(interpreter: MotoServer) -> None:
    s3 = interpreter.client("s3")
    bucket = f"chunks-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    data = body(8_000)
    s3.put_object(Bucket=bucket, Key="in.jsonl", Body=data)
    handlers = chunked_handlers(
        Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(), MemorySink()),
        s3=s3, inline_limit=1, chunk_size=60_000, stepfunctions=_Recorder(),
        state_machine_arn="arn:t",
    )  # fmt: skip
    handlers.router(notification(bucket, "in.jsonl", len(data)))
    (doc,) = handlers.stepfunctions.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version")}
    replies = [handlers.chunk_worker({**item, "index": c["index"]}) for c in doc["chunks"]]
    fanned = handlers.fan_in(item)
    # The interpreter's Lambda tasks answer what the real handlers answered, in order.
    post(interpreter, "/moto-api/static/lambda-simple/response",
         {"results": [json.dumps(r) for r in [*replies, fanned]]})  # fmt: skip
    definition = chunked_state_machine(
        worker_arn=lambda_function(interpreter, f"w-{uuid.uuid4().hex[:6]}"),
        fan_in_arn=lambda_function(interpreter, f"f-{uuid.uuid4().hex[:6]}"),
        dead_letter_queue_url=interpreter.client("sqs").create_queue(QueueName=f"d{uuid.uuid4().hex[:8]}")["QueueUrl"],
        max_concurrency=1,
    )  # fmt: skip
    found = run_execution(interpreter, definition, doc)
    assert found["status"] == "SUCCEEDED", found
    assert json.loads(found["output"])["fan_in"]["result"]["rows"] == 8_000


def test_moto_interpreter_sends_a_failing_chunk_to_the_dead_letter_queue(
    interpreter: MotoServer,
) -> None:
    sqs = interpreter.client("sqs")
    queue = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    # moto's Lambda fails an invocation whose reply is over 6 MB (a function error, as a
    # crashed worker's): the only failure its Docker-less Lambda can give.
    too_big = "x" * 6_100_000
    post(interpreter, "/moto-api/static/lambda-simple/response",
         {"results": [too_big, json.dumps({"complete": False, "missing": [0]})]})  # fmt: skip
    definition = chunked_state_machine(
        worker_arn=lambda_function(interpreter, f"w-{uuid.uuid4().hex[:6]}"),
        fan_in_arn=lambda_function(interpreter, f"f-{uuid.uuid4().hex[:6]}"),
        dead_letter_queue_url=queue,
    )  # fmt: skip
    doc = {
        "bucket": "b",
        "key": "k.jsonl",
        "version": "v1",
        "pin": "etag",
        "chunks": [{"index": 0}],
    }
    found = run_execution(interpreter, definition, doc)
    assert found["status"] == "FAILED" and found.get("error") == "ChunksMissing", found
    (letter,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    sent = json.loads(letter["Body"])
    assert (sent["key"], sent["version"], sent["chunk"]) == ("k.jsonl", "v1", 0)
    assert sent["error"] == "Function.ResponseSizeTooLarge" and "x" * 20 not in letter["Body"]


class _Recorder:
    """A Step Functions client that only remembers the executions it was asked to start."""

    class exceptions:
        ExecutionAlreadyExists = type("ExecutionAlreadyExists", (Exception,), {})

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any]] = []

    def start_execution(self, **kwargs: Any) -> None:
        self.inputs.append(json.loads(kwargs["input"]))
