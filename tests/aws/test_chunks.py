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
from onceflow.adapters.aws.chunks import ChunkOutOfTime, chunked_handlers, execution_name
from onceflow.adapters.aws.entry import BatchFailed
from onceflow.adapters.aws.objects import ObjectChanged
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


def notification(bucket: str, key: str, size: int, version_id: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"key": key, "size": size, "sequencer": "0055AED6DCD90281E5"}
    if version_id:
        found["versionId"] = version_id
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-12-01T00:00:00.000Z",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": found,
                },
            }
        ]
    }


class Ranges:
    """The Range (and the pin) of every GetObject the client sends for the object `key`."""

    def __init__(self, client: Any, key: str) -> None:
        self.key = key
        self.seen: list[str | None] = []
        self.pins: list[tuple[str | None, str | None]] = []
        client.meta.events.register("provide-client-params.s3.GetObject", self._record)

    def _record(self, params: Any, **_: Any) -> None:
        if params.get("Key") == self.key:
            self.seen.append(params.get("Range"))
            self.pins.append((params.get("VersionId"), params.get("IfMatch")))


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
    # An unversioned bucket: every read carries the planned ETag.
    assert {pin for pin in ranges.pins} == {(None, f'"{started["version"]}"')}
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
    from contextlib import ExitStack

    from tests.support import servers

    # A Distributed Map's ItemReader calls S3 from inside the server, at localhost:MOTO_PORT:
    # the server is told its own port (patched only while it starts).
    port = servers.free_port()
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MOTO_PORT", str(port))
            patch.setattr(servers, "free_port", lambda: port)
            server = stack.enter_context(moto_server())
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


def _routed(
    interpreter: MotoServer, prefix: str, lines: int, chunk_size: int
) -> tuple[Any, Any, dict[str, Any]]:
    """An object of `lines` JSONL lines on moto S3, routed to the state machine: the S3
    client, the chunked handlers and the execution input the router sent."""
    s3 = interpreter.client("s3")
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    data = body(lines)
    s3.put_object(Bucket=bucket, Key="in.jsonl", Body=data)
    handlers = chunked_handlers(
        Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(), MemorySink()),
        s3=s3, inline_limit=1, chunk_size=chunk_size, stepfunctions=_Recorder(),
        state_machine_arn="arn:t",
    )  # fmt: skip
    handlers.router(notification(bucket, "in.jsonl", len(data)))
    (doc,) = handlers.stepfunctions.inputs
    return s3, handlers, doc


def test_moto_interpreter_runs_the_map_and_the_fan_in(interpreter: MotoServer) -> None:
    _, handlers, doc = _routed(interpreter, "chunks", 8_000, 60_000)
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


def test_moto_interpreter_sends_a_chunk_whose_letter_fails_too_to_the_dead_letter_queue(
    interpreter: MotoServer,
) -> None:
    sqs = interpreter.client("sqs")
    queue = sqs.create_queue(QueueName=f"dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    # moto's Lambda fails an invocation whose reply is over 6 MB (a function error, as a
    # crashed worker's): the only failure its Docker-less Lambda can give. Here the chunk
    # and then writing its letter fail: the chunk's bare name reaches the queue.
    too_big = "x" * 6_100_000
    results = [too_big, too_big, json.dumps({"complete": False, "missing": [0]})]
    post(interpreter, "/moto-api/static/lambda-simple/response", {"results": results})
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
    assert sent["letter_error"] == "Function.ResponseSizeTooLarge"


def scheduled_payloads(moto: MotoServer, arn: str) -> list[dict[str, Any]]:
    """The Payload of every Lambda task the execution scheduled, in order."""
    events = moto.client("stepfunctions").get_execution_history(executionArn=arn)["events"]
    found = []
    for event in events:
        details = event.get("taskScheduledEventDetails")
        if details and details.get("resourceType") == "lambda":
            found.append(json.loads(details["parameters"])["Payload"])
    return found


def test_moto_interpreter_dead_letters_a_failed_chunk_in_the_pipelines_format_to_replay(
    interpreter: MotoServer,
) -> None:
    from onceflow.chunks import chunk_key
    from onceflow.fan_in import CHUNK_EVENT_TYPE

    s3 = interpreter.client("s3")
    bucket = f"letters-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    data = body(6_000)
    s3.put_object(Bucket=bucket, Key="in.jsonl", Body=data)
    sink, letters = MemorySink(), MemorySink()
    handlers = chunked_handlers(
        Pipeline(Doubler(), sink, MemoryIdempotencyStore(), letters, name="orders"),
        s3=s3, inline_limit=1, chunk_size=60_000, stepfunctions=_Recorder(),
        state_machine_arn="arn:t",
    )  # fmt: skip
    handlers.router(notification(bucket, "in.jsonl", len(data)))
    (doc,) = handlers.stepfunctions.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    count = len(doc["chunks"])
    assert count >= 3
    # Chunk 1 fails in the state machine; the others are run by the real handler.
    replies = [
        json.dumps(handlers.chunk_worker({**item, "index": i})) for i in range(count) if i != 1
    ]
    too_big = "x" * 6_100_000
    fanned = json.dumps(handlers.fan_in(item))
    results = [replies[0], too_big, json.dumps({"dead_lettered": "k"}), *replies[1:], fanned]
    post(interpreter, "/moto-api/static/lambda-simple/response", {"results": results})
    sfn = interpreter.client("stepfunctions")
    worker = lambda_function(interpreter, f"w-{uuid.uuid4().hex[:6]}")
    definition = chunked_state_machine(
        worker_arn=worker,
        fan_in_arn=lambda_function(interpreter, f"f-{uuid.uuid4().hex[:6]}"),
        dead_letter_queue_url=interpreter.client("sqs").create_queue(QueueName=f"d{uuid.uuid4().hex[:8]}")["QueueUrl"],
        max_concurrency=1,
    )  # fmt: skip
    machine = sfn.create_state_machine(
        name=f"chunks-{uuid.uuid4().hex[:8]}", definition=json.dumps(definition),
        roleArn=state_machine_role(interpreter),
    )["stateMachineArn"]  # fmt: skip
    arn = sfn.start_execution(stateMachineArn=machine, input=json.dumps(doc))["executionArn"]
    deadline = time.monotonic() + 60
    while (found := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the execution never finished"
        time.sleep(0.1)
    assert found["status"] == "FAILED" and found.get("error") == "ChunksMissing", found
    # What the catch path handed the chunk worker, as the interpreter scheduled it.
    (caught,) = [p for p in scheduled_payloads(interpreter, arn) if "failed" in p]
    assert caught["index"] == 1 and caught["failed"]["Error"] == "Function.ResponseSizeTooLarge"
    assert handlers.chunk_worker(caught)["error"] == "Function.ResponseSizeTooLarge"
    (letter,) = letters.values()
    key = chunk_key("in.jsonl", doc["version"], 1)
    assert letter["key"] == key and letter["pipeline"] == "orders"
    assert letter["error_type"] == "Function.ResponseSizeTooLarge"
    assert letter["event"]["type"] == CHUNK_EVENT_TYPE and "chunk 1 of s3://" in letter["message"]
    assert '"n"' not in json.dumps(letter)  # names the chunk, never its records
    assert Event.from_cloudevent(letter["event"]).json()["index"] == 1
    # Replayed (here as a redrive of the dead-letter queue would deliver it): chunk 1 runs,
    # the fan-in completes, every record is applied once.
    redrive = {"Records": [{"body": json.dumps(letter)}, {"body": json.dumps({"key": "x"})}]}
    replayed = handlers.replay(redrive)
    assert replayed["replayed"] == [key] and replayed["ignored"] == 1 and not replayed["failed"]
    assert replayed["complete"] == [f"s3://{bucket}/in.jsonl@{doc['version']}"]
    assert sorted(v["n"] for v in sink.values()) == list(range(6_000))
    assert handlers.replay([letter])["replayed"] == [key]  # again: skipped, nothing doubled
    assert len(sink) == 6_000
    # A catch path arriving after the chunk committed (a retry won a race) letters nothing.
    assert handlers.chunk_worker(caught)["committed"] and len(letters) == 1


def test_moto_interpreter_runs_a_distributed_map_reading_its_items_from_s3(
    interpreter: MotoServer,
) -> None:
    s3, handlers, doc = _routed(interpreter, "items", 4_000, 40_000)
    items = json.loads(s3.get_object(Bucket=doc["ledger_bucket"], Key=doc["items"])["Body"].read())
    assert items == [{"index": c["index"]} for c in doc["chunks"]] and len(items) > 2
    del doc["chunks"]  # as for a plan too large for the input: only the items file
    item = {k: doc[k] for k in ("bucket", "key", "version")}
    replies = [handlers.chunk_worker({**item, "index": c["index"]}) for c in items]
    fanned = handlers.fan_in(item)
    post(interpreter, "/moto-api/static/lambda-simple/response",
         {"results": [json.dumps(r) for r in [*replies, fanned]]})  # fmt: skip
    definition = chunked_state_machine(
        worker_arn=lambda_function(interpreter, f"w-{uuid.uuid4().hex[:6]}"),
        fan_in_arn=lambda_function(interpreter, f"f-{uuid.uuid4().hex[:6]}"),
        dead_letter_queue_url="https://unused", max_concurrency=1, distributed=True,
    )  # fmt: skip
    found = run_execution(interpreter, definition, doc)
    # The fan-in's reply is the last queued: it answers the FanIn task only once the Map
    # invoked the worker once per item read from S3 (the child executions' own histories
    # are not the parent's).
    assert found["status"] == "SUCCEEDED", found
    assert json.loads(found["output"])["fan_in"]["result"]["rows"] == 4_000


def test_a_plan_too_large_for_the_execution_input_keeps_only_the_items_file(
    moto: MotoServer, s3_bucket: str
) -> None:
    from onceflow.adapters.aws import chunks

    s3 = moto.client("s3")
    key = f"many/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(3_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    pipeline = Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline, chunk_size=200)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunks, "INLINE_ITEMS_BYTES", 1_000)  # ~60 chunks' worth
        handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    assert "chunks" not in doc
    listed = json.loads(s3.get_object(Bucket=doc["ledger_bucket"], Key=doc["items"])["Body"].read())
    assert len(listed) > 200 and len(json.dumps(doc)) < 1_000


class _Recorder:
    """A Step Functions client that only remembers the executions it was asked to start."""

    class exceptions:
        ExecutionAlreadyExists = type("ExecutionAlreadyExists", (Exception,), {})

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any]] = []

    def start_execution(self, **kwargs: Any) -> None:
        self.inputs.append(json.loads(kwargs["input"]))


# -- reads pinned to the planned version -------------------------------------------------------


def started_handlers(s3: Any, pipeline: Pipeline, **options: Any) -> tuple[Any, _Recorder]:
    recorder = _Recorder()
    settings = {"inline_limit": 1, "chunk_size": 40_000, **options}
    handlers = chunked_handlers(
        pipeline, s3=s3, stepfunctions=recorder, state_machine_arn="arn:t", **settings
    )
    return handlers, recorder


def test_an_object_rewritten_mid_run_fails_its_chunks_clearly(
    moto: MotoServer, s3_bucket: str
) -> None:
    s3 = moto.client("s3")
    key = f"rewritten/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(4_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    sink = MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    assert doc["pin"] == "etag" and len(doc["chunks"]) > 2
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    first = handlers.chunk_worker({**item, "index": 0})
    # Rewritten between chunks, to the same size: no chunk may read the new bytes.
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data.replace(b'"n": 3', b'"n": 9'))
    with pytest.raises(ObjectChanged, match="rewritten since its chunk plan") as caught:
        handlers.chunk_worker({**item, "index": 1})
    assert '"n"' not in str(caught.value)  # names the object, never its contents
    assert first["rows"] > 0 and len(sink) == first["rows"]  # chunk 1 applied nothing
    fanned = handlers.fan_in({k: doc[k] for k in ("bucket", "key", "version")})
    assert not fanned["complete"] and 1 in fanned["missing"]


def test_a_versioned_object_is_read_at_its_version_after_an_overwrite(moto: MotoServer) -> None:
    s3 = moto.client("s3")
    bucket = f"versioned-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = "orders.jsonl"
    ranges = Ranges(s3, key)
    data = body(4_000)
    version = s3.put_object(Bucket=bucket, Key=key, Body=data)["VersionId"]
    sink = MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(bucket, key, len(data), version_id=version))
    (doc,) = recorder.inputs
    assert (doc["version"], doc["pin"]) == (version, "version")
    s3.put_object(Bucket=bucket, Key=key, Body=body(10))  # overwritten before any chunk ran
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    for chunk in doc["chunks"]:
        handlers.chunk_worker({**item, "index": chunk["index"]})
    assert handlers.fan_in(item)["complete"]
    assert sorted(v["n"] for v in sink.values()) == list(range(4_000))  # the planned version
    assert {pin for pin in ranges.pins} == {(version, None)}


def test_an_object_rewritten_after_its_run_gets_a_plan_and_run_of_its_own(
    moto: MotoServer, s3_bucket: str
) -> None:
    s3 = moto.client("s3")
    key = f"rewrite/{uuid.uuid4().hex[:6]}.jsonl"
    first = body(3_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=first)
    sink = MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(s3_bucket, key, len(first)))
    second = body(7_000)  # rewritten: a new ETag, another size, more chunks
    s3.put_object(Bucket=s3_bucket, Key=key, Body=second)
    handlers.router(notification(s3_bucket, key, len(second)))
    old, new = recorder.inputs
    assert old["version"] != new["version"] and len(new["chunks"]) > len(old["chunks"])
    item = {k: new[k] for k in ("bucket", "key", "version", "pin")}
    for chunk in new["chunks"]:
        handlers.chunk_worker({**item, "index": chunk["index"]})
    fanned = handlers.fan_in(item)
    assert fanned["complete"] and fanned["rows"] == 7_000 and fanned["bytes"] == len(second)
    assert sorted({v["n"] for v in sink.values()}) == list(range(7_000))
    # The old version's plan is its own: its chunks cannot read the new bytes.
    before = {k: old[k] for k in ("bucket", "key", "version", "pin")}
    with pytest.raises(ObjectChanged):
        handlers.chunk_worker({**before, "index": 0})
    assert not handlers.fan_in(before)["complete"]


def lambda_error(exc: BaseException) -> dict[str, str]:
    """What Step Functions catches when a Lambda raises `exc`: Lambda's own error shape."""
    import traceback

    trace = traceback.format_exception(exc)
    cause = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": trace}
    return {"Error": type(exc).__name__, "Cause": json.dumps(cause)}


def test_a_chunk_of_a_rewritten_object_is_dead_lettered_as_object_changed(
    moto: MotoServer, s3_bucket: str
) -> None:
    s3 = moto.client("s3")
    key = f"changed/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(3_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    letters = MemorySink()
    pipeline = Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(), letters)
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data + body(10))
    with pytest.raises(ObjectChanged) as caught:
        handlers.chunk_worker({**item, "index": 1})
    # moto's interpreter cannot raise a Lambda error of our type (its Docker-less Lambda
    # only fails on a reply over 6 MB): the catch path's payload is built as Step
    # Functions builds it from Lambda's error, and handed to the real handler.
    handlers.chunk_worker({**item, "index": 1, "failed": lambda_error(caught.value)})
    (letter,) = letters.values()
    assert letter["error_type"] == "ObjectChanged"
    assert "rewritten since its chunk plan" in letter["message"]
    assert "ObjectChanged" in letter["traceback"]
    # Replaying it cannot read the old version either: it says so, and stays a letter.
    replayed = handlers.replay([letter])
    assert replayed["replayed"] == [] and "ObjectChanged" in replayed["failed"][letter["key"]]


def test_a_chunk_letter_in_the_sqs_dead_letter_queue_is_replayed_from_a_redrive(
    moto: MotoServer, s3_bucket: str
) -> None:
    from onceflow.adapters.aws.sqs_sink import SQSSink

    s3, sqs = moto.client("s3"), moto.client("sqs")
    queue = sqs.create_queue(QueueName=f"letters-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    key = f"redrive/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(3_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    processor, sink = Counting(), MemorySink()
    pipeline = Pipeline(processor, sink, MemoryIdempotencyStore(), SQSSink(queue, client=sqs))
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    for chunk in doc["chunks"][1:]:
        handlers.chunk_worker({**item, "index": chunk["index"]})
    # Chunk 0 ran out of attempts: the catch path's payload, as Step Functions builds it.
    failed = lambda_error(ChunkOutOfTime("chunk 0: 1.0 s left of the invocation"))
    handlers.chunk_worker({**item, "index": 0, "failed": failed})
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    letter = json.loads(message["Body"])
    assert letter["error_type"] == "ChunkOutOfTime"
    assert Event.from_cloudevent(letter["event"]).json()["index"] == 0
    # The queue redriven to the function: an SQS event whose body is the letter.
    replayed = handlers.replay({"Records": [{"messageId": "1", "body": message["Body"]}]})
    assert replayed["complete"] and processor.calls == len(sink) == 3_000


def test_a_late_notification_of_an_old_version_plans_that_version(moto: MotoServer) -> None:
    s3 = moto.client("s3")
    bucket = f"versioned-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first, second = body(2_000), body(5_000)
    v1 = s3.put_object(Bucket=bucket, Key="o.jsonl", Body=first)["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="o.jsonl", Body=second)["VersionId"]
    pipeline = Pipeline(Doubler(), MemorySink(), MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(bucket, "o.jsonl", len(second), version_id=v2))
    handlers.router(notification(bucket, "o.jsonl", len(first), version_id=v1))  # late
    new, old = recorder.inputs
    assert (new["version"], old["version"]) == (v2, v1)
    for doc, rows, size in ((new, 5_000, len(second)), (old, 2_000, len(first))):
        item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
        for chunk in doc["chunks"]:
            handlers.chunk_worker({**item, "index": chunk["index"]})
        fanned = handlers.fan_in(item)
        assert (fanned["rows"], fanned["bytes"]) == (rows, size)


# -- the invocation's time left ----------------------------------------------------------------


def test_the_router_runs_inline_only_what_its_time_left_can_read(
    moto: MotoServer, s3_bucket: str
) -> None:
    s3 = moto.client("s3")
    key = f"timed/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(3_000)  # ~100 KB: well under the 64 MiB inline limit
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    processor = Counting()
    pipeline = Pipeline(processor, MemorySink(), MemoryIdempotencyStore(), MemorySink())
    recorder = _Recorder()
    handlers = chunked_handlers(
        pipeline, s3=s3, stepfunctions=recorder, state_machine_arn="arn:t",
        inline_rate=100_000, safety_margin=10.0,
    )  # fmt: skip
    # 10.5 s left: 0.5 s at 100 KB/s reads 50 KB, not this object: the state machine runs it.
    assert handlers.router(notification(s3_bucket, key, len(data)), FakeContext(10_500))
    (doc,) = recorder.inputs
    assert processor.calls == 0 and len(doc["chunks"]) == 1
    # With time enough (a router deployed with a longer timeout) it runs inline.
    other = f"timed/{uuid.uuid4().hex[:6]}.jsonl"
    s3.put_object(Bucket=s3_bucket, Key=other, Body=data)
    handlers.router(notification(s3_bucket, other, len(data)), FakeContext(300_000))
    assert processor.calls == 3_000 and len(recorder.inputs) == 1
    assert handlers.inline(64 << 20, 900.0) and not handlers.inline(64 << 20, 60.0)
    assert handlers.inline(1 << 30, None) is False  # over inline_limit whatever the time


class FakeContext:
    """A Lambda context whose time left is spent by the work done (`spend`)."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def spend(self, ms: int) -> None:
        self.remaining_ms = max(0, self.remaining_ms - ms)

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class Counting(Doubler):
    """Counts its calls; each spends `ms_per_event` of `context`'s time, if given one."""

    def __init__(self) -> None:
        self.calls = 0
        self.context: FakeContext | None = None
        self.ms_per_event = 0

    def process(self, event: Event) -> dict[str, int]:
        self.calls += 1
        if self.context is not None:
            self.context.spend(self.ms_per_event)
        return super().process(event)


def test_a_chunk_worker_stops_between_batches_before_its_timeout(
    moto: MotoServer, s3_bucket: str
) -> None:
    s3 = moto.client("s3")
    key = f"deadline/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(3_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    processor, sink = Counting(), MemorySink()
    pipeline = Pipeline(processor, sink, MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline, batch_size=100, safety_margin=10.0)
    handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    # 30 s left, 5 s a batch: stops after four batches, with the margin still left.
    context = FakeContext(30_000)
    processor.context, processor.ms_per_event = context, 50
    with pytest.raises(ChunkOutOfTime, match="stopped between batches"):
        handlers.chunk_worker({**item, "index": 0}, context)
    assert processor.calls == len(sink) == 400 and context.remaining_ms == 10_000
    processor.context = None
    # Left uncommitted and released: the retry claims it at once (not ChunkBusy) and
    # finishes it; what the first attempt committed is a duplicate, not applied again.
    reply = handlers.chunk_worker({**item, "index": 0}, FakeContext(900_000))
    assert not reply["skipped"] and reply["rows"] > 400
    assert processor.calls == len(sink) == reply["rows"]
    for chunk in doc["chunks"][1:]:
        handlers.chunk_worker({**item, "index": chunk["index"]}, FakeContext(900_000))
    assert handlers.fan_in(item)["rows"] == processor.calls == len(sink) == 3_000


def test_too_little_time_left_starts_nothing(moto: MotoServer, s3_bucket: str) -> None:
    s3 = moto.client("s3")
    key = f"late/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(2_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    processor = Counting()
    pipeline = Pipeline(processor, MemorySink(), MemoryIdempotencyStore(), MemorySink())
    handlers, recorder = started_handlers(s3, pipeline)
    handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    ranges = Ranges(s3, key)
    with pytest.raises(ChunkOutOfTime):
        handlers.chunk_worker({**item, "index": 0}, FakeContext(5_000))
    assert processor.calls == 0 and ranges.seen == []
    # The router runs nothing inline without the time to: it starts the state machine.
    small = f"late/{uuid.uuid4().hex[:6]}.jsonl"
    s3.put_object(Bucket=s3_bucket, Key=small, Body=data)
    inline, started = started_handlers(s3, pipeline, inline_limit=1 << 20)
    inline.router(notification(s3_bucket, small, len(data)), FakeContext(5_000))
    assert processor.calls == 0 and [d["key"] for d in started.inputs] == [small]
    # Should the time run out inline all the same, the object is handed back: Lambda
    # invokes the router again (its committed records are duplicates then).
    processor.context, processor.ms_per_event = FakeContext(12_000), 1
    late = f"late/{uuid.uuid4().hex[:6]}.jsonl"
    s3.put_object(Bucket=s3_bucket, Key=late, Body=data)
    slow = chunked_handlers(pipeline, s3=s3, state_machine_arn="arn:unused", batch_size=100)
    with pytest.raises(BatchFailed):
        slow.router(notification(s3_bucket, late, len(data)), processor.context)
    assert 0 < processor.calls < 2_000


def test_the_router_ignores_the_ledgers_own_files(moto: MotoServer, s3_bucket: str) -> None:
    s3 = moto.client("s3")
    key = f"_onceflow/chunked/{uuid.uuid4().hex[:6]}/plan.json"
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b'{"path": "x"}\n')
    processor = Counting()
    pipeline = Pipeline(processor, MemorySink(), MemoryIdempotencyStore(), MemorySink())
    handlers = chunked_handlers(pipeline, s3=s3, state_machine_arn="arn:unused")
    assert handlers.router(notification(s3_bucket, key, 14))["failed"] == 0
    assert processor.calls == 0


class Outage(Doubler):
    """A downstream outage: every event fails transiently."""

    def process(self, event: Event) -> dict[str, int]:
        raise ConnectionError("the downstream service is down")


def test_redelivery_rounds_inside_a_batch_stop_at_the_invocations_deadline(
    moto: MotoServer, s3_bucket: str
) -> None:
    from onceflow.clock import ManualClock
    from onceflow.fan_in import ChunkIncomplete
    from onceflow.retry import Backoff, RetryPolicy

    s3 = moto.client("s3")
    key = f"outage/{uuid.uuid4().hex[:6]}.jsonl"
    data = body(3_000)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=data)
    clock = ManualClock()
    # Rounds back off 10, 20, 40, 80 s: 150 s of waiting without a deadline.
    slow = RetryPolicy(attempts=1, backoff=Backoff(base=10.0, cap=80.0, jitter=False))
    pipeline = Pipeline(
        Outage(), MemorySink(), MemoryIdempotencyStore(), MemorySink(), clock=clock, retry=slow
    )
    handlers, recorder = started_handlers(s3, pipeline, batch_size=100, safety_margin=10.0)
    handlers.router(notification(s3_bucket, key, len(data)))
    (doc,) = recorder.inputs
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    start = clock.now()
    with pytest.raises(ChunkIncomplete):
        handlers.chunk_worker({**item, "index": 0}, FakeContext(30_000))
    # 30 s left less the 10 s margin: the rounds' waits end within 20 s of the start.
    assert clock.now() - start <= 20.0
