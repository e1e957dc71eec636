"""A large object on moto S3 through the chunk-worker path equals `onceflow run` on the file.

The router plans the object and starts the execution on moto's Step Functions; each
chunk of the plan goes through the chunk-worker Lambda handler (a wall-clock Lambda
context, ranged GETs pinned to the object's ETag), then the fan-in handler. Its outputs,
dead letters and manifest equal those of `onceflow run --workers 2` on the same file in
chunks of the same size; the handlers' replies, fed to moto's Step Functions
interpreter, carry the execution to SUCCEEDED.

A few MB here; `ONCEFLOW_LARGE_OBJECT_MB=200` (`make soak`) runs the issue's 200 MB and
prints the time of each part and the test process's peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from onceflow import Pipeline
from onceflow.adapters.aws.chunks import chunked_handlers
from onceflow.adapters.aws.state_machine import chunked_state_machine
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from tests.aws.test_chunks import (
    ARN,
    Ranges,
    lambda_function,
    notification,
    post,
    run_execution,
    state_machine_role,
)
from tests.local.processors import Doubler
from tests.support.servers import MotoServer, moto_server

pytestmark = pytest.mark.emulator

ROOT = Path(__file__).resolve().parents[2]
MB = int(os.environ.get("ONCEFLOW_LARGE_OBJECT_MB", "4"))
PAD = "x" * 1_000  # about 1 KB a line
BAD_EVERY = 9_973  # `"bad": true` lines: the Doubler refuses them (dead letters)


@pytest.fixture(scope="module")
def interpreter() -> Iterator[MotoServer]:
    """A moto server of its own running Step Functions executions (Lambda without Docker)."""
    with moto_server() as server:
        config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
        post(server, "/moto-api/config", config)
        yield server


class WallContext:
    """A Lambda context with `seconds` to run from its creation, on the wall clock."""

    def __init__(self, seconds: float = 900.0) -> None:
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def make_input(path: Path, size: int) -> tuple[int, int]:
    """A JSONL file of about `size` bytes, with bad lines and one broken line.

    Returns its lines and how many are dead-lettered (the bad ones and the broken one).
    """
    n = bad = 0
    with path.open("w") as handle:
        written = 0
        while written < size:
            line = json.dumps({"n": n, "bad": n % BAD_EVERY == 7, "pad": PAD}) + "\n"
            bad += n % BAD_EVERY == 7
            handle.write(line)
            written += len(line)
            n += 1
            if n == 1_234:
                handle.write("{not json\n")
    return n + 1, bad + 1


def local_run(source: Path, state: Path, out: Path, chunk_size: int) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).with_name("onceflow")), "run", "tests.local.processors:Doubler",
        "--input", str(source), "--state", str(state), "--out", str(out),
        "--chunk-size", str(chunk_size), "--workers", "2", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr  # the dead letters make it 1
    manifest: dict[str, Any] = json.loads(
        next((state / "chunked").rglob("manifest.json")).read_text()
    )
    return manifest


def dead_letters(state: Path) -> int:
    import sqlite3

    with sqlite3.connect(f"{(state / 'state.db').as_uri()}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])


def values(lines: list[str]) -> list[Any]:
    return sorted((json.loads(line) for line in lines), key=str)


def test_a_large_object_through_the_chunk_workers_equals_the_local_run(
    moto: MotoServer, s3_bucket: str, interpreter: MotoServer, tmp_path: Path
) -> None:
    size = MB << 20
    chunk_size = max(1 << 20, size // 12)
    source = tmp_path / "big.jsonl"
    lines, refused = make_input(source, size)
    size = source.stat().st_size
    timings: dict[str, float] = {}

    started = time.perf_counter()
    local = local_run(source, tmp_path / "state", tmp_path / "out.jsonl", chunk_size)
    timings["onceflow run --workers 2"] = time.perf_counter() - started
    expected = values((tmp_path / "out.jsonl").read_text().splitlines())

    s3 = moto.client("s3")
    key = f"landing/{uuid.uuid4().hex[:6]}/big.jsonl"
    started = time.perf_counter()
    s3.upload_file(str(source), s3_bucket, key)  # multipart above 8 MB: an ETag "<md5>-N"
    timings["upload"] = time.perf_counter() - started
    sfn = moto.client("stepfunctions")
    definition = chunked_state_machine(
        worker_arn=ARN + "w", fan_in_arn=ARN + "f", dead_letter_queue_url="https://q"
    )
    machine = sfn.create_state_machine(
        name=f"large-{uuid.uuid4().hex[:8]}",
        definition=json.dumps(definition),
        roleArn=state_machine_role(moto),
    )["stateMachineArn"]
    sink, letters = MemorySink(), MemorySink()
    pipeline = Pipeline(Doubler(), sink, MemoryIdempotencyStore(), letters)
    handlers = chunked_handlers(
        pipeline, state_machine_arn=machine, inline_limit=chunk_size, chunk_size=chunk_size,
        s3=s3, stepfunctions=sfn,
    )  # fmt: skip
    ranges = Ranges(s3, key)

    started = time.perf_counter()
    assert handlers.router(notification(s3_bucket, key, size), WallContext())["failed"] == 0
    timings["router (plan, start)"] = time.perf_counter() - started
    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    doc = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert doc["pin"] == "etag" and len(doc["chunks"]) >= 4

    ranges.seen.clear()
    ranges.pins.clear()
    item = {k: doc[k] for k in ("bucket", "key", "version", "pin")}
    started = time.perf_counter()
    replies = [
        handlers.chunk_worker({**item, "index": chunk["index"]}, WallContext())
        for chunk in doc["chunks"]
    ]
    timings[f"{len(replies)} chunk workers"] = time.perf_counter() - started
    started = time.perf_counter()
    fanned = handlers.fan_in(item, WallContext())
    timings["fan-in"] = time.perf_counter() - started

    # Ranged GETs only, each at most one read piece, pinned, every byte read once.
    spans = [r[6:].split("-") for r in ranges.seen if r]
    assert len(spans) == len(ranges.seen) and all(
        int(b) - int(a) + 1 <= handlers.read_size for a, b in spans
    )
    assert sum(int(b) - int(a) + 1 for a, b in spans) == size
    assert {pin for pin in ranges.pins} == {(None, f'"{doc["version"]}"')}
    # The same outputs, dead letters and manifest as the local run.
    assert values([json.dumps(v) for v in sink.values()]) == expected
    assert len(letters) == dead_letters(tmp_path / "state") == refused
    assert fanned["complete"] and fanned["chunks"] == len(local["chunks"])
    for field in ("rows", "invalid", "bytes", "sha256"):
        assert fanned[field] == local[field], field
    assert fanned["rows"] == lines

    # The state machine, run by moto's interpreter on the handlers' replies.
    post(interpreter, "/moto-api/static/lambda-simple/response",
         {"results": [json.dumps(r) for r in [*replies, fanned]]})  # fmt: skip
    queue = interpreter.client("sqs").create_queue(QueueName=f"d{uuid.uuid4().hex[:8]}")
    run = chunked_state_machine(
        worker_arn=lambda_function(interpreter, f"w-{uuid.uuid4().hex[:6]}"),
        fan_in_arn=lambda_function(interpreter, f"f-{uuid.uuid4().hex[:6]}"),
        dead_letter_queue_url=queue["QueueUrl"],
        max_concurrency=1,
    )
    found = run_execution(interpreter, run, doc)
    assert found["status"] == "SUCCEEDED", found
    assert json.loads(found["output"])["fan_in"]["result"]["rows"] == lines

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{size / 1e6:.0f} MB, {lines} lines, {len(replies)} chunks of {chunk_size} bytes, "
          f"{len(spans)} ranged GETs")  # fmt: skip
    for what, seconds in timings.items():
        print(f"  {what:28} {seconds:7.1f} s")
    print(f"  peak RSS of the test process {peak:.0f} MB (its MemorySink holds every output)")
