"""What a Lambda handler imports before its first record: no boto3 until a client is made."""

from __future__ import annotations

import subprocess
import sys

SDK = "{'boto3', 'botocore', 's3transfer'}"


def _modules_after(code: str) -> list[str]:
    """The SDK modules loaded after running `code` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {SDK}))"
    env = {"AWS_DEFAULT_REGION": "us-east-1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    return [m.strip("' ") for m in out.stdout.strip().strip("[]").split(",") if m.strip()]


def test_a_handler_built_on_the_dynamodb_store_and_sink_imports_no_boto3() -> None:
    # UPSERT only: in the atomic modes, building the Pipeline asks the sink whether it
    # commits with the store, and DynamoDBSink.commits_with compares the two clients'
    # regions and endpoints, which makes both clients (and imports boto3) at build time.
    code = """
from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts, lambda_handler
from onceflow.pipeline import Pipeline
class Work:
    def process(self, event):
        return {"order_id": event.id}
store, sink = dynamodb_pipeline_parts("state", "orders", mode=DynamoDBMode.UPSERT)
handler = lambda_handler(Pipeline(Work(), sink, store))
"""
    assert _modules_after(code) == []


def test_the_runtime_entry_and_a_first_call_on_a_memory_pipeline_import_no_boto3() -> None:
    code = """
import json
import onceflow.adapters.aws.runtime
from onceflow.adapters.aws import lambda_handler, testing as aws
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.pipeline import Pipeline
class Work:
    def process(self, event):
        return event.json()
handler = lambda_handler(Pipeline(Work(), MemorySink(), MemoryIdempotencyStore()))
records = [aws.kinesis_record(n, json.dumps({"n": n}).encode()) for n in range(3)]
assert handler(aws.kinesis_event(*records), aws.LambdaContext()) == {"batchItemFailures": []}
messages = [aws.sqs_record(f"m{n}", json.dumps({"n": n})) for n in range(3)]
assert handler(aws.sqs_event(*messages), aws.LambdaContext()) == {"batchItemFailures": []}
"""
    assert _modules_after(code) == []


def test_converting_an_item_imports_boto3s_type_module_on_first_use() -> None:
    code = """
from onceflow.adapters.aws import dynamodb_types
before = [m for m in sys.modules if m.startswith("boto3")]
assert before == [], before
assert dynamodb_types.from_wire(dynamodb_types.to_wire({"n": 1.5, "b": b"x"})["M"]) == {
    "n": __import__("decimal").Decimal("1.5"), "b": b"x"}
"""
    assert "boto3.dynamodb.types" in _modules_after(code)
