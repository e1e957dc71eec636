"""Events/s through `Pipeline` on the memory backend versus a bare decode-and-store loop.

Also measures the cold-start import cost of `onceflow` against `pydantic` + `anyio` alone.
Run: .venv/bin/python benchmarks/core_overhead.py [--events N] [--batch N]

Timed rows are medians of `--rounds` interleaved rounds (bare loop, unordered, ordered in each
round, so a busy machine slows all alike), each against the same round's bare loop.
`--instructions` counts instead, under valgrind's callgrind, the instructions per event of
each design (load-independent): a run over a 1,000-event warm-up and one over that plus
3,000 events, the difference divided by 3,000, so start-up and the warm-up cancel out.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


WARM_UP = 1000
COUNTED = 3000
DESIGNS = ("bare", "unordered", "ordered")


def instructions_child(design: str, count: int) -> None:
    """What one callgrind run executes: the warm-up, then `count` more events."""
    events = make_events(WARM_UP + COUNTED)
    gc.collect()
    gc.freeze()
    for size in (WARM_UP, count):
        if not size:
            continue
        if design == "bare":
            bare_loop(events[:size])
        else:
            pipeline_run(events[:size], 1000, design == "ordered")


def instructions(design: str, count: int) -> int:
    """Instructions callgrind counts over a whole run of `instructions_child`."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--instructions-child",
            design,
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no instruction count for {design}")
    return int(found.group(1))


def instructions_table(jobs: int) -> None:
    """Instructions per event of each design, and the runner's ratios to the bare loop."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    runs = [(design, count) for design in DESIGNS for count in (0, COUNTED)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        counts = dict(zip(runs, pool.map(lambda run: instructions(*run), runs), strict=True))
    per_event = {d: (counts[d, COUNTED] - counts[d, 0]) / COUNTED for d in DESIGNS}
    print(f"\ncallgrind, instructions per event ({COUNTED:,} events after {WARM_UP:,})\n")
    print(f"{'design':<12} {'Ir/event':>10} {'vs bare':>8}")
    for design in DESIGNS:
        ratio = per_event[design] / per_event["bare"]
        print(f"{design:<12} {per_event[design]:>10,.0f} {ratio:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (medians)")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per event under callgrind instead of timing",
    )
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at once")
    parser.add_argument("--instructions-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="where the table goes (benchmarks/results.json, the cost planner's file)",
    )
    parser.add_argument("--no-results", dest="results", action="store_const", const=None)
    args = parser.parse_args()
    if args.instructions_child:
        design, count = args.instructions_child
        instructions_child(design, int(count))
        return
    if args.instructions:
        instructions_table(args.jobs)
        return
    events = make_events(args.events)
    # The input is built before timing; keep it out of every garbage collection that follows.
    gc.collect()
    gc.freeze()

    # Rounds interleave the designs; each round's ratios are to that round's bare loop.
    names = [
        "bare loop (decode + dict store)",
        "onceflow Pipeline, memory, unordered",
        "onceflow Pipeline, memory, ordered",
        "Pipeline, processor parses a model by hand",
        "Pipeline, typed processor",
    ]
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        bare_round = bare_loop(events)
        measured = [
            bare_round,
            pipeline_run(events, args.batch, False),
            pipeline_run(events, args.batch, True),
            pipeline_run(events, args.batch, False, HandParsed()),
            pipeline_run(events, args.batch, False, Typed()),
        ]
        for name, elapsed in zip(names, measured, strict=True):
            times[name].append(elapsed)
            ratios[name].append(elapsed / bare_round)
    median = statistics.median
    typed = median(times[names[4]])
    # Typed processor against the same processor parsing by hand (target <= 1.3x).
    typed_vs_hand = median(t / h for t, h in zip(times[names[4]], times[names[3]], strict=True))
    rows = [(name, median(times[name]), median(ratios[name])) for name in names]
    rows[4] = (f"{names[4]} ({typed_vs_hand:.2f}x by hand)", typed, rows[4][2])

    print(f"\n{args.events:,} events, batches of {args.batch}, one core, medians of {args.rounds}")
    print(f"\n{'run':<50} {'events/s':>12} {'us/event':>10} {'vs bare':>8}")
    for name, elapsed, ratio in rows:
        print(
            f"{name:<50} {args.events / elapsed:>12,.0f} {elapsed / args.events * 1e6:>10.2f}"
            f" {ratio:>7.2f}x"
        )
    print("(vs bare: the median of each round's ratio to the same round's bare loop)")

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
                        "vs_bare": round(ratio, 2),
                    }
                    for name, elapsed, ratio in rows
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
