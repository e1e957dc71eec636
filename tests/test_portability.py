"""One processor, one input, four backends: memory, local, AWS and Azure agree exactly.

The `examples.orders` processor gets the lines of `examples/orders/orders.jsonl` as the
events of one delivery on each backend, through that backend's real entry point: the
pipeline directly on memory and on the local SQLite store and sink, the Lambda handler
with a Kinesis payload on the moto server's DynamoDB, and the Azure function app with
an Event Hubs batch on Azurite's Table storage. Each delivery comes twice (the platform
redelivering). Every platform names its events differently (file lines, Kinesis and
Event Hubs sequence numbers), so the pipeline keys orders by their `order_id` (a body
that cannot be read is keyed by its hash): then the output ids, the outputs and the
dead letters must be identical everywhere. A backend that is not installed is skipped
with the reason shown.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from examples.orders.processor import OrderProcessor
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.event import Event
from onceflow.pipeline import Pipeline
from onceflow.serialization import dumps

ORDERS = Path(__file__).resolve().parents[1] / "examples" / "orders" / "orders.jsonl"
BODIES = [line for line in ORDERS.read_bytes().splitlines() if line.strip()]

Result = tuple[dict[str, Any], dict[str, str]]
"""(outputs by output_id, dead-letter error type by output_id), as plain JSON."""


def order_key(event: Event) -> str:
    """The order's business key, the same whichever platform delivered it."""
    try:
        return f"orders#{json.loads(event.data)['order_id']}"
    except (ValueError, KeyError, TypeError):
        return f"orders#body-{hashlib.sha256(event.data).hexdigest()[:20]}"


def pipeline(sink: Any, store: Any, letters: Any) -> Pipeline:
    return Pipeline(OrderProcessor(), sink, store, letters, key=order_key, name="orders")


def plain(contents: dict[str, Any]) -> dict[str, Any]:
    return {oid: json.loads(dumps(value)) for oid, value in contents.items()}


def letters_of(contents: dict[str, Any]) -> dict[str, str]:
    return {oid: letter["error_type"] for oid, letter in contents.items()}


def events() -> list[Event]:
    return [
        Event(id=str(n), source="orders.jsonl", data=body, sequence=str(n))
        for n, body in enumerate(BODIES, start=1)
    ]


def run_memory(_: pytest.FixtureRequest, __: Path) -> Result:
    sink, letters = MemorySink(), MemorySink()
    pipe = pipeline(sink, MemoryIdempotencyStore(), letters)
    for _delivery in range(2):
        pipe.run_batch(events())
    return plain(sink.contents()), letters_of(letters.contents())


def run_local(_: pytest.FixtureRequest, tmp: Path) -> Result:
    local = pytest.importorskip(
        "onceflow.adapters.local", reason="the local backend is not built yet"
    )
    state = tmp / "state.db"
    sink = local.SqliteSink(state)
    letters = local.SqliteSink(state, "dead_letters")
    pipe = pipeline(sink, local.SqliteIdempotencyStore(state), letters)
    for _delivery in range(2):
        pipe.run_batch(events())
    return plain(sink.contents()), letters_of(letters.contents())


def run_aws(request: pytest.FixtureRequest, _: Path) -> Result:
    aws = pytest.importorskip("onceflow.adapters.aws", reason="the AWS backend is not built yet")
    for name in ("lambda_handler", "DynamoDBIdempotencyStore", "DynamoDBSink", "create_table"):
        if not hasattr(aws, name):
            pytest.skip(f"onceflow.adapters.aws has no {name} yet")
    import base64

    moto = request.getfixturevalue("moto")
    client = moto.client("dynamodb")
    state, dead = f"orders-{uuid.uuid4().hex[:8]}", f"letters-{uuid.uuid4().hex[:8]}"
    aws.create_table(client, state)
    aws.create_table(client, dead)
    sink = aws.DynamoDBSink(state, client=client)
    letters = aws.DynamoDBSink(dead, client=client, mode=aws.DynamoDBMode.UPSERT)
    handler = aws.lambda_handler(
        pipeline(sink, aws.DynamoDBIdempotencyStore(state, client=client), letters)
    )
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
    records = [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "p0",
                "sequenceNumber": f"4959{n:052d}",
                "data": base64.b64encode(body).decode(),
                "approximateArrivalTimestamp": 1545084650.987,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"shardId-000000000000:4959{n:052d}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
            "awsRegion": "us-east-1",
            "eventSourceARN": arn,
        }
        for n, body in enumerate(BODIES, start=1)
    ]
    for _delivery in range(2):
        assert handler({"Records": records}, None) == {"batchItemFailures": []}
    return plain(sink.read_all()), letters_of(letters.read_all())


def run_azure(request: pytest.FixtureRequest, _: Path) -> Result:
    azure = pytest.importorskip("onceflow.adapters.azure.entry", reason="no Azure SDK")
    from azure.data.tables import TableServiceClient

    from onceflow.adapters.azure import TableIdempotencyStore, TableSink
    from onceflow.adapters.azure.testing import event_hub_batch

    conn = request.getfixturevalue("azurite_server").connection_string
    service = TableServiceClient.from_connection_string(conn)
    state, dead = f"orders{uuid.uuid4().hex[:8]}", f"letters{uuid.uuid4().hex[:8]}"
    service.create_table(state)
    service.create_table(dead)
    sink = TableSink(state, connection_string=conn)
    letters = TableSink(dead, connection_string=conn)
    store = TableIdempotencyStore(state, connection_string=conn)
    app = azure.function_app(pipeline(sink, store, letters), azure.EventHubTrigger("orders"))
    [function] = app.get_functions()
    for _delivery in range(2):
        anyio.run(function.get_user_function(), event_hub_batch(BODIES, partition="0"))

    async def read() -> Result:
        return plain(await sink.contents()), letters_of(await letters.contents())

    return anyio.run(read)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Result]] = {
    "local": run_local,
    "aws": run_aws,
    "azure": run_azure,
}


@pytest.fixture(scope="module")
def reference() -> Result:
    """What the memory backend leaves: the answer every other backend must give."""
    return run_memory(None, Path())  # type: ignore[arg-type]


def test_memory_reference_is_what_the_orders_say(reference: Result) -> None:
    outputs, letters = reference
    assert len(BODIES) == 19
    assert len(outputs) == 12  # 15 valid lines, 3 of them repeats
    assert outputs["orders#o-1002#0"] == {
        "order_id": "o-1002",
        "user_id": "u-2",
        "items": 4,
        "total": 25.5,
    }
    assert len(letters) == 4 and set(letters.values()) == {"ValidationError"}
    assert "orders#o-1005#dead-letter" in letters


@pytest.mark.emulator
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_same_outputs_and_dead_letters_on_every_backend(
    backend: str, reference: Result, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    outputs, letters = BACKENDS[backend](request, tmp_path)
    assert outputs == reference[0]
    assert letters == reference[1]
