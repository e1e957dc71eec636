"""Kill test (issue 16 item 3): SIGKILL `onceflow lake compact` at seeded random moments,
a bounded number of times, then let one run finish: the dataset equals one clean
compaction's (every row once, one file per partition, the files verify)."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pyarrow as pa

from onceflow.adapters.local import LocalObjectStore
from onceflow.lake import Hourly, ManifestLog, ParquetSink, read_dataset
from onceflow.records import Output

ONCEFLOW = str(Path(sys.executable).with_name("onceflow"))
SCHEMA = pa.schema([("n", pa.int64()), ("time", pa.timestamp("us", "UTC"))])
KILLS = 5
HOURS = 24
BATCHES = 40


async def small_files(root: Path) -> None:
    sink = ParquetSink(LocalObjectStore(root), "ds", schema=SCHEMA, partition_by=Hourly())
    for b in range(BATCHES):
        numbers = range(b * HOURS * 2, (b + 1) * HOURS * 2)
        await sink.write(
            [
                Output(f"s#e{n}#0", f"s#e{n}", f"e{n}", 0, {"n": n, "time": _hour(n)})
                for n in numbers
            ]
        )


def _hour(n: int) -> str:
    return f"2024-05-01T{n % HOURS:02d}:00:00Z"


def compact(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [ONCEFLOW, "lake", "compact", str(root / "ds")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def state(root: Path) -> tuple[list[tuple[str, int]], dict[str, int]]:
    rows = await read_dataset(LocalObjectStore(root), "ds", verify=True)
    ids, numbers = rows.column("_output_id").to_pylist(), rows.column("n").to_pylist()
    pairs = sorted(zip(ids, numbers, strict=True))
    snapshot = await ManifestLog(LocalObjectStore(root), "ds").snapshot()
    return pairs, {p: len(f) for p, f in snapshot.partitions().items()}


def test_killed_compactions_then_one_to_the_end_equal_one_clean_compaction(
    tmp_path: Path,
) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    anyio.run(small_files, clean)
    shutil.copytree(clean, killed)
    assert compact(clean).wait(timeout=120) == 0

    rng = random.Random(16)
    landed = 0
    for _ in range(KILLS):
        proc = compact(killed)
        time.sleep(rng.uniform(0.3, 2.5))  # start-up is most of a second; then the merging
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait(timeout=120)
    assert compact(killed).wait(timeout=120) == 0

    expected, files = anyio.run(state, clean)
    assert len(expected) == BATCHES * HOURS * 2 and set(files.values()) == {1}
    assert anyio.run(state, killed) == (expected, files)
    assert landed >= 1, "no kill landed on a live compaction"
    print(f"{landed} of {KILLS} kills landed on a live compaction")
