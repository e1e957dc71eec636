"""Events/s through `Pipeline` on the memory backend versus a bare decode-and-store loop.

Also measures the cold-start import cost of `onceflow` against `pydantic` + `anyio` alone.
Run: .venv/bin/python benchmarks/core_overhead.py [--events N] [--batch N]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from onceflow import Event, Pipeline  # noqa: E402
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink  # noqa: E402


class Trivial:
    """Decodes the payload and emits one small record."""

    def process(self, event: Event) -> dict[str, object]:
        body = json.loads(event.data)
        return {"n": body["n"], "user": body["user"]}


class Order(BaseModel):
    """The payload as a model, for the typed-processor rows."""

    n: int
    user: str


class HandParsed:
    """Parses the payload into the model itself."""

    def process(self, event: Event) -> dict[str, object]:
        order = Order.model_validate_json(event.data)
        return {"n": order.n, "user": order.user}


class Typed:
    """The same, with the pipeline parsing the payload (a typed processor)."""

    def process(self, order: Order) -> dict[str, object]:
        return {"n": order.n, "user": order.user}


def make_events(count: int) -> list[Event]:
    return [
        Event(
            id=str(n),
            source="bench",
            partition_key=f"p{n % 64}",
            sequence=str(n),
            data=json.dumps({"n": n, "user": f"u{n % 1000}"}).encode(),
        )
        for n in range(count)
    ]


def bare_loop(events: list[Event]) -> float:
    """What a hand-written handler does: decode and store, no bookkeeping."""
    store: dict[str, dict[str, object]] = {}
    started = time.perf_counter()
    for event in events:
        body = json.loads(event.data)
        store[event.id] = {"n": body["n"], "user": body["user"]}
    return time.perf_counter() - started


def pipeline_run(events: list[Event], batch: int, ordered: bool, processor: Any = None) -> float:
    sink = MemorySink()
    pipeline = Pipeline(
        processor or Trivial(), sink, MemoryIdempotencyStore(), MemorySink(), ordered=ordered
    )
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    import anyio

    async def main() -> None:
        for chunk in batches:
            await pipeline.process_batch(chunk)

    started = time.perf_counter()
    anyio.run(main)
    elapsed = time.perf_counter() - started
    assert len(sink) == len(events), "every event must land exactly once"
    return elapsed


def import_cost(statement: str, runs: int = 7) -> float:
    """Median wall time of a fresh interpreter running `statement`, in ms."""
    times = []
    for _ in range(runs + 1):  # the first run compiles and caches bytecode; it is not counted
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        times.append(float(out.stdout) * 1000)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="where the table goes (benchmarks/results.json, the cost planner's file)",
    )
    parser.add_argument("--no-results", dest="results", action="store_const", const=None)
    args = parser.parse_args()
    events = make_events(args.events)
    # The input is built before timing; keep it out of every garbage collection that follows.
    gc.collect()
    gc.freeze()

    rows = []
    bare = min(bare_loop(events) for _ in range(3))
    rows.append(("bare loop (decode + dict store)", bare))
    for ordered in (False, True):
        elapsed = min(pipeline_run(events, args.batch, ordered) for _ in range(3))
        rows.append(
            (f"onceflow Pipeline, memory, {'ordered' if ordered else 'unordered'}", elapsed)
        )

    # Typed processor against the same processor parsing by hand (target <= 1.3x), A/B
    # interleaved so a noisy machine slows both alike.
    hand_runs, typed_runs = [], []
    for _ in range(3):
        hand_runs.append(pipeline_run(events, args.batch, False, HandParsed()))
        typed_runs.append(pipeline_run(events, args.batch, False, Typed()))
    hand, typed = min(hand_runs), min(typed_runs)
    rows.append(("Pipeline, processor parses a model by hand", hand))
    rows.append((f"Pipeline, typed processor ({typed / hand:.2f}x by hand)", typed))

    print(f"\n{args.events:,} events, batches of {args.batch}, one core\n")
    print(f"{'run':<44} {'events/s':>12} {'us/event':>10} {'vs bare':>8}")
    for name, elapsed in rows:
        print(
            f"{name:<44} {args.events / elapsed:>12,.0f} {elapsed / args.events * 1e6:>10.2f}"
            f" {elapsed / bare:>7.1f}x"
        )

    if args.results is not None:
        from benchmarks.aws_vs_powertools import merge_table

        merge_table(
            args.results,
            "benchmarks/core_overhead.py",
            {
                "events": args.events,
                "batch": args.batch,
                "rows": [
                    {
                        "run": name,
                        "us_per_event": round(elapsed / args.events * 1e6, 2),
                        "vs_bare": round(elapsed / bare, 2),
                    }
                    for name, elapsed in rows
                ],
            },
        )

    base = import_cost("import pydantic, anyio")
    core = import_cost("import pydantic, anyio, onceflow")
    # pydantic and anyio load lazily too: compare also what a handler really touches.
    uses = (
        "import anyio, anyio.abc, pydantic; from pydantic import BaseModel, Field, ValidationError;"
        " exec('class M(BaseModel):\\n    a: int = Field(default=1)')"
    )
    base_used = import_cost(uses)
    core_used = import_cost(uses + "; from onceflow import Event, Pipeline")
    leaked = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from onceflow import Event, Pipeline; "
            "print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in {'boto3','botocore','azure','pyarrow','deltalake'}) or 'none')",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    print(f"\n{'cold start (median of 7 fresh interpreters)':<58} {'ms':>8}")
    print(f"{'import pydantic, anyio':<58} {base:>8.1f}")
    print(f"{'import pydantic, anyio, onceflow':<58} {core:>8.1f}")
    print(f"{'  onceflow costs extra (target <= 15 ms)':<58} {core - base:>8.1f}")
    print(f"{'pydantic (one model defined) + anyio loaded':<58} {base_used:>8.1f}")
    print(f"{'  + from onceflow import Event, Pipeline':<58} {core_used:>8.1f}")
    print(f"{'  onceflow in use costs extra':<58} {core_used - base_used:>8.1f}")
    print(f"{'cloud SDK / pyarrow modules imported by the core':<58} {leaked:>8}")


if __name__ == "__main__":
    main()
