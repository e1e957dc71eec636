"""Events/s through `Pipeline` on the memory backend versus a bare decode-and-store loop.

Also measures the cold-start import cost of `corelib` against `pydantic` + `anyio` alone.
Run: .venv/bin/python benchmarks/core_overhead.py [--events N] [--batch N]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.memory import MemoryIdempotencyStore, MemorySink  # noqa: E402
from corelib import Event, Pipeline  # noqa: E402


class Trivial:
    """Decodes the payload and emits one small record."""

    def process(self, event: Event) -> dict[str, object]:
        body = json.loads(event.data)
        return {"n": body["n"], "user": body["user"]}


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


def pipeline_run(events: list[Event], batch: int, ordered: bool) -> float:
    sink = MemorySink()
    pipeline = Pipeline(Trivial(), sink, MemoryIdempotencyStore(), MemorySink(), ordered=ordered)
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
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", f"import time; t=time.perf_counter(); {statement}; "
             "print(time.perf_counter()-t)"],
            capture_output=True, text=True, check=True, cwd=ROOT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        times.append(float(out.stdout) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
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
        rows.append((f"onceflow Pipeline, memory, {'ordered' if ordered else 'unordered'}",
                     elapsed))

    print(f"\n{args.events:,} events, batches of {args.batch}, one core\n")
    print(f"{'run':<44} {'events/s':>12} {'us/event':>10} {'vs bare':>8}")
    for name, elapsed in rows:
        print(f"{name:<44} {args.events / elapsed:>12,.0f} {elapsed / args.events * 1e6:>10.2f}"
              f" {elapsed / bare:>7.1f}x")

    base = import_cost("import pydantic, anyio")
    core = import_cost("import pydantic, anyio, corelib")
    leaked = subprocess.run(
        [sys.executable, "-c", "import sys, corelib; print(sorted(m for m in sys.modules "
         "if m.split('.')[0] in {'boto3','botocore','azure','pyarrow','deltalake'}))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()
    print(f"\n{'cold start (median of 7 fresh interpreters)':<44} {'ms':>12}")
    print(f"{'import pydantic, anyio':<44} {base:>12.1f}")
    print(f"{'import pydantic, anyio, corelib':<44} {core:>12.1f}")
    print(f"{'corelib costs extra':<44} {core - base:>12.1f}  (target <= 15 ms)")
    print(f"{'cloud SDK / pyarrow modules imported':<44} {leaked:>12}")


if __name__ == "__main__":
    main()
