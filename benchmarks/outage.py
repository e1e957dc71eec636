"""A downstream outage through an SQS-triggered Lambda: onceflow against Powertools, one run.

10,000 messages wait in an SQS standard queue; the database the processor writes to is
down for a while, starting 10 s in. Lambda's poller is simulated with
`onceflow.adapters.aws.testing.SimulatedQueue`, in the simulated time of a manual clock:
batches of 100, 5 at a time, a failed message back after a 30 s visibility timeout with
`ApproximateReceiveCount` one higher, the redrive policy moving a message that failed its
`maxReceiveCount`-th receive to the dead-letter queue, and an invocation that raised
halving the poller's concurrency (Lambda backing off).

- onceflow: `lambda_handler` on a memory pipeline (in-process retries, `max_deliveries=5`,
  the default circuit breaker); its dead letters are its own sink's plus the queue's DLQ.
- Powertools: `BatchProcessor` with `process_partial_response` (every failed record in
  `batchItemFailures`; a batch that failed entirely raises), with the same redrive.

Columns: dead letters; messages delivered again (and all receives beyond the first);
processor calls while the downstream was down; simulated seconds from recovery until the
queue was empty ("empty before" when the redrive had emptied it during the outage);
messages whose effect landed, and how many landed twice.

Run: .venv/bin/python benchmarks/outage.py [--messages N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onceflow import Pipeline  # noqa: E402
from onceflow.adapters.aws import lambda_handler  # noqa: E402
from onceflow.adapters.aws.testing import LambdaContext, SimulatedQueue  # noqa: E402
from onceflow.adapters.memory import ManualClock, MemoryIdempotencyStore, MemorySink  # noqa: E402

START = 1_700_000_000.0
DOWN_AT = 10.0
"""Seconds into the run when the downstream goes down."""


class Downstream:
    """The database: unreachable between `down_from` and `down_until`."""

    def __init__(self, clock: ManualClock, outage: float) -> None:
        self.clock = clock
        self.down_from, self.down_until = START + DOWN_AT, START + DOWN_AT + outage
        self.calls_while_down = 0
        self.effects: Counter[str] = Counter()

    def write(self, message_id: str) -> None:
        if self.down_from <= self.clock.now() < self.down_until:
            self.calls_while_down += 1
            raise ConnectionError("database is unreachable")
        self.effects[message_id] += 1


def onceflow_handler(downstream: Downstream, clock: ManualClock) -> tuple[Any, MemorySink]:
    letters = MemorySink()

    def process(event: Any) -> dict[str, Any]:
        downstream.write(event.id)
        return {"id": event.id}

    pipeline = Pipeline(
        process, MemorySink(), MemoryIdempotencyStore(clock=clock), letters, clock=clock
    )
    return lambda_handler(pipeline), letters


def powertools_handler(downstream: Downstream) -> Callable[[Any, Any], Any]:
    from aws_lambda_powertools.utilities.batch import (
        BatchProcessor,
        EventType,
        process_partial_response,
    )
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    processor = BatchProcessor(event_type=EventType.SQS)

    def record_handler(record: SQSRecord) -> None:
        downstream.write(record.message_id)

    def handler(event: Any, context: Any) -> Any:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return handler


@dataclass
class Row:
    name: str
    outage: float
    max_receive_count: int
    dead_letters: int
    redelivered: int
    receives_beyond_first: int
    calls_while_down: int
    drain: float
    landed: int
    doubled: int


def run(name: str, messages: int, outage: float, max_receive_count: int) -> Row:
    clock = ManualClock(START)
    downstream = Downstream(clock, outage)
    letters: MemorySink | None = None
    if name == "onceflow":
        handler, letters = onceflow_handler(downstream, clock)
    else:
        handler = powertools_handler(downstream)
    queue = SimulatedQueue(
        clock,
        batch_size=100,
        concurrency=5,
        visibility_timeout=30.0,
        max_receive_count=max_receive_count,
    )
    for n in range(messages):
        queue.send(f"m{n}", json.dumps({"n": n}))
    rounds = 0
    while not queue.drained:
        queue.poll(handler, LambdaContext())
        rounds += 1
        if rounds > 100_000:
            raise RuntimeError(f"{name}: the queue never drained")
    dead = len(queue.dead_letters) + (len(letters) if letters is not None else 0)
    return Row(
        name,
        outage,
        max_receive_count,
        dead,
        sum(1 for c in queue.receive_counts.values() if c > 1),
        queue.deliveries - messages,
        downstream.calls_while_down,
        clock.now() - downstream.down_until,
        len(downstream.effects),
        sum(1 for c in downstream.effects.values() if c > 1),
    )


def main() -> None:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # thousands of "delivered again" lines otherwise
    rows = []
    for outage, counts in ((60.0, (5,)), (600.0, (5, 50))):
        for count in counts:
            rows.append(run("onceflow", args.messages, outage, count))
        rows.append(run("powertools", args.messages, outage, 5))
    header = [
        "handler",
        "outage s",
        "maxReceiveCount",
        "dead letters",
        "redelivered msgs",
        "extra receives",
        "calls while down",
        "drain after recovery s",
        "effects landed",
        "landed twice",
    ]
    table = [
        [
            r.name,
            f"{r.outage:.0f}",
            str(r.max_receive_count),
            str(r.dead_letters),
            str(r.redelivered),
            str(r.receives_beyond_first),
            str(r.calls_while_down),
            f"{r.drain:.0f}" if r.drain >= 0 else "(empty before)",
            str(r.landed),
            str(r.doubled),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print(f"{args.messages:,} SQS messages, downstream down from {DOWN_AT:.0f} s, simulated time")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in table:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(
        "\nSQS counts every receive, held-back ones too: an outage longer than about "
        "maxReceiveCount x the visibility timeout moves messages to the queue's DLQ "
        "whatever the handler does; with onceflow, give the queue a high maxReceiveCount "
        "and let max_deliveries (counted by the store) catch poison pills."
    )


if __name__ == "__main__":
    main()
