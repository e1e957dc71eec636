"""onceflow's Lambda entry against AWS Lambda Powertools on one moto server, in one run.

The same 1,000-record Kinesis batch and the same work (one DynamoDB item written per
event) go through Powertools (`BatchProcessor` + `idempotent_function` with
`DynamoDBPersistenceLayer`) and through onceflow (`lambda_handler` + the DynamoDB
store and sink, in upsert, optimistic and atomic modes); then the batch is
delivered again. DynamoDB requests are counted with a botocore event hook and write
units as DynamoDB bills them (1 per KB written, 2 per KB in a transaction). Cold
start is the import of each handler's modules in a fresh interpreter.

The per-event figures (DynamoDB requests, write and read units per event per design and
delivery, client CPU microseconds per record, cold starts) go to `benchmarks/results.json`
(`onceflow.capacity.results_document`), which `onceflow plan` reads. `measure()`,
`figures_of()`, `write_results()` and `cold_starts()` are importable: importing this module
does no work.

Run: .venv/bin/python benchmarks/aws_vs_powertools.py [--records N] [--imports N]
     [--results PATH | --no-results]
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tables import table  # noqa: E402
from onceflow.adapters.aws import (  # noqa: E402
    DynamoDBMode,
    create_table,
    dynamodb_pipeline_parts,
    lambda_handler,
)
from onceflow.adapters.aws.testing import CapacityMeter  # noqa: E402
from onceflow.capacity import Figures, find_figures, results_document  # noqa: E402
from onceflow.errors import ConfigurationError  # noqa: E402
from onceflow.event import Event  # noqa: E402
from onceflow.pipeline import Pipeline  # noqa: E402
from tests.support.servers import MotoServer, moto_server  # noqa: E402

STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
RESULTS = ROOT / "benchmarks" / "results.json"
TABLE = "benchmarks/aws_vs_powertools.py"
"""This benchmark's name in the results document's `tables`."""
MODES = {
    "upsert": DynamoDBMode.UPSERT,
    "optimistic": DynamoDBMode.OPTIMISTIC,
    "atomic": DynamoDBMode.FENCED,
}


# -- the workload ---------------------------------------------------------------------------


def kinesis_batch(count: int) -> dict[str, Any]:
    """A Kinesis trigger payload of `count` order records."""
    records = []
    for n in range(count):
        body = {"order_id": f"o{n}", "user_id": f"u{n % 50}", "total": f"{n % 97}.50"}
        seq = f"4959{n:052d}"
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": body["user_id"],
                    "sequenceNumber": seq,
                    "data": base64.b64encode(json.dumps(body).encode()).decode(),
                    "approximateArrivalTimestamp": 1700000000.0,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"shardId-000000000000:{seq}",
                "eventName": "aws:kinesis:record",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
            }
        )
    return {"Records": records}


class Context:
    """The Lambda context attributes both handlers read."""

    function_name = "orders"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:orders"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


# -- counting DynamoDB requests and write units ----------------------------------------------


Meter = CapacityMeter
"""DynamoDB requests by operation, and write units as billed."""


def metered_client(server: MotoServer, meter: Meter) -> Any:
    # Counted before the request is sent; failed conditional writes are billed too.
    return meter.attach(server.client("dynamodb"))


# -- the two contenders ---------------------------------------------------------------------


def powertools_handler(server: MotoServer, meter: Meter) -> Callable[[Any, Any], Any]:
    """Powertools' documented batch + idempotency pattern, writing one item per record."""
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
        KinesisStreamRecord,
    )
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    client = metered_client(server, meter)
    state, orders = f"pt-state-{uuid.uuid4().hex[:6]}", f"pt-orders-{uuid.uuid4().hex[:6]}"
    client.create_table(
        TableName=state,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    create_table(client, orders, ttl_attribute=None)
    meter.requests.clear()
    meter.write_units = 0
    persistence = DynamoDBPersistenceLayer(table_name=state, boto3_client=client)
    config = IdempotencyConfig(event_key_jmespath="kinesis.sequenceNumber")
    processor = BatchProcessor(event_type=EventType.KinesisDataStreams)

    @idempotent_function(  # type: ignore[untyped-decorator]
        data_keyword_argument="record", config=config, persistence_store=persistence
    )
    def record_handler(record: KinesisStreamRecord) -> dict[str, Any]:
        order = json.loads(record.kinesis.data_as_bytes())
        client.put_item(
            TableName=orders,
            Item={
                "pk": {"S": order["order_id"]},
                "user_id": {"S": order["user_id"]},
                "total": {"N": str(Decimal(order["total"]))},
            },
        )
        return {"order_id": order["order_id"]}

    def handler(event: Any, context: Any) -> Any:
        config.register_lambda_context(context)
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return handler


class OrderItem:
    """One item per order, as the Powertools handler writes it."""

    def process(self, event: Event) -> dict[str, Any]:
        order = json.loads(event.data)
        return {
            "order_id": order["order_id"],
            "user_id": order["user_id"],
            "total": Decimal(order["total"]),
        }


def onceflow_handler(
    server: MotoServer, meter: Meter, mode: str
) -> tuple[Callable[..., Any], list[str]]:
    """onceflow's handler in `mode`: upsert, optimistic or atomic; and its table names."""
    client = metered_client(server, meter)
    state, orders = f"of-state-{uuid.uuid4().hex[:6]}", f"of-orders-{uuid.uuid4().hex[:6]}"
    create_table(client, state)
    create_table(client, orders, ttl_attribute=None)
    meter.requests.clear()
    meter.write_units = 0
    store, sink = dynamodb_pipeline_parts(state, orders, mode=MODES[mode], client=client)
    return lambda_handler(Pipeline(OrderItem(), sink, store)), [state, orders]


# -- runs ------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    delivery: str
    seconds: float
    requests: int
    write_units: int
    events: int
    failures: int
    note: str = ""
    read_units: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of this process: handler, framework and SDK (moto runs elsewhere)."""

    def cells(self) -> list[str]:
        per = self.events or 1
        return [
            self.name,
            self.delivery,
            f"{self.seconds:.2f}",
            f"{self.requests / per:.3f}",
            f"{self.write_units / per:.2f}",
            f"{self.read_units / per:.2f}",
            f"{self.cpu_seconds * 1e6 / per:.0f}",
            str(self.failures),
            self.note,
        ]


def run(
    name: str,
    handler: Callable[[Any, Any], Any],
    meter: Meter,
    event: dict[str, Any],
    events: int,
    note: Callable[[], str] = lambda: "",
) -> list[Row]:
    rows = []
    for delivery in ("first", "again"):
        meter.requests.clear()
        meter.write_units = 0
        meter.read_units = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        answer = handler(event, Context())
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        failures = len((answer or {}).get("batchItemFailures", []))
        rows.append(
            Row(
                name,
                delivery,
                seconds,
                meter.total,
                meter.write_units,
                events,
                failures,
                note() if delivery == "first" else "",
                meter.read_units,
                cpu,
            )
        )
    return rows


def item_counts(server: MotoServer, tables: list[str]) -> str:
    client = server.client("dynamodb")
    sizes = [client.scan(TableName=t, Select="COUNT")["Count"] for t in tables]
    return "table items after: " + " + ".join(str(s) for s in sizes)


def import_seconds(code: str, repeats: int) -> float:
    """Median wall time of `code` (imports, lines of Python) in a fresh interpreter."""
    probe = f"import time\nt = time.perf_counter()\n{code}\nprint(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", probe],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"PATH": "", "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(ROOT)},
        )
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def figures_of(rows: list[Row]) -> dict[str, Figures]:
    """The first-delivery figures per design (the cost planner's per-event inputs)."""
    designs: dict[str, Figures] = {}
    for r in rows:
        if r.delivery != "first":
            continue
        per = r.events or 1
        designs[r.name.removeprefix("onceflow ")] = Figures(
            requests=round(r.requests / per, 4),
            write_units=round(r.write_units / per, 4),
            read_units=round(r.read_units / per, 4),
            runner_us=round(r.cpu_seconds * 1e6 / per, 1),
            items_written=1.0,
        )
    return designs


def per_event_table(rows: list[Row]) -> list[dict[str, Any]]:
    """Every row (both deliveries) per event, for `benchmarks/results.json`."""
    out = []
    for r in rows:
        per = r.events or 1
        out.append(
            {
                "design": r.name.removeprefix("onceflow "),
                "delivery": r.delivery,
                "events": r.events,
                "requests_per_event": round(r.requests / per, 4),
                "write_units_per_event": round(r.write_units / per, 4),
                "read_units_per_event": round(r.read_units / per, 4),
                "us_per_record": round(r.cpu_seconds * 1e6 / per, 1),
                "wall_seconds": round(r.seconds, 3),
                "failures": r.failures,
            }
        )
    return out


def write_figures(path: Path, rows: list[Row]) -> None:
    """The first-delivery figures per design, in the file the package ships (`--figures`)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    # Designs this script does not measure (the naive line, Azure) are kept as they were.
    merged = {**old.get("designs", {}), **{k: vars(v) for k, v in figures_of(rows).items()}}
    body = {
        "measured": time.strftime("%Y-%m-%d"),
        "source": "benchmarks/aws_vs_powertools.py (Kinesis batch, one item per event, moto)",
        "designs": dict(sorted(merged.items())),
    }
    path.write_text(json.dumps(body, indent=2) + "\n")


def write_results(
    path: Path, rows: list[Row], *, cold_start_ms: dict[str, float] | None = None
) -> dict[str, Any]:
    """Write `rows` into the results document at `path` (`onceflow.capacity`'s format).

    The per-design figures join those already there (designs not measured now, the naive
    line and Azure, keep theirs); this benchmark's own table replaces its previous one;
    other benchmarks' tables are kept.
    """
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    kept: dict[str, Figures] = {}
    if old:
        try:
            kept = find_figures(path)[0]
        except ConfigurationError:
            kept = {}
    figures = {**kept, **figures_of(rows)}
    today = time.strftime("%Y-%m-%d")
    document = results_document(
        figures,
        measured=today,
        source=f"{TABLE} (Kinesis batch, one item per event, moto server)",
    )
    tables = dict(old.get("tables", {})) if isinstance(old.get("tables"), dict) else {}
    tables[TABLE] = {"measured": today, "rows": per_event_table(rows)}
    if cold_start_ms:
        tables[TABLE]["cold_start_ms"] = {k: round(v, 1) for k, v in cold_start_ms.items()}
    document["tables"] = dict(sorted(tables.items()))
    path.write_text(json.dumps(document, indent=2) + "\n")
    return document


def merge_table(path: Path, name: str, body: dict[str, Any]) -> None:
    """Put one benchmark's table into the results document at `path` under `tables[name]`.

    Figures and other tables in it are kept; a missing document starts from the figures
    the package ships, so `onceflow plan` can always read it.
    """
    document: dict[str, Any] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text())
        except ValueError:
            document = {}
    if not isinstance(document, dict) or "cost_figures" not in document:
        shipped = ROOT / "corelib" / "cost_figures.json"
        figures, _ = find_figures(shipped)
        document = results_document(
            figures, measured=time.strftime("%Y-%m-%d"), source=f"{shipped.name} (shipped)"
        )
    tables = document.get("tables")
    tables = dict(tables) if isinstance(tables, dict) else {}
    tables[name] = {"measured": time.strftime("%Y-%m-%d"), **body}
    document["tables"] = dict(sorted(tables.items()))
    path.write_text(json.dumps(document, indent=2) + "\n")


def measure(records: int = 1000, modes: tuple[str, ...] = tuple(MODES)) -> list[Row]:
    """One run of every design on a fresh moto server: Powertools, then onceflow in each
    of `modes` (its own runner: on a Kinesis shard every mode settles by the lane's
    watermark); each design delivers the batch twice."""
    event = kinesis_batch(records)
    rows: list[Row] = []
    with moto_server() as server:
        meter = Meter()
        rows += run("powertools", powertools_handler(server, meter), meter, event, records)
        for mode in modes:
            meter = Meter()
            handler, tables = onceflow_handler(server, meter, mode)
            rows += run(
                f"onceflow {mode}",
                handler,
                meter,
                event,
                records,
                functools.partial(item_counts, server, tables),
            )
    return rows


# The like-for-like pair: each framework's handler for the same trivial record work, built
# as a container's first invocation builds it (a DynamoDB client, the idempotency store,
# the sink, the batch processor), with no user models to import on either side.
ONCEFLOW_BUILT = """
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
POWERTOOLS_BUILT = """
import boto3
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer, IdempotencyConfig, idempotent_function,
)
client = boto3.client("dynamodb")
persistence = DynamoDBPersistenceLayer(table_name="state", boto3_client=client)
config = IdempotencyConfig(event_key_jmespath="kinesis.sequenceNumber")
processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
@idempotent_function(data_keyword_argument="record", config=config, persistence_store=persistence)
def work(record):
    return {"order_id": record["eventID"]}
"""
OURS_BUILT = "onceflow handler built: DynamoDB store, sink, a boto3 client"
THEIRS_BUILT = "powertools batch + idempotency built: DynamoDB layer, a boto3 client"
COLD_START = {
    OURS_BUILT: ONCEFLOW_BUILT,
    THEIRS_BUILT: POWERTOOLS_BUILT,
    "examples.orders.lambda_function import (3 pydantic models of its own)": (
        "import examples.orders.lambda_function"
    ),
    # What the example's first invocation adds when it builds the pipeline.
    "  + DynamoDB/SQS modules and a boto3 client": (
        "import examples.orders.lambda_function, onceflow.adapters.aws.dynamodb_sink, "
        "onceflow.adapters.aws.sqs_sink, boto3; boto3.client('dynamodb')"
    ),
    "powertools batch + idempotency import": (
        "import aws_lambda_powertools.utilities.batch, aws_lambda_powertools.utilities.idempotency"
    ),
    "  + a boto3 DynamoDB client": (
        "import aws_lambda_powertools.utilities.batch, aws_lambda_powertools.utilities.idempotency"
        ", boto3; boto3.client('dynamodb')"
    ),
}
"""Cold-start probes: what each handler imports (and builds) before its first record."""


def cold_starts(repeats: int) -> dict[str, float]:
    """Median milliseconds of each `COLD_START` probe, the probes interleaved round by round
    so a loaded machine slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in COLD_START}
    for code in COLD_START.values():  # compiles and caches bytecode: not counted
        import_seconds(code, 1)
    for _ in range(repeats):
        for name, code in COLD_START.items():
            times[name].append(import_seconds(code, 1) * 1000)
    return {name: statistics.median(each) for name, each in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--imports", type=int, default=5)
    parser.add_argument(
        "--modes",
        default="upsert,optimistic,atomic",
        help="onceflow modes to run",
    )
    parser.add_argument(
        "--figures",
        type=Path,
        help="write the per-event figures the cost planner reads (corelib/cost_figures.json)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="the results document the cost planner reads (default: benchmarks/results.json)",
    )
    parser.add_argument(
        "--no-results", dest="results", action="store_const", const=None, help="write none"
    )
    args = parser.parse_args()
    rows = measure(args.records, tuple(args.modes.split(",")))
    print(
        f"Kinesis batch of {args.records} records, one DynamoDB item written per event, "
        "moto server on loopback\n"
    )
    print(
        table(
            [
                "handler",
                "delivery",
                "wall s",
                "DDB req/event",
                "WCU/event",
                "RCU/event",
                "client CPU us/event",
                "failures",
                "note",
            ],
            [r.cells() for r in rows],
        )
    )
    if args.figures:
        write_figures(args.figures, rows)
        print(f"\nwrote {args.figures}")
    pt = {r.delivery: r for r in rows if r.name == "powertools"}
    print()
    for r in rows:
        if r.name != "powertools" and r.delivery == "first":
            ratio = pt["first"].seconds / r.seconds
            verdict = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
            why = "" if ratio >= 1 else " (moto copies every table a transaction touches)"
            print(f"{r.name}: {verdict} than Powertools on first delivery{why}")

    cold = cold_starts(args.imports)
    print()
    print(table(["cold start: import of", "median ms"], [[k, f"{v:.0f}"] for k, v in cold.items()]))
    ours, theirs = cold[OURS_BUILT], cold[THEIRS_BUILT]
    verdict = "meets" if ours <= theirs else "misses"
    print(
        f"cold start, handler built with a client: onceflow {ours / theirs:.2f}x "
        f"Powertools ({verdict})"
    )
    if args.results is not None:
        write_results(args.results, rows, cold_start_ms=cold)
        print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
