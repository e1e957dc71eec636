"""`onceflow run` on one large JSONL file in chunks: scaling, memory, kills, and S3.

Four measurements, each against a peer in the same run:

1. events/s with `--workers 2` against `--workers 1` on each file (target: 1.7x on a
   quiet 2-core machine), the median of `--repeat` runs taken in turns (1, 2, 1, 2...);
2. peak RSS of each chunk worker (as the run reports it: `getrusage` in the worker) and
   of the largest process of the run (the parent included), for each file size (target:
   at most 150 MB per worker, flat from 100 MB to 1 GB);
3. SIGKILL of the whole run (parent and workers) at random points, `--kills` times, then a
   rerun: its outputs equal one clean run's, no chunk receipt is written twice, and
   `_SUCCESS` never appears before every chunk is committed;
4. an object on the moto server's S3 run through the Lambda chunk-worker handler (ranged
   GETs) gives the same outputs as the local chunked run of the same bytes.

Files are generated in a temporary folder (under /tmp) and deleted afterwards.

The CPU seconds of the run (every process) are printed too: on a shared machine the
wall-clock ratio says as much about the neighbours as about the workers.

Run: .venv/bin/python benchmarks/large_file.py [--sizes 100,1000] [--repeat 3] [--kills 20]
     [--s3-mb 200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROCESSOR = "large_file:Work"  # this module, on the workers' path (see `cli`)
CHUNK = 32 << 20

# Runs one command; prints its wall time, CPU seconds and the peak RSS of the largest of
# it and its descendants, then its output.
_MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
run = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
wall = time.perf_counter() - started
use = resource.getrusage(resource.RUSAGE_CHILDREN)
print(run.returncode, wall, use.ru_utime + use.ru_stime, use.ru_maxrss)
print(run.stdout)
"""
_WORKER_RSS = re.compile(r"peak memory \(RSS\) per worker: ([\d, ]+) MB")
_WORKER_WAIT = re.compile(r"([\d.]+) of ([\d.]+)")
_WORKER_HELD = re.compile(r"([\d.]+) of ([\d.]+) CPU s")


def make_jsonl(path: Path, megabytes: int) -> int:
    """A JSONL file of about `megabytes` MB (~200-byte orders); its line count."""
    target = megabytes << 20
    written = lines = 0
    pad = "x" * 120
    with path.open("w", buffering=8 << 20) as handle:
        while written < target:
            block = "".join(
                f'{{"n": {n}, "customer": "c{n % 9973}", "amount": {n % 1000}, "note": "{pad}"}}\n'
                for n in range(lines, lines + 50_000)
            )
            handle.write(block)
            written += len(block)
            lines += 50_000
    return lines


class Work:
    """Doubles `n` and keeps nothing (the tests' Doubler remembers every id it saw)."""

    def process(self, event: Any) -> dict[str, Any]:
        """The order's number, doubled."""
        n = event.json()["n"]
        return {"n": n, "double": 2 * n}


os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
)


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("onceflow")), "run", PROCESSOR, *args, "--quiet"]


class Measured:
    """One run: exit status, wall and CPU seconds, peak RSS (MB) of its largest process and
    of each chunk worker."""

    def __init__(self, command: list[str]) -> None:
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        head, _, text = out.partition("\n")
        code, wall, cpu, rss = head.split()
        self.code, self.wall, self.cpu = int(code), float(wall), float(cpu)
        self.rss = int(rss) / 1024
        found = _WORKER_RSS.search(text)
        self.workers = [float(mb) for mb in found.group(1).split(",")] if found else []
        waits = next((line for line in text.splitlines() if "write lock" in line), "")
        pairs = [(float(w), float(r)) for w, r in _WORKER_WAIT.findall(waits)]
        # The share of the workers' time spent queueing for the state file's write lock.
        self.waiting = sum(w for w, _ in pairs) / max(1e-9, sum(r for _, r in pairs))
        inside = next((line for line in text.splitlines() if "inside the state's" in line), "")
        held = [(float(h), float(c)) for h, c in _WORKER_HELD.findall(inside)]
        # The serialized share (Amdahl's s): the workers' CPU inside the write lock over
        # their CPU. Load on the machine slows both alike, so it holds on a busy machine.
        self.held = sum(h for h, _ in held) / max(1e-9, sum(c for _, c in held))
        self.text = text


def scaling(folder: Path, sizes: list[int], repeat: int) -> None:
    print(f"\n1-2. events/s and peak RSS (chunk size {CHUNK >> 20} MiB, median of {repeat} runs)")
    print(
        f"{'input':>8} {'workers':>7} {'events':>11} {'wall s':>8} {'CPU s':>7} {'events/s':>10} "
        f"{'RSS per worker MB':>18} {'largest RSS MB':>15} {'lock wait':>9} {'in lock':>7}  load"
    )
    ratios: list[str] = []
    for size in sizes:
        source = folder / f"in-{size}.jsonl"
        events = make_jsonl(source, size)
        runs: dict[int, list[Measured]] = {1: [], 2: []}
        for _ in range(repeat):
            for workers in (1, 2):  # in turns, so a busy spell falls on both alike
                state = folder / f"state-{size}-{workers}"
                runs[workers].append(Measured(
                    cli("--input", str(source), "--state", str(state), "--workers", str(workers),
                        "--chunk-size", str(CHUNK))
                ))  # fmt: skip
                shutil.rmtree(state)
        rates: dict[int, float] = {}
        held: dict[int, float] = {}
        for workers, measured in runs.items():
            wall = statistics.median(m.wall for m in measured)
            cpu = statistics.median(m.cpu for m in measured)
            rates[workers] = events / wall
            per_worker = max((mb for m in measured for mb in m.workers), default=0.0)
            largest = max(m.rss for m in measured)
            bad = [m.code for m in measured if m.code not in (0, 1)]
            waiting = statistics.median(m.waiting for m in measured)
            held[workers] = statistics.median(m.held for m in measured)
            print(f"{size:>6}MB {workers:>7} {events:>11,} {wall:>8.1f} {cpu:>7.1f} "
                  f"{rates[workers]:>10,.0f} {per_worker:>18.0f} {largest:>15.0f} "
                  f"{waiting:>9.0%} {held[workers]:>7.1%}  "
                  f"{os.getloadavg()[0]:.1f}" + (f"  exit {bad}" if bad else ""))  # fmt: skip
            walls = ", ".join(f"{m.wall:.1f}" for m in measured)
            print(f"{'':>8} {'':>7} walls: {walls}")
        # Amdahl: with a share s of one worker's CPU serialized by the write lock, two
        # workers on two idle cores run at most 1 / (s + (1 - s) / 2) = 2 / (1 + s) times
        # as fast as one. The timed ratio also depends on what else the cores are doing.
        share = held[1]
        ratios.append(
            f"{size} MB: {rates[2] / rates[1]:.2f}x timed (target 1.7x); write-lock share "
            f"{share:.1%} of a worker's CPU, so at most {2 / (1 + share):.2f}x on idle cores"
        )
        source.unlink()
    print(f"load average now {os.getloadavg()[0]:.1f}")
    print("2 workers / 1 worker (median events/s):")
    for line in ratios:
        print(f"  {line}")


def ledger(state: Path) -> tuple[int, set[str]]:
    runs = state / "chunked" / "runs"
    plans = list(runs.rglob("plan.json")) if runs.exists() else []
    chunks = len(json.loads(plans[0].read_text())["chunks"]) if plans else 0
    files = (
        {p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file()} if plans else set()
    )
    return chunks, files


def digest(path: Path) -> str:
    return hashlib.sha256("".join(sorted(path.read_text().splitlines())).encode()).hexdigest()


def kills(folder: Path, megabytes: int, count: int) -> str:
    print(
        f"\n3. SIGKILL at {count} random points of a {megabytes} MB run (--workers 2), then a rerun"
    )
    source = folder / "kill.jsonl"
    make_jsonl(source, megabytes)
    chunk = str(max(1 << 20, (megabytes << 20) // 24))
    clean_out = folder / "clean.jsonl"
    started = time.perf_counter()
    subprocess.run(cli("--input", str(source), "--state", str(folder / "clean"), "--workers", "2",
                       "--chunk-size", chunk, "--out", str(clean_out)), cwd=ROOT, check=False,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    clean_wall = time.perf_counter() - started
    state = folder / "killed"
    rng = random.Random(20)
    landed = early = 0
    for _ in range(count):
        run = subprocess.Popen(
            cli("--input", str(source), "--state", str(state), "--workers", "2",
                "--chunk-size", chunk),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        chunks, files = ledger(state)
        done = sum("/chunks/" in f for f in files) / chunks if chunks else 0.0
        # Somewhere in what is left of the work (a rerun skips what is committed).
        time.sleep(rng.uniform(0.2, 1.0) * (clean_wall * (1 - done) + 1.0))
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            landed += 1
        elif run.returncode not in (0, 1):
            print(f"  a run failed on its own: exit status {run.returncode}")
        run.wait()
        chunks, files = ledger(state)
        receipts = sum("/chunks/" in f for f in files)
        if any(f.endswith("/_SUCCESS") for f in files) and receipts < chunks:
            early += 1
    out = folder / "killed.jsonl"
    subprocess.run(cli("--input", str(source), "--state", str(state), "--workers", "2",
                       "--chunk-size", chunk, "--out", str(out)), cwd=ROOT, check=False,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    chunks, files = ledger(state)
    equal = digest(out) == digest(clean_out)
    print(f"kills that landed mid-run: {landed} of {count}; _SUCCESS before the end: {early}")
    print(f"after the rerun: outputs equal the clean run's: {equal}; "
          f"receipts {sum('/chunks/' in f for f in files)} of {chunks} chunks; "
          f"_SUCCESS files: {sum(f.endswith('/_SUCCESS') for f in files)}")  # fmt: skip
    source.unlink()
    return digest(clean_out)


def s3(folder: Path, megabytes: int) -> None:
    print(f"\n4. a {megabytes} MB object on moto S3 through the chunk-worker handler")
    from onceflow import Pipeline
    from onceflow.adapters.aws.chunks import chunked_handlers
    from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
    from tests.support.servers import moto_server

    source = folder / "s3.jsonl"
    make_jsonl(source, megabytes)
    local_out = folder / "s3-local.jsonl"
    subprocess.run(cli("--input", str(source), "--state", str(folder / "s3-local"),
                       "--workers", "2",
                       "--chunk-size", str(CHUNK), "--out", str(local_out)), cwd=ROOT, check=False,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    with moto_server() as moto:
        client = moto.client("s3")
        ranged: list[str] = []
        client.meta.events.register(
            "provide-client-params.s3.GetObject",
            lambda params, **_: (
                ranged.append(params.get("Range") or "") if params["Key"] == "big.jsonl" else None
            ),
        )  # fmt: skip
        client.create_bucket(Bucket="landing")
        client.upload_file(str(source), "landing", "big.jsonl")
        sink = MemorySink()
        handlers = chunked_handlers(
            Pipeline(Work(), sink, MemoryIdempotencyStore(), MemorySink()),
            s3=client, chunk_size=CHUNK, inline_limit=1, state_machine_arn="arn:unused",
            stepfunctions=_NoStateMachine(),
        )  # fmt: skip
        notice = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                               "eventTime": "2026-12-01T00:00:00Z",
                               "s3": {"bucket": {"name": "landing"},
                  "object": {"key": "big.jsonl", "sequencer": "01"}}}]}  # fmt: skip
        started = time.perf_counter()
        handlers.router(notice)
        (doc,) = handlers.stepfunctions.inputs
        item = {k: doc[k] for k in ("bucket", "key", "version")}
        for c in doc["chunks"]:
            handlers.chunk_worker({**item, "index": c["index"]})
        fanned = handlers.fan_in(item)
        wall = time.perf_counter() - started
    values = sorted(json.dumps(v, separators=(",", ":")) for v in sink.values())
    local = sorted(local_out.read_text().splitlines())
    print(f"chunks {len(doc['chunks'])}, ranged GETs {len(ranged)} (all ranged: {all(ranged)}), "
          f"complete {fanned['complete']}, {fanned.get('rows', 0):,} rows "
          f"in {wall:.1f} s")  # fmt: skip
    print(f"outputs equal the local run's: {values == local}")
    source.unlink()


class _NoStateMachine:
    """Remembers the execution the router starts; the benchmark runs the Map itself."""

    class exceptions:
        ExecutionAlreadyExists = type("ExecutionAlreadyExists", (Exception,), {})

    def __init__(self) -> None:
        self.inputs: list[dict[str, Any]] = []

    def start_execution(self, **kwargs: Any) -> None:
        self.inputs.append(json.loads(kwargs["input"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="input sizes in MB, comma-separated")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-mb", type=int, default=100)
    parser.add_argument("--s3-mb", type=int, default=200)
    parser.add_argument("--chunk-mb", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args()
    global CHUNK
    CHUNK = args.chunk_mb << 20
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(
        f"cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f} "
        "(results are noisy if busy)"
    )
    folder = Path(tempfile.mkdtemp(prefix="onceflow-large-", dir="/tmp"))
    try:
        if sizes:
            scaling(folder, sizes, args.repeat)
        if args.kills:
            kills(folder, args.kill_mb, args.kills)
        if args.s3_mb:
            s3(folder, args.s3_mb)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
