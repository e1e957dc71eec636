"""CloudFormation for operating a deployed pipeline: a scheduled canary, a scheduled
reconciliation, and alarms on both.

`operations_resources` returns resources to add to the SAM template `template.py` makes
(it uses that template's `AlarmTopicArn` parameter and `HasAlarmTopic` condition):

- `ReconcileFunction`, on a schedule (a SAM `Schedule` event: an `AWS::Events::Rule` and
  its invoke permission), runs `operations_entry.reconcile_handler`: it reads the window
  counts from the state table, counts the sink table's items (a `Select=COUNT` scan) and
  writes the unexplained gap as the EMF metric `onceflow/ReconciliationGap`;
  `ReconciliationGapAlarm` fires when it is above 0.
- For an SQS trigger with a DynamoDB sink, `CanaryFunction` on a schedule runs
  `operations_entry.canary_handler` (`onceflow canary sqs` as a function: it raises when
  the output is not seen by the deadline); `CanaryAlarm` fires on its errors and when it
  stops reporting (missing data is breaching).
"""

from __future__ import annotations

from typing import Any

from onceflow.deployment import Deployment, TriggerKind

__all__ = ["RECONCILIATION_METRIC", "operations_resources"]

RECONCILIATION_METRIC = "ReconciliationGap"
NAMESPACE = "onceflow"
_ENTRY = "onceflow.adapters.aws.operations_entry"


def _table_arn(name: Any) -> dict[str, Any]:
    return {
        "Fn::Sub": [
            "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${Name}",
            {"Name": name},
        ]
    }


def _queue_arn(name: Any) -> dict[str, Any]:
    return {
        "Fn::Sub": [
            "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${Name}",
            {"Name": name},
        ]
    }


def _actions() -> dict[str, Any]:
    return {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}


def _function(
    handler: str,
    description: str,
    variables: dict[str, Any],
    statements: list[dict[str, Any]],
    schedule: str,
    *,
    code_uri: str,
    runtime: str,
    timeout: int,
) -> dict[str, Any]:
    return {
        "Type": "AWS::Serverless::Function",
        "Metadata": {"BuildMethod": runtime},
        "Properties": {
            "Description": description,
            "Handler": f"{_ENTRY}.{handler}",
            "Runtime": runtime,
            "CodeUri": code_uri,
            "Timeout": timeout,
            "MemorySize": 256,
            "Environment": {"Variables": variables},
            "Policies": [{"Version": "2012-10-17", "Statement": statements}],
            "Events": {
                "Schedule": {"Type": "Schedule", "Properties": {"Schedule": schedule}},
            },
        },
    }


def _alarm(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": description,
            "Period": 60,
            "EvaluationPeriods": 1,
            "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold",
            "AlarmActions": _actions(),
            **properties,
        },
    }


def operations_resources(
    deployment: Deployment,
    *,
    state_table: Any,
    sink_table: Any | None = None,
    source_queue: Any | None = None,
    source_queue_url: Any | None = None,
    schedule: str = "rate(15 minutes)",
    canary_deadline: int = 120,
    code_uri: str = ".",
    runtime: str = "python3.12",
) -> dict[str, Any]:
    """The operations resources for `deployment`: reconciliation always, the canary when
    the trigger is SQS and a DynamoDB sink table is given. Names are CloudFormation values
    (a `Ref`, an `Fn::If` of created-or-existing), as the template builder holds them."""
    pipeline = deployment.name
    reads = [
        {
            "Sid": "ReadCounts",
            "Effect": "Allow",
            "Action": ["dynamodb:Scan"],
            "Resource": [_table_arn(state_table)]
            + ([_table_arn(sink_table)] if sink_table is not None else []),
        }
    ]
    variables: dict[str, Any] = {"ONCEFLOW_STATE_TABLE": state_table, "ONCEFLOW_PIPELINE": pipeline}
    if sink_table is not None:
        variables["ONCEFLOW_SINK_TABLE"] = sink_table
    resources: dict[str, Any] = {
        "ReconcileFunction": _function(
            "reconcile_handler",
            f"onceflow reconciliation of {pipeline}: writes the unexplained gap as a metric",
            variables,
            reads,
            schedule,
            code_uri=code_uri,
            runtime=runtime,
            timeout=300,
        ),
        "ReconciliationGapAlarm": _alarm(
            "events are missing: the counts kept with the state and the sink's rows disagree "
            "beyond duplicates, filtered and dead-lettered events (run onceflow reconcile)",
            {
                "Namespace": NAMESPACE,
                "MetricName": RECONCILIATION_METRIC,
                "Dimensions": [{"Name": "pipeline", "Value": pipeline}],
                "Statistic": "Maximum",
                "TreatMissingData": "notBreaching",
            },
        ),
    }
    canary_fits = deployment.trigger.kind in (TriggerKind.SQS, TriggerKind.SQS_FIFO)
    if canary_fits and sink_table is not None and source_queue is not None:
        resources["CanaryFunction"] = _function(
            "canary_handler",
            f"onceflow canary of {pipeline}: a marked event through the queue to the table",
            {
                "ONCEFLOW_CANARY_QUEUE_URL": source_queue_url,
                "ONCEFLOW_CANARY_TABLE": sink_table,
                "ONCEFLOW_CANARY_DEADLINE": str(canary_deadline),
                "ONCEFLOW_PIPELINE": pipeline,
            },
            [
                {
                    "Sid": "SendCanary",
                    "Effect": "Allow",
                    "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
                    "Resource": [_queue_arn(source_queue)],
                },
                {
                    "Sid": "SeeOutput",
                    "Effect": "Allow",
                    "Action": ["dynamodb:GetItem", "dynamodb:DescribeTable"],
                    "Resource": [_table_arn(sink_table)],
                },
            ],
            schedule,
            code_uri=code_uri,
            runtime=runtime,
            timeout=min(900, canary_deadline + 30),
        )
        resources["CanaryAlarm"] = _alarm(
            "the canary's event did not come out of the pipeline in time (or the canary "
            "stopped running): the pipeline is stuck or losing events",
            {
                "Namespace": "AWS/Lambda",
                "MetricName": "Errors",
                "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": "CanaryFunction"}}],
                "Statistic": "Sum",
                # A schedule that stopped invoking the canary is as bad as a failing one.
                "Period": 3600,
                "TreatMissingData": "breaching",
            },
        )
    return resources
