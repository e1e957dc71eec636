"""Lambda handlers of the scheduled operations functions `operations_template.py` declares."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from onceflow.adapters.aws.sdk import boto3_client
from onceflow.adapters.aws.window_counts import DynamoDBWindowCounts
from onceflow.canary_cli import sqs_canary
from onceflow.reconcile import reconcile

__all__ = ["OperationsError", "canary_handler", "reconcile_handler"]

_clients: dict[str, Any] = {}


def _client(service: str) -> Any:
    """One client per service per process: made on the first invocation, kept warm."""
    if service not in _clients:
        _clients[service] = boto3_client(service)
    return _clients[service]


def _emf(pipeline: str, metrics: dict[str, float], units: dict[str, str]) -> None:
    """One EMF line on stdout: Lambda's log group turns it into metrics, no API call."""
    document = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": "onceflow",
                    "Dimensions": [["pipeline"]],
                    "Metrics": [{"Name": n, "Unit": units[n]} for n in metrics],
                }
            ],
        },
        "pipeline": pipeline,
        **metrics,
    }
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


class OperationsError(RuntimeError):
    """A scheduled operations function cannot run: one line naming the cause (a Lambda error)."""


def _setting(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise OperationsError(f"the function's environment has no {name}")
    return value


def reconcile_handler(event: Any, context: Any) -> dict[str, Any]:
    """Reconcile the state table's counts with the sink table's items; emit the gap.

    A state table holding no counts for the pipeline (a deployment from before counts were
    kept, or a pipeline not wired with `count_windows`) raises `OperationsError` and emits
    no metric: a gap of 0 would hide the misconfiguration, a gap of every row would be false.
    """
    pipeline = _setting("ONCEFLOW_PIPELINE")
    state = _setting("ONCEFLOW_STATE_TABLE")
    client = _client("dynamodb")
    windows = DynamoDBWindowCounts(state, client=client).read(pipeline)
    if not windows:
        raise OperationsError(
            f"the state table {state} holds no window counts for pipeline {pipeline!r} "
            "(a deployment from before counts were kept, or no count_windows); nothing emitted"
        )
    sink = os.environ.get("ONCEFLOW_SINK_TABLE")
    rows = None
    if sink:
        rows = sum(
            int(page["Count"])
            for page in client.get_paginator("scan").paginate(
                TableName=sink,
                Select="COUNT",
                # DynamoDBSink's outputs have a `value`; a shared table's markers do not.
                FilterExpression="attribute_exists(#v)",
                ExpressionAttributeNames={"#v": "value"},
            )
        )
    report = reconcile(windows, sink_rows=rows)
    gap = abs(report.sink_gap or 0) + sum(abs(report.window_gap(t)) for t in windows.values())
    _emf(pipeline, {"ReconciliationGap": gap}, {"ReconciliationGap": "Count"})
    return {"windows": len(windows), "sink_rows": rows, "gap": gap}


def canary_handler(event: Any, context: Any) -> dict[str, Any]:
    """Send a canary through the source queue; raise (a Lambda error) when it is not seen."""
    pipeline = os.environ.get("ONCEFLOW_PIPELINE", "onceflow")
    queue_url, table = _setting("ONCEFLOW_CANARY_QUEUE_URL"), _setting("ONCEFLOW_CANARY_TABLE")
    text = os.environ.get("ONCEFLOW_CANARY_DEADLINE", "60")
    try:
        deadline = float(text)
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline) or deadline <= 0:
        raise OperationsError(f"ONCEFLOW_CANARY_DEADLINE {text!r}: a positive number of seconds")
    outcome = sqs_canary(queue_url, table, deadline=deadline)
    seen = outcome.waited is not None
    metrics = {"CanaryFailed": 0.0 if seen else 1.0}
    units = {"CanaryFailed": "Count", "CanarySeconds": "Seconds"}
    if outcome.waited is not None:
        metrics["CanarySeconds"] = outcome.waited
    _emf(pipeline, metrics, units)
    if not seen:
        raise RuntimeError(f"canary {outcome.canary_id} not seen in {outcome.where} in time")
    return {"canary_id": outcome.canary_id, "waited": outcome.waited}
