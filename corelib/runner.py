"""Pull mode: drive a pipeline from a `Source` until it is drained or stopped."""

from __future__ import annotations

from collections.abc import Callable

from onceflow.interfaces import Source
from onceflow.pipeline import BatchResult, Pipeline

__all__ = ["run_source"]


async def run_source(
    pipeline: Pipeline,
    source: Source,
    *,
    batch_size: int = 500,
    max_batches: int | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> BatchResult:
    """Process the source's batches, acking each with its failures; the totals.

    A record that failed is handed back to the source through `ack`, which decides when
    to deliver it again (the memory source at once, SQS after its visibility timeout).
    """
    total = BatchResult()
    done = 0
    async for batch in source.batches(batch_size):
        result = await pipeline.process_batch(batch)
        await source.ack(batch, set(result.failed))
        total.absorb(result)  # in place: a long source must not copy every id per batch
        if on_batch is not None:
            on_batch(result)
        done += 1
        if max_batches is not None and done >= max_batches:
            break
    return total
