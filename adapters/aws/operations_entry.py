"""Lambda handlers of the scheduled operations functions `operations_template.py` declares."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from onceflow.adapters.aws.sdk import boto3_client
from onceflow.adapters.aws.window_counts import DynamoDBWindowCounts
from onceflow.canary_cli import sqs_canary
from onceflow.reconcile import reconcile

__all__ = ["canary_handler", "reconcile_handler"]

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


def reconcile_handler(event: Any, context: Any) -> dict[str, Any]:
    """Reconcile the state table's counts with the sink table's items; emit the gap."""
    pipeline = os.environ["ONCEFLOW_PIPELINE"]
    client = _client("dynamodb")
    windows = DynamoDBWindowCounts(os.environ["ONCEFLOW_STATE_TABLE"], client=client).read(pipeline)
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
    outcome = sqs_canary(
        os.environ["ONCEFLOW_CANARY_QUEUE_URL"],
        os.environ["ONCEFLOW_CANARY_TABLE"],
        deadline=float(os.environ.get("ONCEFLOW_CANARY_DEADLINE", "60")),
    )
    seen = outcome.waited is not None
    metrics = {"CanaryFailed": 0.0 if seen else 1.0}
    units = {"CanaryFailed": "Count", "CanarySeconds": "Seconds"}
    if outcome.waited is not None:
        metrics["CanarySeconds"] = outcome.waited
    _emf(pipeline, metrics, units)
    if not seen:
        raise RuntimeError(f"canary {outcome.canary_id} not seen in {outcome.where} in time")
    return {"canary_id": outcome.canary_id, "waited": outcome.waited}
