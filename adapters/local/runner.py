"""Pull mode for the file sources: read the files, then run what failed again, counting."""

from __future__ import annotations

from collections.abc import Callable

from onceflow.adapters.local.file_source import DirectorySource, FileSource, Redelivery
from onceflow.adapters.local.totals import Tally
from onceflow.pipeline import BatchResult, Pipeline

__all__ = ["run_files"]


async def run_files(
    pipeline: Pipeline,
    source: FileSource | DirectorySource,
    *,
    batch_size: int = 500,
    redeliveries: int = 5,
    tally: Tally | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> Tally:
    """Process the source's batches and ack each; the run's totals.

    A record that fails in a pass over the files (another worker's live lease, a lost
    lease) is handed back by the source once the pass is done, and `Pipeline.redeliver`
    delivers it up to `redeliveries` more times in all, after the pipeline's event retry
    backoff each time. What still fails stays unsettled: its file's checkpoint stays
    before it, so the next run reads it again. The totals are counts, not every event id,
    so a run over millions of records stays small.
    """
    if redeliveries < 1:
        raise ValueError(f"redeliveries={redeliveries}: at least 1 (the hand-back itself)")
    tally = tally if tally is not None else Tally()
    async for batch in source.batches(batch_size):
        if isinstance(batch, Redelivery):
            result = await pipeline.redeliver(batch, rounds=redeliveries - 1)
        else:
            result = await pipeline.process_batch(batch)
        await source.ack(batch, set(result.failed) if result.failed else ())
        tally.add(result)
        if on_batch is not None:
            on_batch(result)
    return tally
