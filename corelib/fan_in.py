"""Chunks run exactly once, then fan in: a receipt per chunk, one manifest and `_SUCCESS`.

`ChunkLedger` keeps a chunked run of one object version in an object store folder:

    <prefix>/<object>/<version>/plan.json            the plan, fixed by the first planner
    <prefix>/<object>/<version>/items.json           `[{"index": 0}, ...]`, for a Map's reader
    <prefix>/<object>/<version>/chunks/00000.json    one receipt per committed chunk
    <prefix>/<object>/<version>/manifest.json        chunks, rows, bytes, checksums
    <prefix>/<object>/<version>/_SUCCESS             written last, once

Every file is written with `put_if_absent`, so two workers racing on one chunk, or two
fan-ins, leave one copy; the manifest is written only once every receipt is there, and
`_SUCCESS` only after the manifest. `run_chunk` runs one chunk through a `Pipeline`:
its records are each exactly once by their own keys, and the chunk itself is a key in the
pipeline's store (`chunk_key`), leased while it runs and completed after its receipt, so
a rerun skips committed chunks and redoes only the rest.

Plans are filed by object version (an S3 VersionId, else the ETag), so a rewritten object
gets a plan of its own, never the old version's; a saved plan whose size is not the
object's is refused (`ChunkPlanMismatch`), never read against other bytes.

A chunk that fails all its attempts is dead-lettered as a `chunk_event` (the object,
version, chunk and how reads are pinned, never its records) in the pipeline's own letter
format, under the chunk's key; `chunk_of` reads it back from a letter, to run it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from onceflow.chunks import (
    ChunkPlan,
    ChunkReader,
    RangedObjects,
    object_source,
    object_version,
    plan_chunks,
)
from onceflow.errors import OnceflowError
from onceflow.event import Event
from onceflow.interfaces import ObjectStore
from onceflow.pipeline import BatchResult, Pipeline
from onceflow.records import ClaimStatus, Completion, Outcome, OutcomeStatus

__all__ = [
    "CHUNK_EVENT_TYPE",
    "ChunkBusy",
    "ChunkIncomplete",
    "ChunkLedger",
    "ChunkPlanMismatch",
    "ChunkReceipt",
    "ChunkRun",
    "Manifest",
    "chunk_event",
    "chunk_of",
    "run_chunk",
]

SUCCESS = "_SUCCESS"
ITEMS = "items.json"
CHUNK_EVENT_TYPE = "onceflow.object.chunk"
"""The type of the event a dead-lettered chunk is filed as."""


class ChunkBusy(OnceflowError):
    """Another worker holds the chunk's live lease: try it again later."""


class ChunkIncomplete(OnceflowError):
    """Some of the chunk's records are still failing (an outage): the chunk is not committed."""


class ChunkPlanMismatch(OnceflowError):
    """A plan saved under the object's version does not describe the object's bytes."""


def chunk_event(path: str, version: str, index: int, where: dict[str, Any]) -> Event:
    """The event a chunk of `path` at `version` is dead-lettered as; `where` finds the object.

    `where` (plain JSON, e.g. `{"bucket": ..., "pin": ...}`) is kept in the event's data with
    the path, version and index; its source is the object version's, as its records'.
    """
    data = {**where, "key": path, "version": version, "index": index}
    return Event(
        id=f"chunk-{index:05d}",
        source=object_source(path, version),
        type=CHUNK_EVENT_TYPE,
        data=json.dumps(data, sort_keys=True).encode(),
        attributes={"object": path, "chunk": str(index)},
    )


def chunk_of(letter: dict[str, Any]) -> dict[str, Any] | None:
    """The chunk a dead letter names (`chunk_event`'s data), or None for another letter."""
    doc = letter.get("event")
    if not isinstance(doc, dict) or doc.get("type") != CHUNK_EVENT_TYPE:
        return None
    try:
        found = Event.from_cloudevent(doc).json()
    except ValueError:
        return None
    ok = isinstance(found, dict) and {"key", "version", "index"} <= found.keys()
    return found if ok else None


@dataclass(frozen=True, slots=True)
class ChunkReceipt:
    """What one committed chunk held: the same on every run of the same plan."""

    index: int
    start: int
    end: int
    rows: int
    """Records read (events and invalid records)."""
    invalid: int
    """Records that were not decodable (dead-lettered)."""
    bytes: int
    sha256: str

    def as_plain(self) -> dict[str, Any]:
        """The receipt as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Manifest:
    """The run of one object version, once every chunk is committed."""

    path: str
    version: str
    format: str
    size: int
    chunks: tuple[ChunkReceipt, ...]
    rows: int
    invalid: int
    bytes: int
    sha256: str
    """sha256 over the chunks' checksums in order."""

    def as_plain(self) -> dict[str, Any]:
        """The manifest as JSON-ready data."""
        return asdict(self)


def _dump(plain: dict[str, Any]) -> bytes:
    return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()


def _checked(plan: ChunkPlan, size: int) -> ChunkPlan:
    """`plan`, when it describes an object of `size` bytes (else another object's bytes)."""
    if plan.size != size:
        raise ChunkPlanMismatch(
            f"the plan saved for {plan.path} version {plan.version} covers {plan.size} "
            f"bytes, the object has {size}: two contents under one version; plan it "
            "under its own version (an S3 VersionId or the ETag of these bytes)"
        )
    return plan


class ChunkLedger:
    """Plans, receipts, manifests and `_SUCCESS` markers of chunked runs, in `objects`."""

    def __init__(self, objects: ObjectStore, prefix: str = "_onceflow/chunked") -> None:
        self.objects = objects
        self.prefix = prefix.strip("/")

    def folder(self, path: str, version: str) -> str:
        """The folder of one object version's run (the path and version kept readable)."""
        return f"{self.prefix}/{quote(path, safe='')}/{quote(version, safe='')}"

    def _receipt_path(self, plan: ChunkPlan, index: int) -> str:
        return f"{self.folder(plan.path, plan.version)}/chunks/{index:05d}.json"

    async def plan(
        self, inputs: RangedObjects, path: str, *, version: str | None = None, **options: Any
    ) -> ChunkPlan:
        """The plan of the object's current version: the saved one, else a new one, saved.

        The first plan saved wins, so every worker and every rerun splits the object the
        same way even when they were given another `chunk_size`.
        """
        info = await inputs.head(path)
        if info is not None:  # a plan saved before is not made again (it may read it all)
            saved = await self.saved_plan(path, object_version(info, version))
            if saved is not None:
                return _checked(saved, info.size)
        fresh = await plan_chunks(inputs, path, version=version, **options)
        saved = await self.saved_plan(fresh.path, fresh.version)
        if saved is not None:
            return _checked(saved, fresh.size)
        where = f"{self.folder(fresh.path, fresh.version)}/plan.json"
        if await self.objects.put_if_absent(where, _dump(fresh.as_plain())):
            return fresh
        raced = await self.saved_plan(fresh.path, fresh.version)
        return _checked(raced, fresh.size) if raced is not None else fresh

    async def items(self, plan: ChunkPlan) -> str:
        """The path of the plan's items file (`[{"index": i}, ...]`), written once."""
        where = f"{self.folder(plan.path, plan.version)}/{ITEMS}"
        listed = json.dumps([{"index": chunk.index} for chunk in plan.chunks])
        await self.objects.put_if_absent(where, listed.encode())
        return where

    async def saved_plan(self, path: str, version: str) -> ChunkPlan | None:
        """The plan saved for this object version, or None."""
        try:
            raw = await self.objects.get(f"{self.folder(path, version)}/plan.json")
        except FileNotFoundError:
            return None
        return ChunkPlan.from_plain(json.loads(raw))

    async def receipt(self, plan: ChunkPlan, index: int) -> ChunkReceipt | None:
        """The chunk's receipt, or None while it is not committed."""
        try:
            raw = await self.objects.get(self._receipt_path(plan, index))
        except FileNotFoundError:
            return None
        return ChunkReceipt(**json.loads(raw))

    async def record(self, plan: ChunkPlan, receipt: ChunkReceipt) -> bool:
        """File the chunk's receipt; whether this call filed it (False: it was there)."""
        return await self.objects.put_if_absent(
            self._receipt_path(plan, receipt.index), _dump(receipt.as_plain())
        )

    async def receipts(self, plan: ChunkPlan) -> dict[int, ChunkReceipt]:
        """The committed chunks' receipts by index (one listing, then one read each)."""
        folder = f"{self.folder(plan.path, plan.version)}/chunks/"
        found: dict[int, ChunkReceipt] = {}
        for info in await self.objects.list(folder):
            name = info.path[len(folder) :]
            if name.endswith(".json") and name[:-5].isdigit():
                receipt = await self.receipt(plan, int(name[:-5]))
                if receipt is not None:
                    found[receipt.index] = receipt
        return found

    async def pending(self, plan: ChunkPlan) -> list[int]:
        """The chunks without a receipt, in order."""
        done = await self.receipts(plan)
        return [chunk.index for chunk in plan.chunks if chunk.index not in done]

    async def manifest(self, plan: ChunkPlan) -> Manifest | None:
        """The run's manifest, or None while it is not written."""
        try:
            raw = await self.objects.get(f"{self.folder(plan.path, plan.version)}/manifest.json")
        except FileNotFoundError:
            return None
        plain = json.loads(raw)
        plain["chunks"] = tuple(ChunkReceipt(**c) for c in plain["chunks"])
        return Manifest(**plain)

    async def succeeded(self, plan: ChunkPlan) -> bool:
        """Whether `_SUCCESS` is written."""
        folder = self.folder(plan.path, plan.version)
        return await self.objects.head(f"{folder}/{SUCCESS}") is not None

    async def fan_in(self, plan: ChunkPlan) -> Manifest | None:
        """Once every chunk has its receipt: the manifest, then `_SUCCESS`, each once.

        None while a chunk is still missing. Safe to call from every worker after its
        chunk (the last one completes the run) and again after a crash.
        """
        folder = self.folder(plan.path, plan.version)
        done = await self.receipts(plan)
        if len(done) < len(plan.chunks):
            return None
        receipts = tuple(done[chunk.index] for chunk in plan.chunks)
        digest = hashlib.sha256()
        for receipt in receipts:
            digest.update(receipt.sha256.encode())
        manifest = Manifest(
            path=plan.path,
            version=plan.version,
            format=plan.fmt,
            size=plan.size,
            chunks=receipts,
            rows=sum(r.rows for r in receipts),
            invalid=sum(r.invalid for r in receipts),
            bytes=sum(r.bytes for r in receipts),
            sha256=digest.hexdigest(),
        )
        await self.objects.put_if_absent(f"{folder}/manifest.json", _dump(manifest.as_plain()))
        await self.objects.put_if_absent(f"{folder}/{SUCCESS}", manifest.sha256.encode())
        return manifest


@dataclass
class ChunkRun:
    """What running one chunk did."""

    receipt: ChunkReceipt
    skipped: bool = False
    """The chunk was committed before: nothing was read."""
    results: list[BatchResult] = field(default_factory=list)
    """Every batch's result (empty when skipped)."""


async def run_chunk(
    pipeline: Pipeline,
    inputs: RangedObjects,
    ledger: ChunkLedger,
    plan: ChunkPlan,
    index: int,
    *,
    batch_size: int = 500,
    rounds: int = 4,
    on_batch: Callable[[BatchResult], None] | None = None,
    keep_results: bool = True,
    deadline: float | None = None,
    **reader: Any,
) -> ChunkRun:
    """Run chunk `index` of `plan` through `pipeline` once; its receipt.

    A committed chunk is skipped. Otherwise the chunk's key is claimed in the pipeline's
    store (`ChunkBusy` while another worker holds it), its records go through the
    pipeline batch by batch (a failing batch is delivered again `rounds` more times;
    `ChunkIncomplete` if some still fail, leaving the chunk to be run again), then the
    receipt is filed and the key completed. `reader` goes to `ChunkReader` (`source`,
    `id_field`, `partition_field`, `on_bytes`). Without `keep_results` the batches'
    results go only to `on_batch`: `ChunkRun.results` stays empty, and memory stays one
    batch's whatever the chunk's size. `deadline` (in the pipeline's clock) bounds each
    batch's redelivery rounds and their waits, as `Pipeline.redeliver` does.
    """
    done = await ledger.receipt(plan, index)
    if done is not None:
        return ChunkRun(done, skipped=True)
    store = pipeline.store
    key = plan.key(index)
    (claim,) = await store.claim([key], pipeline.lease_seconds)
    if claim.status is ClaimStatus.COMPLETED:
        receipt = await ledger.receipt(plan, index)
        if receipt is not None:
            return ChunkRun(receipt, skipped=True)
    elif claim.status is ClaimStatus.IN_PROGRESS:
        raise ChunkBusy(f"chunk {index} of {plan.path} is being run by another worker")
    chunk_reader = ChunkReader(inputs, plan, index, **reader)
    run = ChunkRun(ChunkReceipt(index, 0, 0, 0, 0, 0, ""))
    try:
        async for batch in chunk_reader.batches(batch_size):
            result = await pipeline.redeliver(batch, rounds=rounds, deadline=deadline)
            if keep_results:
                run.results.append(result)
            if on_batch is not None:
                on_batch(result)
            if result.failed:
                first = result.failures.get(result.failed[0])
                raise ChunkIncomplete(
                    f"chunk {index} of {plan.path}: {len(result.failed)} record(s) still "
                    f"failing ({first.text if first else 'not processed'}); run it again"
                )
    except BaseException:
        if claim.status is ClaimStatus.NEW:
            await store.release([claim])
        raise
    chunk = plan.chunks[index]
    receipt = ChunkReceipt(
        index,
        chunk.start,
        chunk.end,
        chunk_reader.rows,
        chunk_reader.invalid,
        chunk.bytes,
        chunk_reader.checksum,
    )
    await ledger.record(plan, receipt)
    if claim.status is ClaimStatus.NEW:
        # A refused completion (the lease ran out and was taken) is harmless: the receipt
        # is filed, and the records were each committed under their own keys.
        outcome = Outcome(OutcomeStatus.SUCCEEDED, receipt.rows, receipt.sha256)
        await store.complete([Completion(claim, outcome)])
    run.receipt = receipt
    return run
