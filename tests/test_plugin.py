"""The pytest plugin users get with onceflow, its fixtures, and `Faults`' own checks.

The plugin is exercised as a user's suite meets it: a test file in a fresh folder, run by
pytest in a new interpreter that finds the plugin through its `pytest11` entry point.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onceflow import Event, Pipeline, Step
from onceflow.adapters.memory import Faults, MemoryIdempotencyStore, MemorySink

USER_TESTS = """
import json
import pytest
from onceflow import Event, Step
from onceflow.adapters.aws import lambda_handler
from onceflow.adapters.aws.testing import LambdaContext, sqs_event, sqs_record


class Double:
    def process(self, event):
        return {"n": json.loads(event.data)["n"] * 2}


def events(*ns):
    return [Event(id=str(n), source="t", data=json.dumps({"n": n}).encode()) for n in ns]


def test_memory_pipeline_clock_and_faults(onceflow_pipeline, onceflow_faults, onceflow_clock):
    run = onceflow_pipeline(Double())
    onceflow_faults.fail("sink.write")
    assert run.pipeline.run_batch(events(1, 2)).processed == ["1", "2"]
    assert run.sink.values() == [{"n": 2}, {"n": 4}]
    onceflow_faults.crash_at(Step.AFTER_SINK_WRITE)
    with pytest.raises(BaseException):
        run.pipeline.run_batch(events(3))
    onceflow_clock.advance(301)
    assert run.pipeline.run_batch(events(3)).processed == ["3"]
    assert run.pipeline.run_batch(events(3)).duplicates == ["3"]


def test_the_handler_on_the_memory_pipeline(onceflow_pipeline):
    handler = lambda_handler(onceflow_pipeline(Double()).pipeline)
    answer = handler(sqs_event(sqs_record("m1", '{"n": 1}')), LambdaContext())
    assert answer == {"batchItemFailures": []}


def test_a_fault_that_never_fires_fails_the_test(onceflow_faults):
    onceflow_faults.fail("store.claim", times=2)
"""


def test_a_users_suite_gets_the_fixtures_from_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout
    # The third test's body passes; its teardown reports the fault that never fired.
    assert "3 passed, 1 error" in out, out
    assert "planned faults never fired: store.claim (2 of 2 left)" in out, out


def test_importing_the_plugin_loads_no_test_dependencies_beyond_pytest() -> None:
    code = (
        "import sys, onceflow.testing.plugin;"
        "tops = {m.split('.')[0] for m in sys.modules};"
        "print(sorted(tops & {'hypothesis', 'boto3', 'azure'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_faults_refuse_unknown_operations_and_steps() -> None:
    faults = Faults()
    with pytest.raises(
        ValueError, match=r"no backend operation is called 'sink\.put'.*sink\.write"
    ):
        faults.fail("sink.put")
    with pytest.raises(ValueError, match="no pipeline step is called 'after_lunch'"):
        faults.crash_at("after_lunch")


def test_faults_report_what_never_fired() -> None:
    faults = Faults()
    faults.fail("sink.write", times=2)
    faults.crash_at(Step.BEFORE_COMPLETE)
    assert faults.unfired() == ["before_complete (1 of 1 left)", "sink.write (2 of 2 left)"]
    with pytest.raises(AssertionError, match="planned faults never fired"):
        faults.assert_fired()


def test_sink_write_fires_on_the_default_atomic_memory_sink() -> None:
    faults = Faults()
    sink = MemorySink(faults=faults)  # atomic: commits with the store
    pipeline = Pipeline(lambda e: {"id": e.id}, sink, MemoryIdempotencyStore(), MemorySink())
    faults.fail("sink.write", times=2)
    assert pipeline.run_batch([Event(id="1", source="s", data=b"{}")]).processed == ["1"]
    assert faults.failed == ["sink.write", "sink.write"] and faults.unfired() == []
    assert sink.write_counts() == {next(iter(sink.write_counts())): 1}
