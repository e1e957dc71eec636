"""EMF documents without a source: the pipeline dimension alone, never an empty value."""

from __future__ import annotations

import json

import pytest

from onceflow.adapters.aws import emf
from onceflow.adapters.aws.emf import EmfMetrics


def test_an_empty_source_leaves_the_source_dimension_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emf, "_cold", True)
    lines: list[str] = []
    metrics = EmfMetrics(pipeline="orders", write=lines.append, clock=lambda: 1.0)
    metrics.count("received", 2)
    metrics.timing("batch_seconds", 0.25)
    metrics.count("received")
    metrics.timing("batch_seconds", 0.5)
    first, second = (json.loads(line) for line in lines)
    [directive] = first["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["pipeline"]] and "source" not in first
    assert first["pipeline"] == "orders" and first["received"] == 2
    assert first["ColdStart"] == 1 and "ColdStart" not in second
    assert first["BatchDuration"] == 250.0
    names = {m["Name"] for m in directive["Metrics"]}
    assert {"received", "processed", "duplicates", "dead_lettered", "failed"} <= names
    assert "ColdStart" in names
