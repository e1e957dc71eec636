"""DynamoDB's 400 KB item limit on items built by a custom `action=`: the oversized
output's event is dead-lettered naming the limit, and the rest of the batch commits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts
from onceflow.adapters.memory import MemorySink
from onceflow.clock import ManualClock
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.records import Output
from onceflow.retry import Backoff, RetryPolicy
from onceflow.testing.contracts import unique

pytestmark = pytest.mark.emulator

Tables = Callable[[str], str]
FAST = RetryPolicy(attempts=3, backoff=Backoff(base=0.001, cap=0.01))


def test_an_action_item_over_400_kb_is_dead_lettered_and_the_rest_commits(
    dynamodb_client: Any, dynamodb_tables: Tables
) -> None:
    outputs = dynamodb_tables("outputs")

    def put_padded(output: Output) -> dict[str, Any]:
        # A small value whose item the action pads past 400 KB (a denormalised copy, say).
        pad = "p" * (450_000 if output.value["big"] else 10)
        return {"Put": {"Item": {"pk": output.output_id, "value": output.value, "pad": pad}}}

    store, sink = dynamodb_pipeline_parts(
        dynamodb_tables("state"),
        outputs,
        mode=DynamoDBMode.OPTIMISTIC,
        client=dynamodb_client,
        retry=FAST,
        action=put_padded,
    )
    letters = MemorySink()
    pipeline = Pipeline(lambda e: e.json(), sink, store, letters, clock=ManualClock())
    ns = unique("limit")
    events = [
        Event(id=f"e{n}", source=ns, data=json.dumps({"n": n, "big": n == 1}).encode())
        for n in range(3)
    ]
    result = pipeline.run_batch(events)
    assert sorted(result.processed) == ["e0", "e2"], result.reasons
    assert [letter["event"]["id"] for letter in letters.values()] == ["e1"]
    assert "400 KB" in json.dumps(list(letters.values()))
