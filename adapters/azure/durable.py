"""Large blobs on Azure Functions: a Durable Functions orchestrator over chunk activities.

    from onceflow.adapters.azure.durable import DurableChunks
    chunks = DurableChunks(build, container="landing", connection_setting="AzureWebJobsStorage")
    app.register_functions(chunks.blueprint(trigger_path="landing/{name}"))

The orchestrator plans the blob (an activity: a few ranged reads near the boundaries),
fans out one activity per chunk (with retries and backoff; each reads its slice with
ranged reads and runs it through the pipeline exactly once, `onceflow.fan_in.run_chunk`)
and fans in: the fan-in activity writes the manifest and `_SUCCESS` once every chunk has
its receipt. A chunk that still fails after its retries is dead-lettered in the
pipeline's own letter format, to its dead-letter sink and as a blob in the ledger
(`<run>/dead-letters/<chunk>.json`: the chunk and the error, never its records), and the
orchestration ends incomplete; starting it again redoes only the
missing chunks. The blob trigger starts one orchestration per blob version: its instance
id is derived from the blob's name and etag, so a trigger fired twice starts it once.
Every read of the blob carries `If-Match` of the etag planned (`BlobObjectStore.pinned`):
a blob rewritten mid-run fails its chunks with `ObjectChanged` (retried, then
dead-lettered) rather than mixing two versions; the new version has its own run.

The orchestrator is a generator over the context, as Durable Functions replays it: it
only yields tasks and decides, and every side effect is in an activity.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
import azure.durable_functions as df
import azure.functions as func

from onceflow.adapters.azure.objects import BlobObjectStore
from onceflow.chunks import DEFAULT_CHUNK_SIZE, chunk_key
from onceflow.fan_in import ChunkLedger, chunk_event, run_chunk
from onceflow.pipeline import Pipeline, built_once

__all__ = ["ORCHESTRATOR", "DurableChunks", "instance_id"]

ORCHESTRATOR = "onceflow_chunked"
PLAN, CHUNK, FAN_IN, DEAD_LETTER = (
    "onceflow_plan",
    "onceflow_chunk",
    "onceflow_fan_in",
    "onceflow_dead_letter",
)


def instance_id(path: str, version: str) -> str:
    """The orchestration instance of one blob version: stable, safe as an instance id."""
    digest = hashlib.sha256(f"{path}@{version}".encode()).hexdigest()[:32]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', path.rsplit('/', 1)[-1])[:40]}-{digest}"


@dataclass
class DurableChunks:
    """The chunked path's orchestrator and activities for one landing container."""

    pipeline: Pipeline | Callable[[], Pipeline]
    container: str
    connection_setting: str = "AzureWebJobsStorage"
    """The app setting holding the storage connection string."""
    objects: BlobObjectStore | None = None
    """The landing container's store; default built from `connection_setting`."""
    ledger: ChunkLedger | None = None
    """Where plans, receipts and manifests go; default `_onceflow/chunked` in the container."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    id_field: str | None = None
    partition_field: str | None = None
    batch_size: int = 500
    attempts: int = 6
    first_retry_ms: int = 2_000
    _built: Callable[[], Pipeline] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._built = built_once(self.pipeline)

    def _store(self) -> BlobObjectStore:
        if self.objects is None:
            connection = os.environ[self.connection_setting]
            self.objects = BlobObjectStore(self.container, connection_string=connection)
        return self.objects

    def _ledger(self) -> ChunkLedger:
        if self.ledger is None:
            self.ledger = ChunkLedger(self._store())
        return self.ledger

    def ledger_file(self, path: str) -> bool:
        """Whether `path` (in the landing container) is one of the ledger's own files."""
        ledger, store = self._ledger(), self._store()
        mine = ledger.objects
        if not isinstance(mine, BlobObjectStore):
            return False
        if mine.container.container_name != store.container.container_name:
            return False
        return (store.prefix + path).startswith(f"{mine.prefix}{ledger.prefix}/")

    # -- the orchestrator: decisions only ------------------------------------------------------

    def orchestrate(self, context: Any) -> Generator[Any, Any, dict[str, Any]]:
        """Plan, fan out one activity per chunk, fan in; dead-letter what is still missing."""
        # Every payload is plain JSON: its type is given, as the library's strict typing
        # (AZURE_FUNCTIONS_DURABLE_STRICT_TYPING=1) asks.
        blob = context.get_input(expected_type=dict)
        plan = yield context.call_activity(PLAN, blob, expected_type=dict)
        item = {"path": plan["path"], "version": plan["version"]}
        retry = df.RetryOptions(self.first_retry_ms, self.attempts)
        chunks = [
            context.call_activity_with_retry(
                CHUNK, retry, {**item, "index": index}, expected_type=dict
            )
            for index in plan["chunks"]
        ]
        error = None
        try:
            yield context.task_all(chunks)
        except Exception as exc:  # a chunk failed all its attempts: the fan-in says which
            error = f"{type(exc).__name__}: {exc}"
        result = yield context.call_activity(FAN_IN, item, expected_type=dict)
        if not result["complete"]:
            yield context.call_activity(
                DEAD_LETTER,
                {**item, "chunks": result["missing"], "error": error or "missing"},
                expected_type=list,
            )
        return dict(result)

    # -- the activities: the side effects -----------------------------------------------------

    def plan(self, blob: dict[str, Any]) -> dict[str, Any]:
        """Activity: the blob's chunk plan (the saved one if planned before)."""

        async def plan() -> dict[str, Any]:
            store = self._store()
            version = blob.get("version")
            if version is None:  # started by hand: the blob as it is now
                info = await store.head(blob["path"])
                if info is None:
                    raise FileNotFoundError(f"no blob {blob['path']!r} to plan")
                version = info.etag
            pinned = store.pinned(version) if version else store
            made = await self._ledger().plan(
                pinned, blob["path"], chunk_size=self.chunk_size, version=version
            )
            return {
                "path": made.path,
                "version": made.version,
                "chunks": [c.index for c in made.chunks],
                "note": made.note,
            }

        result: dict[str, Any] = anyio.run(plan)
        return result

    def chunk(self, item: dict[str, Any]) -> dict[str, Any]:
        """Activity: run one chunk exactly once; its receipt (raises while it cannot commit)."""

        async def work() -> dict[str, Any]:
            ledger = self._ledger()
            plan = await ledger.saved_plan(item["path"], item["version"])
            if plan is None:
                raise FileNotFoundError(f"no chunk plan for {item['path']} {item['version']}")
            run = await run_chunk(
                self._built(),
                self._store().pinned(plan.version),  # the version is the planned etag
                ledger,
                plan,
                int(item["index"]),
                batch_size=self.batch_size,
                id_field=self.id_field,
                partition_field=self.partition_field,
                source="blob" if self.id_field else None,
            )
            return {**run.receipt.as_plain(), "skipped": run.skipped}

        result: dict[str, Any] = anyio.run(work)
        return result

    def fan_in(self, item: dict[str, Any]) -> dict[str, Any]:
        """Activity: the manifest and `_SUCCESS` once every chunk is committed."""

        async def gather() -> dict[str, Any]:
            ledger = self._ledger()
            plan = await ledger.saved_plan(item["path"], item["version"])
            if plan is None:
                raise FileNotFoundError(f"no chunk plan for {item['path']} {item['version']}")
            manifest = await ledger.fan_in(plan)
            if manifest is None:
                return {"complete": False, "missing": await ledger.pending(plan)}
            return {
                "complete": True,
                "chunks": len(manifest.chunks),
                "rows": manifest.rows,
                "invalid": manifest.invalid,
                "sha256": manifest.sha256,
            }

        result: dict[str, Any] = anyio.run(gather)
        return result

    def dead_letter(self, item: dict[str, Any]) -> list[str]:
        """Activity: a dead letter per chunk that failed all its attempts; their blobs.

        Each letter is in the pipeline's own format (`Pipeline.dead_letter_for`; its event
        the chunk, `fan_in.chunk_event`, never the chunk's records; its key the chunk's
        key), written to the pipeline's dead-letter sink when it has one, and always kept
        as a blob in the ledger (`<run>/dead-letters/<chunk>.json`).
        """

        async def write() -> list[str]:
            ledger = self._ledger()
            pipeline = self._built()
            path, version = item["path"], item["version"]
            folder = ledger.folder(path, version)
            error = str(item.get("error") or "missing")
            kind = error.split(":", 1)[0].strip() if ":" in error else "ChunksMissing"
            written, letters = [], []
            for index in item["chunks"]:
                record = chunk_event(path, version, int(index), {"container": self.container})
                letter = pipeline.dead_letter_for(
                    record,
                    f"chunk {index} of {self.container}/{path} failed: {error}",
                    error_type=kind,
                    key=chunk_key(path, version, int(index)),
                )
                where = f"{folder}/dead-letters/{int(index):05d}.json"
                await ledger.objects.put(where, json.dumps(letter.value).encode())
                written.append(where)
                letters.append(letter)
            if pipeline.dead_letter is not None and letters:
                await pipeline.dead_letter.write(letters)
            return written

        result: list[str] = anyio.run(write)
        return result

    # -- the Functions app --------------------------------------------------------------------

    def blueprint(self, *, trigger_path: str | None = None) -> df.Blueprint:
        """The orchestrator, the activities and (with `trigger_path`) a blob trigger."""
        bp = df.Blueprint()

        def orchestrator(context: df.DurableOrchestrationContext) -> Any:
            return (yield from self.orchestrate(context))

        orchestrator.__name__ = ORCHESTRATOR
        bp.function_name(ORCHESTRATOR)(
            bp.orchestration_trigger(context_name="context", orchestration=ORCHESTRATOR)(
                orchestrator
            )
        )
        for name, activity in (
            (PLAN, self.plan),
            (CHUNK, self.chunk),
            (FAN_IN, self.fan_in),
            (DEAD_LETTER, self.dead_letter),
        ):
            # Durable Functions calls an activity by its function's name.
            bp.function_name(name)(
                bp.activity_trigger(input_name="item", activity=name)(_activity(activity, name))
            )
        if trigger_path is not None:
            container = trigger_path.split("/", 1)[0]

            async def landed(blob: func.InputStream, client: df.DurableOrchestrationClient) -> None:
                path = (blob.name or "").split("/", 1)[-1] if blob.name else ""
                if self.ledger_file(path):
                    return  # the ledger's own plans and receipts, beside the landed blobs
                info = await self._store().head(path) if path else None
                if info is None:
                    return  # deleted since it landed: nothing to read
                tag = info.etag or f"{info.size}-{info.modified}"
                instance = instance_id(f"{container}/{path}", tag)
                status = await client.get_status(instance)
                if status is None or getattr(status, "runtime_status", None) is None:
                    await client.start_new(ORCHESTRATOR, instance, {"path": path, "version": tag})

            bp.function_name("onceflow_chunked_landed")(
                bp.blob_trigger(
                    arg_name="blob", path=trigger_path, connection=self.connection_setting
                )(bp.durable_client_input(client_name="client")(landed))
            )
        return bp


def _activity(method: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def activity(item: Any) -> Any:
        return method(item)

    activity.__name__ = name
    return activity
