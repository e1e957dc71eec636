"""The Lambda handler's framework cost on a memory pipeline against AWS Lambda Powertools.

One run prints one table: per-record microseconds for a 1,000-record Kinesis batch and a
1,000-message SQS batch through

- onceflow: `lambda_handler` over a `Pipeline` on the memory store and sink (exactly once);
- Powertools: `BatchProcessor` + `process_partial_response`, no idempotency;
- Powertools with idempotency: the same plus `idempotent_function` per record. Powertools
  ships no in-memory persistence layer (DynamoDB, Redis/Valkey only), so a dict-backed
  `BasePersistenceLayer` stands in for one here: what is measured is Powertools' own
  idempotency bookkeeping, without any network.

The work is the same everywhere: parse the record's JSON and keep one small dict per record.
Every timed call gets a fresh store (a first delivery, never duplicates); the designs are
interleaved round after round and the median is reported, so a loaded machine slows all
alike. `--only NAME` runs one design (for `valgrind --tool=callgrind` or cProfile).

Run: .venv/bin/python benchmarks/lambda_overhead.py [--records N] [--rounds N] [--only NAME]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tables import table  # noqa: E402
from onceflow.adapters.aws import lambda_handler  # noqa: E402
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink  # noqa: E402
from onceflow.event import Event  # noqa: E402
from onceflow.pipeline import Pipeline  # noqa: E402

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders"

Handler = Callable[[Any, Any], Any]
Factory = Callable[[str], tuple[Handler, Callable[[], int]]]
"""Builds a fresh handler for a trigger kind and a count of the records it kept."""


# -- the payloads ---------------------------------------------------------------------------


def _body(n: int) -> str:
    return json.dumps({"order_id": f"o{n}", "user_id": f"u{n % 50}", "total": n % 97})


def kinesis_batch(count: int) -> dict[str, Any]:
    """A Kinesis trigger payload of `count` records."""
    records = []
    for n in range(count):
        seq = f"4959{n:052d}"
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": f"u{n % 50}",
                    "sequenceNumber": seq,
                    "data": base64.b64encode(_body(n).encode()).decode(),
                    "approximateArrivalTimestamp": 1700000000.0 + n / 1000,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000000:{seq}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
            }
        )
    return {"Records": records}


def sqs_batch(count: int) -> dict[str, Any]:
    """An SQS (standard queue) trigger payload of `count` messages."""
    records = []
    for n in range(count):
        records.append(
            {
                "messageId": f"059f36b4-87a3-44ab-83d2-{n:012d}",
                "receiptHandle": f"AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a{n}",
                "body": _body(n),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(1700000000000 + n),
                    "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                    "ApproximateFirstReceiveTimestamp": str(1700000000100 + n),
                },
                "messageAttributes": {},
                "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
                "eventSource": "aws:sqs",
                "eventSourceARN": QUEUE_ARN,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


class Context:
    """The parts of Lambda's context object the handlers read."""

    function_name = "bench"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id = "bench-request"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


# -- onceflow -------------------------------------------------------------------------------


class Trivial:
    """Parses the payload and keeps one small record."""

    def process(self, event: Event) -> dict[str, Any]:
        body = json.loads(event.data)
        return {"order": body["order_id"], "total": body["total"]}


def onceflow(kind: str) -> tuple[Handler, Callable[[], int]]:
    sink = MemorySink()
    pipeline = Pipeline(Trivial(), sink, MemoryIdempotencyStore(), MemorySink())
    return lambda_handler(pipeline), lambda: len(sink)


# -- Powertools -----------------------------------------------------------------------------


def _powertools(kind: str, idempotent: bool) -> tuple[Handler, Callable[[], int]]:
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    kept: dict[str, dict[str, Any]] = {}
    event_type = EventType.KinesisDataStreams if kind == "kinesis" else EventType.SQS
    processor = BatchProcessor(event_type=event_type)

    def work(record: Any) -> dict[str, Any]:
        text = record.kinesis.data_as_text() if kind == "kinesis" else record.body
        body = json.loads(text)
        out = {"order": body["order_id"], "total": body["total"]}
        kept[record.kinesis.sequence_number if kind == "kinesis" else record.message_id] = out
        return out

    record_handler: Callable[[Any], Any] = work
    if idempotent:
        from aws_lambda_powertools.utilities.idempotency import (
            IdempotencyConfig,
            idempotent_function,
        )

        config = IdempotencyConfig(
            event_key_jmespath="eventID" if kind == "kinesis" else "messageId"
        )
        persistence = dict_persistence_layer()

        @idempotent_function(
            data_keyword_argument="record", persistence_store=persistence, config=config
        )
        def idempotent_work(record: dict[str, Any]) -> dict[str, Any]:
            return work(processor_record(record))

        processor_record = _wrapper(kind)

        def record_handler(record: Any) -> Any:
            return idempotent_work(record=record.raw_event)

    def handler(event: Any, context: Any) -> Any:
        if idempotent:
            config.register_lambda_context(context)
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return handler, lambda: len(kept)


def _wrapper(kind: str) -> Callable[[dict[str, Any]], Any]:
    if kind == "kinesis":
        from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
            KinesisStreamRecord,
        )

        return KinesisStreamRecord
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    return SQSRecord


def _dict_persistence_layer() -> type:
    """A `BasePersistenceLayer` on a dict, with the DynamoDB layer's put condition."""
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyItemAlreadyExistsError,
        IdempotencyItemNotFoundError,
    )
    from aws_lambda_powertools.utilities.idempotency.persistence.base import (
        BasePersistenceLayer,
    )
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import (
        DataRecord,
    )

    class Layer(BasePersistenceLayer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.records: dict[str, DataRecord] = {}

        def _get_record(self, idempotency_key: str) -> DataRecord:
            try:
                return self.records[idempotency_key]
            except KeyError:
                raise IdempotencyItemNotFoundError from None

        def _put_record(self, data_record: DataRecord) -> None:
            old = self.records.get(data_record.idempotency_key)
            if old is not None and not old.is_expired:
                now = int(time.time() * 1000)
                if old.status == "COMPLETED" or (
                    old.in_progress_expiry_timestamp is not None
                    and old.in_progress_expiry_timestamp > now
                ):
                    raise IdempotencyItemAlreadyExistsError(old_data_record=old)
            self.records[data_record.idempotency_key] = data_record

        def _update_record(self, data_record: DataRecord) -> None:
            self.records[data_record.idempotency_key] = data_record

        def _delete_record(self, data_record: DataRecord) -> None:
            self.records.pop(data_record.idempotency_key, None)

    return Layer


def dict_persistence_layer() -> Any:
    return _dict_persistence_layer()()


DESIGNS: dict[str, Factory] = {
    "onceflow": onceflow,
    "powertools": lambda kind: _powertools(kind, idempotent=False),
    "powertools+idempotency": lambda kind: _powertools(kind, idempotent=True),
}
PEER = "powertools"


# -- the run ------------------------------------------------------------------------------


def timed(factory: Factory, kind: str, payload: dict[str, Any], records: int) -> float:
    """CPU seconds of one first-delivery call on a fresh handler."""
    handler, kept = factory(kind)
    context = Context()
    gc.collect()
    started = time.process_time()
    answer = handler(payload, context)
    elapsed = time.process_time() - started
    assert not (answer or {}).get("batchItemFailures"), answer
    assert kept() == records, f"{kept()} of {records} records kept"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", choices=sorted(DESIGNS), help="run one design only")
    parser.add_argument("--kinds", default="kinesis,sqs")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="where the table goes (benchmarks/results.json, the cost planner's file)",
    )
    parser.add_argument("--no-results", dest="results", action="store_const", const=None)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    payloads = {"kinesis": kinesis_batch(args.records), "sqs": sqs_batch(args.records)}
    designs = {args.only: DESIGNS[args.only]} if args.only else DESIGNS
    times: dict[tuple[str, str], list[float]] = {(d, k): [] for d in designs for k in kinds}
    for factory in designs.values():  # warm-up: imports, caches, the event loop
        for kind in kinds:
            timed(factory, kind, payloads[kind], args.records)
    for _ in range(args.rounds):
        for kind in kinds:
            for name, factory in designs.items():
                times[name, kind].append(timed(factory, kind, payloads[kind], args.records))
    rows = []
    for kind in kinds:
        peer = statistics.median(times[PEER, kind]) if PEER in designs else None
        for name in designs:
            median = statistics.median(times[name, kind])
            ratio = f"{median / peer:.2f}x" if peer else "-"
            spread = f"{min(times[name, kind]) * 1e6 / args.records:.1f}"
            rows.append([kind, name, f"{median * 1e6 / args.records:.1f}", spread, ratio])
    print(
        f"{args.records}-record batches, first delivery, trivial work; CPU time, median of "
        f"{args.rounds} interleaved rounds\n"
    )
    print(
        table(
            ["trigger", "design", "us/record (median)", "us/record (best)", f"vs {PEER}"],
            rows,
        )
    )
    if args.results is not None and not args.only:
        from benchmarks.aws_vs_powertools import merge_table

        medians = {
            f"{name} {kind}": round(statistics.median(times[name, kind]) * 1e6 / args.records, 2)
            for name in designs
            for kind in kinds
        }
        merge_table(
            args.results,
            "benchmarks/lambda_overhead.py",
            {"records": args.records, "rounds": args.rounds, "us_per_record": medians},
        )
    if PEER in designs and "onceflow" in designs:
        for kind in kinds:
            ours = statistics.median(times["onceflow", kind])
            peer = statistics.median(times[PEER, kind])
            verdict = "meets" if ours <= 2.5 * peer else "misses"
            print(f"{kind}: onceflow {ours / peer:.2f}x Powertools ({verdict} the 2.5x target)")


if __name__ == "__main__":
    main()
