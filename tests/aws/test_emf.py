"""EmfMetrics: one Embedded Metric Format document per batch through the Lambda handler.

CloudWatch's extraction is not exercised (no local server parses EMF); the documents are
checked against the format's rules: every metric the directive names is a top-level
member, dimension names are top-level strings, values are numbers or lists of numbers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from onceflow import PermanentError
from onceflow.adapters.aws import EmfMetrics, emf, lambda_handler
from onceflow.adapters.aws.testing import kinesis_event, kinesis_record
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline


def check_emf(document: dict[str, Any]) -> dict[str, Any]:
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert isinstance(document["_aws"]["Timestamp"], int)
    for dimensions in directive["Dimensions"]:
        assert all(isinstance(document[d], str) for d in dimensions)
    for metric in directive["Metrics"]:
        value = document[metric["Name"]]
        numbers = value if isinstance(value, list) else [value]
        assert numbers and all(isinstance(v, int | float) for v in numbers)
        assert metric["Unit"] in {"Count", "Milliseconds"}
    return document


def process(event: Event) -> dict[str, Any]:
    if event.json()["n"] == 2:
        raise PermanentError("two is refused")
    return event.json()


def test_one_document_per_batch_with_counters_duration_and_one_cold_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(emf, "_cold", True)
    lines: list[str] = []
    metrics = EmfMetrics(pipeline="orders", source="kinesis:orders", write=lines.append)
    pipeline = Pipeline(
        process, MemorySink(), MemoryIdempotencyStore(), MemorySink(), metrics=metrics
    )
    handler = lambda_handler(pipeline)
    event = kinesis_event(*(kinesis_record(n, json.dumps({"n": n}).encode()) for n in range(4)))
    handler(event, None)
    handler(event, None)  # redelivered: all duplicates
    first, second = (check_emf(json.loads(line)) for line in lines)
    assert first["pipeline"] == "orders" and first["source"] == "kinesis:orders"
    assert (first["received"], first["processed"], first["dead_lettered"]) == (4, 3, 1)
    assert first["ColdStart"] == 1 and "ColdStart" not in second
    assert second["duplicates"] == 4 and second["processed"] == 0
    assert first["BatchDuration"] >= 0
    assert json.dumps(first).count("two is refused") == 0  # reasons never become metrics
