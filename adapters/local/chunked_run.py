"""`onceflow run` on one large file: split into chunks, run on `--workers N` processes.

The parent plans the file (a few ranged reads, never the whole file), files the plan in
the state folder's chunk ledger (`<state>/chunked`), and hands the chunks without a
receipt to N worker processes through a queue. Each worker runs a chunk at a time
through its own pipeline on the shared SQLite state (`onceflow.fan_in.run_chunk`), so
its memory is one read piece and one batch whatever the file's size. When every chunk
has its receipt the parent writes the manifest and `_SUCCESS` (`ChunkLedger.fan_in`).

A killed run is rerun as it was: committed chunks are skipped, a chunk cut short is read
again and its settled records are duplicates. A worker whose parent died exits at its
next batch. Events have the unchunked path's source and ids (`file:<name>` and
`<name>:<line>`, or `files` and the `--id-field` value), so a file read whole once and
chunked later has the same keys and outputs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from onceflow.adapters.local.command_inputs import load_processor, open_state
from onceflow.adapters.local.console import console, quiet_logs, run_summary
from onceflow.adapters.local.objects import LocalObjectStore
from onceflow.adapters.local.state import LocalState
from onceflow.adapters.local.totals import Tally
from onceflow.adapters.local.window_counts import SqliteWindowCounts
from onceflow.breaker import CircuitBreaker
from onceflow.chunks import DEFAULT_CHUNK_SIZE, ChunkFormat, ChunkPlan, chunk_format
from onceflow.cli import CliError
from onceflow.fan_in import ChunkBusy, ChunkIncomplete, ChunkLedger, Manifest, run_chunk
from onceflow.interfaces import Sink
from onceflow.pipeline import BatchResult, Pipeline
from onceflow.reconcile import count_windows
from onceflow.records import ObjectInfo, Output
from onceflow.retry import RetryPolicy

__all__ = ["InputFiles", "chunked_ledger", "run_chunked", "wants_chunks"]

_LEDGER = "chunked"
CHUNK_BATCH_SIZE = 2000
"""Records per batch of a chunk worker when `--batch-size` is not given."""


class InputFiles:
    """The files of one folder as a read-only object store (`head`, `get_range`).

    Unlike `LocalObjectStore` it writes nothing into the input's folder. The etag is the
    local store's: size, modification time and inode, so a rewritten file is a new version.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def _head(self, path: str) -> ObjectInfo | None:
        try:
            stat = (self.folder / path).stat()
        except FileNotFoundError:
            return None
        tag = f"{stat.st_size}-{stat.st_mtime_ns}-{stat.st_ino}"
        etag = hashlib.md5(tag.encode(), usedforsecurity=False).hexdigest()
        return ObjectInfo(path, stat.st_size, etag, stat.st_mtime)

    def _get_range(self, path: str, start: int, end: int) -> bytes:
        with (self.folder / path).open("rb") as handle:
            handle.seek(start)
            return handle.read(max(0, end - start))

    async def head(self, path: str) -> ObjectInfo | None:
        """The file's info, or None when absent."""
        return self._head(path)

    async def get_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes `start` up to, not including, `end`."""
        # Small reads (boundary probes) stay on the loop; a piece of a chunk goes to a thread.
        if end - start <= 1 << 16:
            return self._get_range(path, start, end)
        return await anyio.to_thread.run_sync(self._get_range, path, start, end)


def chunked_ledger(state_folder: str | os.PathLike[str]) -> ChunkLedger:
    """The chunk ledger of a state folder: plans, receipts, manifests, `_SUCCESS`."""
    return ChunkLedger(LocalObjectStore(Path(state_folder) / _LEDGER), prefix="runs")


def wants_chunks(args: argparse.Namespace) -> bool:
    """Whether `onceflow run` with these options takes the chunked path.

    One input file (no glob, no folder) larger than `--chunk-size`, in a format the
    planner splits, without `--ordered` (chunks run side by side), `--watch`,
    `--from-start` or a worker's own `--shard`.
    """
    chunk_size = getattr(args, "chunk_size", None) or DEFAULT_CHUNK_SIZE
    inputs: list[str] = args.input
    if len(inputs) != 1 or glob.has_magic(inputs[0]) or args.shard is not None or args.report:
        return False
    if args.ordered or args.watch or args.from_start:
        return False
    path = Path(inputs[0])
    if not path.is_file():
        return False
    try:
        chunk_format(path.name, args.format)
    except ValueError:
        return False
    return path.stat().st_size > chunk_size


def run_chunked(args: argparse.Namespace) -> int:
    """`onceflow run` on one large file in chunks: the exit status."""
    quiet_logs(args.verbose)
    load_processor(args.processor)  # a one-line error now, not one per worker
    out = console()
    path = Path(args.input[0]).resolve()
    files = InputFiles(path.parent)
    chunk_size = getattr(args, "chunk_size", None) or DEFAULT_CHUNK_SIZE
    state = open_state(args.state, create=True)
    try:
        ledger = chunked_ledger(state.folder)
        fmt: ChunkFormat | None = args.format
        plan, pending = anyio.run(_plan, ledger, files, path.name, chunk_size, fmt)
        if plan.note and not args.quiet:
            out.print(f"{path.name}: {plan.note}")
        run_id = state.start_run(args.processor, args.input, _options(args))
        started = time.perf_counter()
        try:
            tally, failures, peaks = _run_pending(args, path.parent, plan, pending)
        except KeyboardInterrupt:
            # The workers are stopped (`_run_pending`); what they committed is kept, and
            # a chunk they were in reads again from its lane's watermark.
            state.finish_run(run_id, {})
            state.dead_letters.export()
            console(stderr=True).print(
                "onceflow: interrupted; committed chunks and batches are kept, and the next "
                "run goes on from there"
            )
            return 130
        manifest: Manifest | None = anyio.run(ledger.fan_in, plan)
        wall = time.perf_counter() - started
        state.finish_run(run_id, tally.counts())
        state.dead_letters.export()  # the workers wrote them
        if args.out:
            exported = state.sink.export_jsonl(args.out)
            out.print(f"wrote {exported} outputs to {args.out}")
        run_summary(out, tally, wall, state)
        skipped = len(plan.chunks) - len(pending)
        out.print(
            f"{len(plan.chunks)} chunks of {path.name}: {len(pending)} run, {skipped} done before"
        )
        if peaks:
            mb = ", ".join(f"{u['rss'] / (1 << 20):.0f}" for u in peaks)
            out.print(f"peak memory (RSS) per worker: {mb} MB")
            waits = ", ".join(f"{u['waited']:.1f} of {u['ran']:.1f}" for u in peaks)
            out.print(f"waited for the state's write lock, per worker: {waits} s")
            # The serialized share: CPU spent holding the lock over all CPU (Amdahl's s).
            shares = ", ".join(
                f"{u['held_cpu']:.1f} of {u['cpu']:.1f} CPU s "
                f"({u['held_cpu'] / max(u['cpu'], 1e-9):.0%})"
                for u in peaks
            )
            out.print(f"inside the state's write lock, per worker: {shares}")
        for text in failures[:5]:
            out.print(f"[red]{text}[/]", markup=True)
        if manifest is not None:
            folder = state.folder / _LEDGER / ledger.folder(plan.path, plan.version)
            rows, count = f"{manifest.rows:,}", len(manifest.chunks)
            out.print(f"manifest and _SUCCESS: {rows} rows in {count} chunks, in {folder}")
        bad = tally.failed or tally.dead_lettered or tally.stopped or failures or manifest is None
        return 1 if bad else 0
    finally:
        state.close()


async def _plan(
    ledger: ChunkLedger, files: InputFiles, name: str, chunk_size: int, fmt: ChunkFormat | None
) -> tuple[ChunkPlan, list[int]]:
    # Counting lines costs one streamed pass (a second or so per GB), and buys the
    # unchunked path's line-numbered ids.
    plan = await ledger.plan(files, name, chunk_size=chunk_size, fmt=fmt, lines=True)
    return plan, await ledger.pending(plan)


def _options(args: argparse.Namespace) -> dict[str, object]:
    plain = (str, int, float, bool, type(None))
    return {
        k: v
        for k, v in vars(args).items()
        if k not in {"func", "input", "processor"} and isinstance(v, plain)
    }


def _config(args: argparse.Namespace, folder: Path, plan: ChunkPlan) -> dict[str, Any]:
    """What a worker process needs, as plain data (it is pickled to a spawned process)."""
    return {
        "processor": args.processor,
        "state": args.state,
        "folder": str(folder),
        "plan": plan.as_plain(),
        "id_field": args.id_field,
        "partition_field": args.partition_field,
        # Each batch costs a lane claim and a commit inside the shared write lock whatever
        # its size, so chunk workers take larger batches unless told otherwise.
        "batch_size": args.batch_size or CHUNK_BATCH_SIZE,
        "max_attempts": args.max_attempts,
        "max_deliveries": args.max_deliveries,
        "cool_down": args.cool_down,
        "lease_seconds": args.lease_seconds,
        "verbose": args.verbose,
    }


def _run_pending(
    args: argparse.Namespace, folder: Path, plan: ChunkPlan, pending: list[int]
) -> tuple[Tally, list[str], list[dict[str, float]]]:
    """Run the pending chunks on `args.workers` processes, showing progress.

    The totals, the failures, and per worker (`_usage`): its peak resident memory in
    bytes, the seconds it waited for the state file's write lock out of the seconds it
    ran, and the CPU seconds it spent holding that lock out of its CPU seconds.
    """
    context = multiprocessing.get_context("spawn")
    tasks: Any = context.Queue()
    events: Any = context.Queue()
    for index in pending:
        tasks.put(index)
    workers_count = max(1, min(args.workers, len(pending)))
    for _ in range(workers_count):
        tasks.put(None)
    config = _config(args, folder, plan)
    todo_bytes = sum(plan.chunks[i].bytes for i in pending)
    tally = Tally()
    failures: list[str] = []
    peaks: dict[int, dict[str, float]] = {}
    if not pending:
        return tally, failures, []
    workers = [
        context.Process(target=worker_main, args=(config, tasks, events, os.getpid()))
        for _ in range(workers_count)
    ]
    for worker in workers:
        worker.start()
    show = _ChunkProgress(quiet=args.quiet, total_bytes=todo_bytes, total_chunks=len(pending))
    try:
        with show:
            while True:
                try:
                    message = events.get(timeout=0.2)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):
                        break
                    continue
                kind = message[0]
                if kind == "bytes":
                    show.advance(message[1], message[2])
                elif kind == "chunk":
                    tally.add_plain(message[2])
                    peaks[message[3]] = message[4]  # the worker's figures so far
                    show.chunk_done()
                elif kind == "failed":
                    failures.append(message[2])
                elif kind == "error":
                    failures.append(message[1])
    except BaseException:
        # Ctrl-C (the workers ignore it: this process decides) or an error here: no worker
        # runs on alone. A stopped worker's transactions are whole or absent.
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        raise
    finally:
        for worker in workers:
            if worker.is_alive() and failures:
                worker.terminate()
            worker.join()
    for worker in workers:
        if worker.exitcode not in (0, None) and not failures:
            raise CliError(f"a worker process failed (exit status {worker.exitcode}); see above")
    return tally, failures, [peaks[pid] for pid in sorted(peaks)]


class _ChunkProgress:
    """A rich progress bar over bytes, with chunks and events counted; nothing when quiet."""

    def __init__(self, *, quiet: bool, total_bytes: int, total_chunks: int) -> None:
        self.quiet = quiet
        self.total_bytes = total_bytes
        self.total_chunks = total_chunks
        self.chunks = 0
        self.events = 0
        self.started = time.perf_counter()
        self.progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ChunkProgress:
        if self.quiet:
            return self
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.progress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[chunks]} chunks"),
            TextColumn("{task.fields[events]:>10,} events"),
            TextColumn("{task.fields[rate]:>9,.0f} events/s"),
            TimeElapsedColumn(),
            console=console(stderr=True),
        )
        self.progress.start()
        self._task = self.progress.add_task(
            "running", total=self.total_bytes, chunks=self._chunks(), events=0, rate=0.0
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _chunks(self) -> str:
        return f"{self.chunks}/{self.total_chunks}"

    def advance(self, read: int, events: int) -> None:
        """Count bytes read and events settled by a worker's batch."""
        self.events += events
        if self.progress is None:
            return
        rate = self.events / max(1e-9, time.perf_counter() - self.started)
        self.progress.update(self._task, advance=read, events=self.events, rate=rate)

    def chunk_done(self) -> None:
        """Count a committed chunk."""
        self.chunks += 1
        if self.progress is not None:
            self.progress.update(self._task, chunks=self._chunks())


# -- the worker process ----------------------------------------------------------------------


def worker_main(config: dict[str, Any], tasks: Any, events: Any, parent: int) -> None:
    """A worker process: run chunks from `tasks` until it hands out None.

    With `ONCEFLOW_PROFILE=<folder>` in the environment each worker writes its cProfile
    statistics to `<folder>/worker-<pid>.prof` (for `python -m pstats`).
    """
    folder = os.environ.get("ONCEFLOW_PROFILE")
    if not folder:
        _worker_main(config, tasks, events, parent)
        return
    import cProfile

    profile = cProfile.Profile()
    try:
        profile.runcall(_worker_main, config, tasks, events, parent)
    finally:
        profile.dump_stats(Path(folder) / f"worker-{os.getpid()}.prof")


def _worker_main(config: dict[str, Any], tasks: Any, events: Any, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the workers (or a run
    # killed whole leaves them to notice at their next batch), not each on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_logs(bool(config["verbose"]))
    state = LocalState(config["state"])
    try:
        # Each chunk is a watermark lane (`ChunkReader.lane`): a batch's outputs commit
        # with its lane's record in one transaction (`SqliteSink.write_and_commit_lanes`),
        # one upsert per output and one lane record, instead of a claimed and a completed
        # marker per record besides. The shared state file's write lock is what N workers
        # queue for, so this is what lets them run side by side (see docs/large-files.md).
        # Dead letters (rare) are written on their own before the lane settles them.
        pipeline = Pipeline(
            load_processor(config["processor"]),
            state.sink,
            state.store,
            _Overwrites(state.dead_letters),
            retry=RetryPolicy(attempts=config["max_attempts"]),
            max_deliveries=config["max_deliveries"],
            breaker=CircuitBreaker(cool_down=config["cool_down"]),
            lease_seconds=config["lease_seconds"],
            name=config["processor"],
        )
        count_windows(pipeline, SqliteWindowCounts(state.database))  # reconciliation counts
        plan = ChunkPlan.from_plain(config["plan"])
        files = InputFiles(config["folder"])
        ledger = chunked_ledger(state.folder)
        began = time.perf_counter()
        while True:
            index = _next_task(tasks, parent)
            if index is None:
                return
            tally = Tally()
            read = [0]

            def on_bytes(count: int, read: list[int] = read) -> None:
                read[0] += count

            def on_batch(result: BatchResult, tally: Tally = tally, read: list[int] = read) -> None:
                if os.getppid() != parent:
                    os._exit(1)  # the run was killed: leave the chunk to the rerun
                tally.add(result)
                settled = len(result.processed) + len(result.duplicates)
                events.put(("bytes", read[0], settled + len(result.dead_lettered)))
                read[0] = 0

            try:
                run = anyio.run(
                    lambda index=index, tally=tally: run_chunk(  # type: ignore[misc]
                        pipeline,
                        files,
                        ledger,
                        plan,
                        index,
                        batch_size=config["batch_size"],
                        on_batch=on_batch,
                        keep_results=False,  # tallied by on_batch: memory stays one batch's
                        id_field=config["id_field"],
                        partition_field=config["partition_field"],
                        # The unchunked path's source: the same ids give the same keys.
                        source="files" if config["id_field"] else f"file:{plan.path}",
                        on_bytes=on_bytes,
                        lane=True,
                    )
                )
            except (ChunkBusy, ChunkIncomplete) as exc:
                events.put(("failed", index, str(exc)))
                continue
            if run.skipped:
                events.put(("bytes", plan.chunks[index].bytes, 0))
            elif read[0]:
                events.put(("bytes", read[0], 0))
            events.put(("chunk", index, tally.as_plain(), os.getpid(), _usage(state, began)))
    except Exception as exc:  # e.g. the processor's setup() failed: say so, then stop
        events.put(("error", f"a worker stopped: {type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    finally:
        state.close()


class _Overwrites:
    """A sink seen only as idempotent writes, so the runner commits by lane watermarks."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def write(self, outputs: Sequence[Output]) -> None:
        """Write (an overwrite by output_id on a repeat)."""
        await self.sink.write(outputs)


def _usage(state: LocalState, began: float) -> dict[str, float]:
    """This worker's figures so far: memory, and its time waiting for and in the write lock."""
    database = state.database
    return {
        "rss": _peak_rss(),
        "waited": database.waited,
        "ran": time.perf_counter() - began,
        "held": database.held,
        "held_cpu": database.held_cpu,
        "cpu": time.process_time(),
        "transactions": database.transactions,
    }


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (0 where it cannot be told)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS counts bytes


def _next_task(tasks: Any, parent: int) -> int | None:
    while True:
        try:
            index: int | None = tasks.get(timeout=0.5)
            return index
        except queue.Empty:
            if os.getppid() != parent:
                return None
