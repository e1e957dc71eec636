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

`--instructions` also counts instructions per record under `valgrind --tool=callgrind`,
which load does not move: a design's process run with three timed calls of a kind less
the same process with none, over the records those calls handled. `--cold N` times cold
starts in fresh interpreters (medians of N, interleaved): each framework's handler built
as a container's first invocation builds it (a boto3 DynamoDB client, the store, the sink,
the processor), then its first call on a 10-record Kinesis batch against a moto server.

Run: .venv/bin/python benchmarks/lambda_overhead.py [--records N] [--rounds N] [--only NAME]
     [--kinds kinesis,sqs,dynamodb] [--instructions] [--cold N]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tables import table  # noqa: E402
from onceflow.adapters.aws import dynamodb_change, lambda_handler  # noqa: E402
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


TABLE_STREAM_ARN = (
    "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-12-03T00:00:00.000"
)


def dynamodb_batch(count: int) -> dict[str, Any]:
    """A DynamoDB Streams trigger payload of `count` INSERTs."""
    records = []
    for n in range(count):
        image = {
            "order_id": {"S": f"o{n}"},
            "user_id": {"S": f"u{n % 50}"},
            "total": {"N": str(n % 97)},
        }
        records.append(
            {
                "eventID": f"c81e728d9d4c2f636f067f89cc14{n:08d}",
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1700000000 + n // 1000,
                    "Keys": {"order_id": {"S": f"o{n}"}},
                    "NewImage": image,
                    "SequenceNumber": f"{111 + n:021d}",
                    "SizeBytes": 26,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "eventSourceARN": TABLE_STREAM_ARN,
            }
        )
    return {"Records": records}


PAYLOADS: dict[str, Callable[[int], dict[str, Any]]] = {
    "kinesis": kinesis_batch,
    "sqs": sqs_batch,
    "dynamodb": dynamodb_batch,
}


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
        if event.type.startswith("aws.dynamodb."):
            image = dynamodb_change(event).new_image or {}
            return {"order": image["order_id"], "total": image["total"]}
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
    event_type = {
        "kinesis": EventType.KinesisDataStreams,
        "sqs": EventType.SQS,
        "dynamodb": EventType.DynamoDBStreams,
    }[kind]
    processor = BatchProcessor(event_type=event_type)

    def work(record: Any) -> dict[str, Any]:
        if kind == "dynamodb":
            image = record.dynamodb.new_image
            out = {"order": image["order_id"], "total": image["total"]}
            kept[record.dynamodb.sequence_number] = out
            return out
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

        config = IdempotencyConfig(event_key_jmespath="messageId" if kind == "sqs" else "eventID")
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
    if kind == "dynamodb":
        from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
            DynamoDBRecord,
        )

        return DynamoDBRecord
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


def timed(
    factory: Factory, kind: str, payload: dict[str, Any], records: int, *, collect: bool = True
) -> float:
    """CPU seconds of one first-delivery call on a fresh handler."""
    handler, kept = factory(kind)
    context = Context()
    if collect:
        gc.collect()
    started = time.process_time()
    answer = handler(payload, context)
    elapsed = time.process_time() - started
    assert not (answer or {}).get("batchItemFailures"), answer
    assert kept() == records, f"{kept()} of {records} records kept"
    return elapsed


# -- instruction counts -----------------------------------------------------------------------

CALLS = 3
"""Timed calls in the counted process; the baseline process makes none."""


def _collected(args: list[str]) -> int:
    """Instructions callgrind counts for this script run with `args`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={scratch}/callgrind.out",
                sys.executable,
                __file__,
                "--no-results",
                "--no-gc",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind: {out.stderr[-400:]}")
    return int(found.group(1))


def instructions(design: str, kinds: list[str], records: int) -> dict[str, float]:
    """Instructions per record of `design`'s first-delivery call, per trigger kind."""
    common = ["--only", design, "--records", str(records), "--kinds", ",".join(kinds)]
    base = _collected([*common, "--rounds", "0"])
    per: dict[str, float] = {}
    for kind in kinds:
        counted = _collected([*common, "--rounds", "0", "--count", kind])
        per[kind] = (counted - base) / (CALLS * records)
    return per


# -- cold start -----------------------------------------------------------------------------

COLD_BATCH = """
import base64, json, time, uuid
run = uuid.uuid4().hex[:12]
base = time.time_ns()
payload = {"Records": [{
    "kinesis": {"partitionKey": f"u{n}", "sequenceNumber": f"{base + n}",
                "data": base64.b64encode(json.dumps({"order_id": f"o{n}"}).encode()).decode(),
                "approximateArrivalTimestamp": 1700000000.0},
    "eventSource": "aws:kinesis", "eventID": f"shardId-000000000000:{base + n}",
    "awsRegion": "us-east-1",
    "eventSourceARN": f"arn:aws:kinesis:us-east-1:123456789012:stream/cold-{run}",
} for n in range(10)]}
class Context:
    function_name = "cold"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:cold"
    aws_request_id = "cold-request"
    def get_remaining_time_in_millis(self):
        return 900_000
"""
ONCEFLOW_COLD = """
import boto3
from onceflow.adapters.aws import DynamoDBMode, dynamodb_pipeline_parts, lambda_handler
from onceflow.pipeline import Pipeline
class Work:
    def process(self, event):
        return {"order_id": event.id}
client = boto3.client("dynamodb")
store, sink = dynamodb_pipeline_parts("state", "orders", mode=DynamoDBMode.UPSERT, client=client)
handler = lambda_handler(Pipeline(Work(), sink, store))
"""
POWERTOOLS_COLD = """
import boto3
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer, IdempotencyConfig, idempotent_function,
)
client = boto3.client("dynamodb")
persistence = DynamoDBPersistenceLayer(table_name="pt-state", boto3_client=client)
config = IdempotencyConfig(event_key_jmespath="kinesis.sequenceNumber")
processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
orders = "orders"
@idempotent_function(data_keyword_argument="record", config=config, persistence_store=persistence)
def work(record):
    client.put_item(TableName=orders, Item={"pk": {"S": record["eventID"]}})
    return {"order_id": record["eventID"]}
def record_handler(record):
    return work(record=record.raw_event)
def handler(event, context):
    config.register_lambda_context(context)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
"""
COLD_CALL = """
answer = handler(payload, Context())
assert not (answer or {}).get("batchItemFailures"), answer
"""
COLD = {"onceflow": ONCEFLOW_COLD, "powertools+idempotency": POWERTOOLS_COLD}
"""Each framework's handler as a container builds it: what the cold-start probes run."""


def _cold_once(code: str, env: dict[str, str]) -> tuple[float, float]:
    """(milliseconds to import and build, milliseconds of the first call) in a fresh interpreter."""
    probe = (
        f"import time\nt0 = time.perf_counter()\n{code}\nt1 = time.perf_counter()\n"
        f"{COLD_BATCH}\nt2 = time.perf_counter()\n{COLD_CALL}\nt3 = time.perf_counter()\n"
        "print((t1 - t0) * 1000, (t3 - t2) * 1000)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=ROOT, env=env
    )
    built, call = out.stdout.split()
    return float(built), float(call)


def _importtime(code: str, env: dict[str, str]) -> dict[str, float]:
    """Milliseconds of import (self time, `python -X importtime`) by top-level package."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    tops: dict[str, float] = {}
    for line in out.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if found:
            top = found.group(2).split(".")[0]
            tops[top] = tops.get(top, 0.0) + int(found.group(1)) / 1000
    return dict(sorted(tops.items(), key=lambda kv: -kv[1]))


def cold_starts(repeats: int) -> None:
    """Print the cold-start table: import and build, first call, both, per framework."""
    from onceflow.adapters.aws import create_table
    from tests.support.servers import moto_server

    with moto_server() as server:
        client = server.client("dynamodb")
        create_table(client, "state")
        create_table(client, "orders", ttl_attribute=None)
        client.create_table(
            TableName="pt-state",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "AWS_DEFAULT_REGION": server.region,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_ENDPOINT_URL": server.endpoint,
        }
        for code in COLD.values():  # compiles and caches bytecode: not counted
            _cold_once(code, env)
        built: dict[str, list[float]] = {name: [] for name in COLD}
        called: dict[str, list[float]] = {name: [] for name in COLD}
        total: dict[str, list[float]] = {name: [] for name in COLD}
        for _ in range(repeats):
            for name, code in COLD.items():
                b, c = _cold_once(code, env)
                built[name].append(b)
                called[name].append(c)
                total[name].append(b + c)
        tops = {name: _importtime(code, env) for name, code in COLD.items()}
    rows = [
        [
            name,
            f"{statistics.median(built[name]):.0f}",
            f"{statistics.median(called[name]):.0f}",
            f"{statistics.median(total[name]):.0f}",
        ]
        for name in COLD
    ]
    print(f"\ncold start, medians of {repeats} fresh interpreters (ms)\n")
    print(table(["handler", "import + build", "first call (10 records)", "total"], rows))
    print("\nimport self time by package (-X importtime, one run, ms)\n")
    names = list(COLD)
    packages = sorted({p for t in tops.values() for p in list(t)[:10]})
    print(
        table(
            ["package", *names],
            [[p, *(f"{tops[n].get(p, 0):.1f}" for n in names)] for p in packages],
        )
    )
    ours, theirs = (statistics.median(total[n]) for n in names)
    verdict = "meets" if ours <= theirs else "misses"
    print(f"\ncold start: onceflow {ours / theirs:.2f}x Powertools with idempotency ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", choices=sorted(DESIGNS), help="run one design only")
    parser.add_argument("--kinds", default="kinesis,sqs")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per record (callgrind)"
    )
    parser.add_argument("--cold", type=int, default=0, help="cold-start probes: repeats")
    parser.add_argument("--count", help=argparse.SUPPRESS)  # callgrind's counted process
    parser.add_argument("--no-gc", dest="collect", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="where the table goes (benchmarks/results.json, the cost planner's file)",
    )
    parser.add_argument("--no-results", dest="results", action="store_const", const=None)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    payloads = {kind: PAYLOADS[kind](args.records) for kind in kinds}
    designs = {args.only: DESIGNS[args.only]} if args.only else DESIGNS
    for factory in designs.values():  # warm-up: imports, caches, the event loop
        for kind in kinds:
            timed(factory, kind, payloads[kind], args.records, collect=args.collect)
    if args.count:  # the process callgrind counts: CALLS calls of one kind, nothing printed
        for factory in designs.values():
            for _ in range(CALLS):
                timed(factory, args.count, payloads[args.count], args.records, collect=False)
        return
    if args.rounds == 0:
        if args.cold:
            cold_starts(args.cold)
        return
    times: dict[tuple[str, str], list[float]] = {(d, k): [] for d in designs for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            for name, factory in designs.items():
                times[name, kind].append(timed(factory, kind, payloads[kind], args.records))
    counts = {
        name: instructions(name, kinds, args.records) for name in designs if args.instructions
    }
    rows = []
    for kind in kinds:
        peer = statistics.median(times[PEER, kind]) if PEER in designs else None
        for name in designs:
            median = statistics.median(times[name, kind])
            ratio = f"{median / peer:.2f}x" if peer else "-"
            spread = f"{min(times[name, kind]) * 1e6 / args.records:.1f}"
            row = [kind, name, f"{median * 1e6 / args.records:.1f}", spread, ratio]
            if counts:
                mine = counts[name][kind]
                theirs = counts[PEER][kind] if PEER in counts else None
                row += [f"{mine:,.0f}", f"{mine / theirs:.2f}x" if theirs else "-"]
            rows.append(row)
    print(
        f"{args.records}-record batches, first delivery, trivial work; CPU time, median of "
        f"{args.rounds} interleaved rounds\n"
    )
    headers = ["trigger", "design", "us/record (median)", "us/record (best)", f"vs {PEER}"]
    if counts:
        headers += ["instructions/record", f"vs {PEER} (instr.)"]
    print(table(headers, rows))
    if args.results is not None and not args.only:
        from benchmarks.aws_vs_powertools import merge_table

        medians = {
            f"{name} {kind}": round(statistics.median(times[name, kind]) * 1e6 / args.records, 2)
            for name in designs
            for kind in kinds
        }
        body: dict[str, Any] = {
            "records": args.records,
            "rounds": args.rounds,
            "us_per_record": medians,
        }
        if counts:
            body["instructions_per_record"] = {
                f"{name} {kind}": round(counts[name][kind]) for name in counts for kind in kinds
            }
        merge_table(args.results, "benchmarks/lambda_overhead.py", body)
    if PEER in designs and "onceflow" in designs:
        for kind in kinds:
            ours = statistics.median(times["onceflow", kind])
            peer = statistics.median(times[PEER, kind])
            verdict = "meets" if ours <= 2.5 * peer else "misses"
            line = f"{kind}: onceflow {ours / peer:.2f}x Powertools ({verdict} the 2.5x target)"
            if counts:
                line += f"; {counts['onceflow'][kind] / counts[PEER][kind]:.2f}x by instructions"
            print(line)
    if args.cold:
        cold_starts(args.cold)


if __name__ == "__main__":
    main()
