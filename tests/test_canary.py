"""`onceflow canary`: a marked event through the real source, its output awaited in the sink.

The AWS target runs on the moto server: the canary goes into an SQS queue, a pipeline
pulls it with `SQSSource` and writes a DynamoDB table, and the command sees the output.
Not exercised: Lambda's own SQS trigger (the source decodes messages exactly as it does).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from onceflow.canary import CANARY, is_canary
from onceflow.canary_cli import wait_for
from onceflow.cli import main
from onceflow.event import Event
from tests.support.servers import MotoServer


def test_wait_for_gives_up_at_the_deadline() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert wait_for(lambda: False, 3.0, 1.0, clock=lambda: now[0], sleep=sleep) is None
    assert now[0] == 3.0
    looks = iter([False, False, True])
    now[0] = 0.0
    assert wait_for(lambda: next(looks), 10.0, 2.0, clock=lambda: now[0], sleep=sleep) == 4.0


@pytest.mark.parametrize(
    ("argv", "cause"),
    [
        (["canary"], "name a target"),
        (["canary", "sqs", "http://q", "--table", "t", "--deadline", "soon"], "--deadline"),
        (["canary", "sqs", "http://q", "--table", "t", "--deadline", "0"], "positive"),
        (["canary", "sqs", "http://q", "--table", "t", "--poll", "nan"], "--poll"),
        (["canary", "sqs", "http://q", "--table", "t", "--body", "{nope"], "--body is not JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and cause in err


def test_is_canary_reads_the_mark() -> None:
    assert is_canary(Event(id="1", source="s", attributes={CANARY: "c"}))
    assert not is_canary(Event(id="1", source="s"))


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_key)
    return ["--endpoint-url", moto.endpoint, "--region", moto.region]


@pytest.mark.emulator
def test_the_sqs_canary_is_seen_in_the_dynamodb_sink(moto: MotoServer, aws: list[str]) -> None:
    from onceflow.adapters.aws import DynamoDBMode, DynamoDBSink, SQSSource
    from onceflow.adapters.aws.dynamodb_store import create_table
    from onceflow.adapters.memory import MemoryIdempotencyStore
    from onceflow.pipeline import Pipeline
    from onceflow.runner import run_source

    sqs, dynamodb = moto.client("sqs"), moto.client("dynamodb")
    url = sqs.create_queue(QueueName=f"canary-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    table = f"canary-{uuid.uuid4().hex[:8]}"
    create_table(dynamodb, table, ttl_attribute=None)
    marks: list[str] = []

    def process(event: Event) -> Any:
        if is_canary(event):
            marks.append(event.attributes[CANARY])
        return {"seen": True}

    pipeline = Pipeline(
        process,
        DynamoDBSink(table, mode=DynamoDBMode.UPSERT, client=dynamodb),
        MemoryIdempotencyStore(),
    )
    status: list[int] = []
    argv = ["canary", "sqs", url, "--table", table, "--deadline", "60", "--poll", "0.2"]
    canary = threading.Thread(target=lambda: status.append(main([*argv, "--id", "c-1", *aws])))
    canary.start()
    source = SQSSource(url, client=sqs, wait_seconds=1, stop_when_empty=True)
    while canary.is_alive():
        anyio.run(lambda: run_source(pipeline, source))
    canary.join()
    assert status == [0]
    assert marks == ["c-1"]


@pytest.mark.emulator
def test_a_canary_nobody_processes_exits_1(
    moto: MotoServer, aws: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from onceflow.adapters.aws.dynamodb_store import create_table

    url = moto.client("sqs").create_queue(QueueName=f"idle-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    table = f"idle-{uuid.uuid4().hex[:8]}"
    create_table(moto.client("dynamodb"), table, ttl_attribute=None)
    argv = ["canary", "sqs", url, "--table", table, "--deadline", "0.3", "--poll", "0.1", *aws]
    assert main(argv) == 1
    assert "no output" in capsys.readouterr().err


@pytest.mark.emulator
def test_a_queue_that_does_not_exist_is_bad_input(
    moto: MotoServer, aws: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{moto.endpoint}/123456789012/missing-{uuid.uuid4().hex[:8]}"
    assert main(["canary", "sqs", url, "--table", "t", *aws]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "canary not sent" in err


def test_the_local_canary_is_seen_in_the_runners_state(tmp_path: Path) -> None:
    from onceflow.adapters.local.file_source import DirectorySource
    from onceflow.adapters.local.state import LocalState
    from onceflow.pipeline import Pipeline
    from onceflow.runner import run_source

    landing, state_dir = tmp_path / "landing", tmp_path / "state"
    landing.mkdir()
    state = LocalState(state_dir, create=True)
    bodies: list[Any] = []

    def process(event: Event) -> Any:
        bodies.append(event.json())
        return {"ok": True}

    pipeline = Pipeline(process, state.sink, state.store, state.dead_letters)
    status: list[int] = []
    argv = ["canary", "local", str(landing), "--state", str(state_dir), "--id", "c-2"]
    canary = threading.Thread(
        target=lambda: status.append(main([*argv, "--deadline", "60", "--poll", "0.1"]))
    )
    canary.start()
    while canary.is_alive():
        anyio.run(run_source, pipeline, DirectorySource(landing, state=state.database))
    canary.join()
    assert status == [0]
    assert bodies == [{CANARY: "c-2"}]


@pytest.mark.parametrize(
    ("make", "cause"),
    [("no landing", "landing folder"), ("no state", "no onceflow state")],
)
def test_the_local_canary_needs_a_landing_folder_and_a_state(
    tmp_path: Path, make: str, cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    landing, state = tmp_path / "landing", tmp_path / "state"
    if make == "no state":
        landing.mkdir()
    assert main(["canary", "local", str(landing), "--state", str(state)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and cause in err
    assert not landing.exists() or list(landing.iterdir()) == []  # nothing written
