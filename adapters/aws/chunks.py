"""Large S3 objects on Lambda: a router, a chunk worker and a fan-in, for one state machine.

    from onceflow.adapters.aws.chunks import chunked_handlers
    handlers = chunked_handlers(build)       # build() -> Pipeline, as for lambda_handler
    router, chunk_worker, fan_in = handlers.router, handlers.chunk_worker, handlers.fan_in

The router takes S3 notifications (direct, through SQS or SNS, through EventBridge). An
object up to `inline_limit` bytes is read and run in the router itself, as one chunk,
when the invocation's time left (less `safety_margin`) reads it at `inline_rate` bytes a
second (so a router deployed with a short timeout sends a 64 MiB object to the state
machine rather than run out of time on it); any other is planned (a few ranged GETs
near the boundaries), its plan and items file filed in the ledger, and one execution of
the state machine started for it, named after the object version so a notification
delivered twice starts it once. The state machine
(`state_machine.chunked_state_machine`) maps the chunk worker over the plan: each worker
reads its slice with ranged GETs and runs it through the pipeline exactly once
(`onceflow.fan_in.run_chunk`); the fan-in writes the manifest and `_SUCCESS` once every
chunk has its receipt.

Every read of the object is pinned to the version planned (`S3ObjectStore.pinned`): by
`VersionId` when the notification names one, else by `If-Match: <ETag>`, so an object
rewritten mid-run fails its chunks with `ObjectChanged` (caught, dead-lettered) rather
than mixing two versions. A chunk that fails all its attempts comes back to the chunk
worker with its error (`chunk_failed`), which writes a dead letter in the pipeline's own
format to the pipeline's dead-letter sink; `replay` runs such letters' chunks again.
A worker watches its invocation's time left
(`context.get_remaining_time_in_millis()`): when the next batch might not fit, it stops
between batches with `ChunkOutOfTime`, the chunk left uncommitted for the state
machine's next attempt (whose records already committed are duplicates, so each attempt
gets further), never timed out half-way through a commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from onceflow.adapters.aws.decode import S3Object, decode, s3_object
from onceflow.adapters.aws.entry import answer
from onceflow.adapters.aws.objects import S3ObjectStore
from onceflow.adapters.aws.sdk import boto3_client, run_blocking
from onceflow.chunks import DEFAULT_CHUNK_SIZE, ChunkPlan, chunk_key
from onceflow.deployment import Deployment, TriggerKind
from onceflow.errors import ConfigurationError, OnceflowError
from onceflow.event import Event
from onceflow.fan_in import ChunkLedger, ChunkRun, chunk_event, chunk_of, run_chunk
from onceflow.pipeline import BatchResult, Pipeline, built_once
from onceflow.records import InvalidRecord
from onceflow.retry import deadline_in

__all__ = ["ChunkOutOfTime", "ChunkedHandlers", "chunked_handlers", "execution_name"]

STATE_MACHINE_ENV = "ONCEFLOW_STATE_MACHINE_ARN"
LEDGER_BUCKET_ENV = "ONCEFLOW_LEDGER_BUCKET"
PIN_VERSION, PIN_ETAG = "version", "etag"
"""How the execution's input says the plan's `version` pins reads: a VersionId, an ETag."""
INLINE_ITEMS_BYTES = 192 << 10
"""The execution input carries `chunks` (for an inline Map) up to this many bytes of them:
the input's limit is 256 KB. A Distributed Map reads the ledger's items file instead."""


class ChunkOutOfTime(OnceflowError):
    """The invocation's time ran low before the chunk was done: it is left uncommitted."""


class _TimeGuard:
    """Stops a chunk between batches while its invocation still has time to hand it back.

    The margin grows with the slowest batch seen, so the next batch is not started when
    it might not end before the function's timeout.
    """

    def __init__(self, context: Any, margin: float, what: str) -> None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        self._remaining: Callable[[], Any] | None = remaining
        self.margin = margin
        self.what = what
        self._last = time.monotonic()
        self.slowest = 0.0

    def left(self) -> float | None:
        """Seconds the invocation has left, None without a Lambda context."""
        return None if self._remaining is None else float(self._remaining()) / 1000.0

    def check(self, _result: BatchResult | None = None) -> None:
        """Raise `ChunkOutOfTime` when another batch might not fit in the time left."""
        now = time.monotonic()
        self.slowest = max(self.slowest, now - self._last)
        self._last = now
        left = self.left()
        if left is not None and left <= self.margin + 2 * self.slowest:
            raise ChunkOutOfTime(
                f"{self.what}: {left:.1f} s left of the invocation, a batch takes up to "
                f"{self.slowest:.1f} s: stopped between batches, the chunk is run again"
            )


def execution_name(bucket: str, key: str, version: str) -> str:
    """The state machine execution of one object version: at most 80 characters, stable."""
    digest = hashlib.sha256(f"{bucket}/{key}@{version}".encode()).hexdigest()[:32]
    readable = re.sub(r"[^A-Za-z0-9_-]", "-", key.rsplit("/", 1)[-1])[:40]
    return f"{readable}-{digest}"


@dataclass
class ChunkedHandlers:
    """The three Lambda handlers of the chunked path, sharing one pipeline per container."""

    pipeline: Pipeline | Callable[[], Pipeline]
    state_machine_arn: str | None = None
    """Where the router starts executions; default the `ONCEFLOW_STATE_MACHINE_ARN` variable."""
    inline_limit: int = DEFAULT_CHUNK_SIZE
    """Objects up to this size may run in the router, as one chunk (see `inline_rate`)."""
    inline_rate: int = 1 << 20
    """Bytes a second the router counts on reading and processing inline: an object runs
    inline only when the invocation's time left, less `safety_margin`, covers its size at
    this rate (1 MiB/s: 64 MiB needs 74 s); otherwise it goes to the state machine."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    ledger_bucket: str | None = None
    """The ledger's bucket; default `ONCEFLOW_LEDGER_BUCKET`, else each object's own bucket."""
    ledger_prefix: str = "_onceflow/chunked"
    id_field: str | None = None
    partition_field: str | None = None
    batch_size: int = 500
    read_size: int = 8 << 20
    """Bytes of one ranged GET: what a worker holds of the object at once. Fewer, larger
    GETs than the local reader's 1 MiB, as S3 rewards (per-request latency and cost)."""
    safety_margin: float = 10.0
    """Seconds kept free before the function's timeout: a chunk stops between batches."""
    deployment: Deployment | None = None
    """What the functions need deployed (an S3 trigger); `onceflow aws template` reads it."""
    s3: Any = None
    stepfunctions: Any = None
    _built: Callable[[], Pipeline] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._built = built_once(self.pipeline)
        if self.deployment is not None and self.deployment.trigger.kind is not TriggerKind.S3:
            raise ConfigurationError(
                f"the chunked handlers read S3 objects: their deployment declares a "
                f"{self.deployment.trigger.kind} trigger; declare Trigger(TriggerKind.S3, ...)"
            )

    # -- the pieces each handler needs -------------------------------------------------------

    def _objects(self, bucket: str) -> S3ObjectStore:
        return S3ObjectStore(bucket, client=self.s3)

    def _pinned(self, bucket: str, version: str, pin: str) -> S3ObjectStore:
        """The bucket, every read pinned to the planned version (`pin`: what `version` is)."""
        objects = self._objects(bucket)
        if pin == PIN_VERSION:
            return objects.pinned(version_id=version)
        return objects.pinned(etag=version)

    def _ledger_bucket(self, bucket: str) -> str:
        return self.ledger_bucket or os.environ.get(LEDGER_BUCKET_ENV) or bucket

    def _ledger(self, bucket: str) -> ChunkLedger:
        where = self._ledger_bucket(bucket)
        return ChunkLedger(S3ObjectStore(where, client=self.s3), self.ledger_prefix)

    async def _run(
        self,
        objects: S3ObjectStore,
        ledger: ChunkLedger,
        plan: ChunkPlan,
        index: int,
        guard: _TimeGuard,
    ) -> ChunkRun:
        """Chunk `index` through the pipeline, stopping between batches when time runs low."""
        guard.check()
        left = guard.left()
        # Store and sink retry loops see the same deadline and never sleep past it.
        budget = None if left is None else left - self.safety_margin
        pipeline = self._built()
        # Redelivery rounds inside a batch (and their backoff waits) stop at it too.
        deadline = None if budget is None else pipeline.clock.now() + budget
        with deadline_in(budget):
            return await run_chunk(
                pipeline,
                objects,
                ledger,
                plan,
                index,
                batch_size=self.batch_size,
                on_batch=guard.check,
                deadline=deadline,
                **self._reader(),
            )

    def _reader(self) -> dict[str, Any]:
        return {
            "id_field": self.id_field,
            "partition_field": self.partition_field,
            "source": "s3" if self.id_field else None,
            "read_size": self.read_size,
        }

    def _sfn(self) -> Any:
        if self.stepfunctions is None:
            self.stepfunctions = boto3_client("stepfunctions")
        return self.stepfunctions

    # -- the router --------------------------------------------------------------------------

    def router(self, event: Any, context: Any = None) -> dict[str, Any]:
        """S3 notifications: small objects run here, large ones start the state machine."""
        delivery = decode(event)
        bad = [r for r in delivery.records if isinstance(r, InvalidRecord)]
        objects = [s3_object(r) for r in delivery.records if isinstance(r, Event)]
        pipeline = self._built()
        result = pipeline.run_batch(bad) if bad else BatchResult()
        failed: list[str] = list(result.failed)
        for record, found in zip(
            [r for r in delivery.records if isinstance(r, Event)], objects, strict=True
        ):
            if found.event_name.startswith("ObjectRemoved") or found.event_name == "s3:TestEvent":
                continue
            if not anyio.run(self._route, found, context):
                failed.append(record.id)
        return answer(delivery, BatchResult(failed=failed))

    async def _route(self, found: S3Object, context: Any) -> bool:
        """Run or start one object; whether its records are all settled or handed over."""
        ledger_bucket = self._ledger_bucket(found.bucket)
        if ledger_bucket == found.bucket and found.key.startswith(
            self.ledger_prefix.strip("/") + "/"
        ):
            return True  # the ledger's own files, written in the landing bucket: not input
        objects = self._objects(found.bucket)
        ledger = self._ledger(found.bucket)
        info = await objects.head(found.key)
        if info is None:
            return True  # deleted since: nothing to read
        pin = PIN_VERSION if found.version_id else PIN_ETAG
        pinned = self._pinned(found.bucket, found.version_id or info.etag or "", pin)
        guard = _TimeGuard(context, self.safety_margin, f"s3://{found.bucket}/{found.key}")
        inline = self.inline(info.size, guard.left())
        chunk_size = info.size + 1 if inline else self.chunk_size
        plan = await ledger.plan(
            pinned, found.key, chunk_size=chunk_size, version=found.version_id or info.etag
        )
        if inline and len(plan.chunks) == 1:
            try:
                run = await self._run(pinned, ledger, plan, 0, guard)
            except ChunkOutOfTime:
                return False  # handed back: Lambda invokes again, committed records skip
            failed = any(r.failed for r in run.results)
            return not failed and await ledger.fan_in(plan) is not None
        await self._start(found.bucket, ledger, plan, pin)
        return True

    def inline(self, size: int, left: float | None) -> bool:
        """Whether an object of `size` bytes runs in the router, with `left` seconds left."""
        if size > self.inline_limit:
            return False
        return left is None or size <= (left - self.safety_margin) * self.inline_rate

    async def _start(self, bucket: str, ledger: ChunkLedger, plan: ChunkPlan, pin: str) -> None:
        arn = self.state_machine_arn or os.environ.get(STATE_MACHINE_ENV)
        if not arn:
            raise RuntimeError(
                f"{plan.path} needs the chunked state machine: set {STATE_MACHINE_ENV} "
                "(onceflow's SAM template sets it)"
            )
        body: dict[str, Any] = {
            "bucket": bucket,
            "key": plan.path,
            "version": plan.version,
            "pin": pin,
            # A Distributed Map reads the items from the ledger: any number of chunks.
            "ledger_bucket": self._ledger_bucket(bucket),
            "items": await ledger.items(plan),
        }
        chunks = [{"index": c.index} for c in plan.chunks]
        if len(json.dumps(chunks)) <= INLINE_ITEMS_BYTES:
            body["chunks"] = chunks  # for an inline Map
        sfn = self._sfn()

        def start() -> None:
            # The same object version notified twice: its execution exists, it runs once.
            with contextlib.suppress(sfn.exceptions.ExecutionAlreadyExists):
                sfn.start_execution(
                    stateMachineArn=arn,
                    name=execution_name(bucket, plan.path, plan.version),
                    input=json.dumps(body),
                )

        await run_blocking(start)

    # -- the chunk worker and the fan-in -----------------------------------------------------

    async def _plan(self, event: dict[str, Any]) -> tuple[ChunkLedger, ChunkPlan]:
        ledger = self._ledger(event["bucket"])
        plan = await ledger.saved_plan(event["key"], event["version"])
        if plan is None:
            raise FileNotFoundError(
                f"no chunk plan for s3://{event['bucket']}/{event['key']} version "
                f"{event['version']}: the router files it before starting the state machine"
            )
        return ledger, plan

    def chunk_worker(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """One chunk, from the Map state's item: `{bucket, key, version, pin, index}`; its receipt.

        Raises `ChunkBusy`, `ChunkIncomplete` or `ChunkOutOfTime` (the state machine retries
        them with backoff) while the chunk cannot be committed yet, and `ObjectChanged`
        (caught and dead-lettered) when the object was rewritten since its plan. An item
        with `failed` (the catch path's error) is dead-lettered instead (`chunk_failed`).
        """
        if "failed" in event:
            return self.chunk_failed(event, context)

        async def work() -> dict[str, Any]:
            ledger, plan = await self._plan(event)
            index = int(event["index"])
            what = f"chunk {index} of s3://{event['bucket']}/{plan.path}"
            guard = _TimeGuard(context, self.safety_margin, what)
            # Without a pin (an execution started by hand) reads are pinned by ETag: a
            # mismatch fails clearly, never mixes versions.
            pinned = self._pinned(event["bucket"], plan.version, event.get("pin") or PIN_ETAG)
            run = await self._run(pinned, ledger, plan, index, guard)
            dead = sum(len(r.dead_lettered) for r in run.results)
            return {**run.receipt.as_plain(), "skipped": run.skipped, "dead_lettered": dead}

        result: dict[str, Any] = anyio.run(work)
        return result

    def chunk_failed(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """The catch path: dead-letter a chunk that failed all its attempts, in the
        pipeline's own letter format, to the pipeline's dead-letter sink.

        `event` is the Map item with `failed`, the error Step Functions caught (`Error`,
        `Cause`: for a Lambda error, its JSON with `errorMessage`, `errorType` and
        `stackTrace`). The letter's event is the chunk (`fan_in.chunk_event`: bucket, key,
        version, pin and index, never the chunk's records), its key the chunk's key.
        """
        pipeline = self._built()
        if pipeline.dead_letter is None:
            raise ConfigurationError(
                "the pipeline has no dead-letter sink for a failed chunk's letter: give "
                "Pipeline(dead_letter=...)"
            )
        index = int(event["index"])

        async def committed() -> bool:
            try:
                ledger, plan = await self._plan(event)
            except FileNotFoundError:
                return False
            return await ledger.receipt(plan, index) is not None

        if anyio.run(committed):  # committed after all (a retry of it won a race)
            return {"dead_lettered": None, "committed": True}
        error = event.get("failed") or {}
        error_type, message, trace = _caught(error)
        where = {"bucket": event["bucket"], "pin": event.get("pin") or PIN_ETAG}
        record = chunk_event(event["key"], event["version"], index, where)
        message = f"chunk {index} of s3://{event['bucket']}/{event['key']} failed: {message}"
        letter = pipeline.dead_letter_for(
            record,
            message,
            error_type=error_type,
            traceback=trace,
            key=chunk_key(event["key"], event["version"], index),
        )
        anyio.run(pipeline.dead_letter.write, [letter])
        return {"dead_lettered": letter.event_key, "error": error_type}

    def replay(self, letters: Any, context: Any = None) -> dict[str, Any]:
        """Run the chunks named by dead letters again (those `chunk_failed` wrote), then fan in.

        `letters`: letters as the dead-letter sink holds them (dicts), one letter, or an
        SQS event whose bodies are letters (a redrive of the dead-letter queue to this
        function). Other letters are left alone (`ignored`). A chunk committed since is
        skipped; its records committed before are duplicates, never applied twice.
        """
        found = [chunk_of(letter) for letter in _letters(letters)]
        chunks = [c for c in found if c is not None]

        async def again() -> dict[str, Any]:
            done: list[str] = []
            failed: dict[str, str] = {}
            complete: list[str] = []
            plans: dict[tuple[str, str, str], tuple[ChunkLedger, ChunkPlan]] = {}
            for chunk in chunks:
                item = {k: chunk[k] for k in ("bucket", "key", "version")}
                key = chunk_key(item["key"], item["version"], int(chunk["index"]))
                try:
                    ledger, plan = await self._plan(item)
                    pinned = self._pinned(
                        item["bucket"], plan.version, chunk.get("pin") or PIN_ETAG
                    )
                    guard = _TimeGuard(context, self.safety_margin, key)
                    await self._run(pinned, ledger, plan, int(chunk["index"]), guard)
                except Exception as exc:  # this chunk stays dead-lettered: say why, go on
                    failed[key] = f"{type(exc).__name__}: {exc}"
                    continue
                done.append(key)
                plans[(item["bucket"], plan.path, plan.version)] = (ledger, plan)
            for (bucket, path, _), (ledger, plan) in plans.items():
                if await ledger.fan_in(plan) is not None:
                    complete.append(f"s3://{bucket}/{path}@{plan.version}")
            ignored = len(found) - len(chunks)
            return {"replayed": done, "failed": failed, "complete": complete, "ignored": ignored}

        result: dict[str, Any] = anyio.run(again)
        return result

    def fan_in(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """After the Map: the manifest and `_SUCCESS` once every chunk is committed."""

        async def gather() -> dict[str, Any]:
            ledger, plan = await self._plan(event)
            manifest = await ledger.fan_in(plan)
            if manifest is None:
                missing = await ledger.pending(plan)
                return {"complete": False, "missing": missing[:100], "chunks": len(plan.chunks)}
            folder = ledger.folder(plan.path, plan.version)
            return {
                "complete": True,
                "chunks": len(manifest.chunks),
                "rows": manifest.rows,
                "invalid": manifest.invalid,
                "bytes": manifest.bytes,
                "sha256": manifest.sha256,
                "manifest": f"{folder}/manifest.json",
            }

        result: dict[str, Any] = anyio.run(gather)
        return result


def _caught(error: dict[str, Any]) -> tuple[str, str, str]:
    """(error type, message, traceback) of an error Step Functions caught."""
    kind = str(error.get("Error") or "Error")
    cause = error.get("Cause")
    try:
        parsed = json.loads(cause) if isinstance(cause, str) else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "errorMessage" in parsed:
        trace = parsed.get("stackTrace") or ""
        if isinstance(trace, list):
            trace = "".join(str(line) for line in trace)
        return str(parsed.get("errorType") or kind), str(parsed["errorMessage"]), str(trace)
    return kind, str(cause or kind), ""


def _letters(given: Any) -> list[dict[str, Any]]:
    """Letters from a list, one letter, or an SQS event whose bodies are letters."""
    if isinstance(given, dict) and isinstance(given.get("Records"), list):
        found = []
        for record in given["Records"]:
            try:
                body = json.loads(record.get("body", ""))
            except (TypeError, ValueError):
                continue
            if isinstance(body, dict):
                found.append(body)
        return found
    if isinstance(given, dict):
        return [given]
    return [letter for letter in given if isinstance(letter, dict)]


def chunked_handlers(
    pipeline: Pipeline | Callable[[], Pipeline], **options: Any
) -> ChunkedHandlers:
    """The router, chunk worker and fan-in handlers for `pipeline` (or its factory)."""
    return ChunkedHandlers(pipeline, **options)
