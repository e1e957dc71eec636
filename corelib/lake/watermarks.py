"""Per-lane watermarks, vectorised: which rows of a batch are past their lane's last commit."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from onceflow.errors import ConfigurationError
from onceflow.records import Output

__all__ = ["INT64_MAX", "SequenceOf", "lanes_of", "output_sequence", "past_watermarks"]

INT64_MAX = 2**63 - 1
SequenceOf = Callable[[Output], int | None]

# map() with attrgetter keeps the per-row passes in C: in a Python loop they cost as much
# as the Arrow work on a large batch.
_SEQUENCE = operator.attrgetter("sequence")
_LANE = operator.attrgetter("partition_key")


def lanes_of(outputs: Sequence[Output]) -> list[str | None]:
    """Each output's lane (its partition key), in order."""
    return list(map(_LANE, outputs))


def output_sequence(output: Output) -> int | None:
    """The output's source sequence number when the runner supplies one that fits in 64 bits."""
    raw = getattr(output, "sequence", None)
    if raw is None or not str(raw).isdigit():
        return None
    number = int(raw)
    return number if number <= INT64_MAX else None


def _sequences(outputs: Sequence[Output], sequence_of: SequenceOf, sink: str) -> pa.Array:
    if sequence_of is output_sequence:
        # The common case, in one Arrow cast instead of a Python call per row.
        raw = pa.array(list(map(_SEQUENCE, outputs)), pa.string())
        if not raw.null_count and pc.all(pc.utf8_is_digit(raw)).as_py():
            try:
                return pc.cast(raw, pa.int64())
            except pa.ArrowInvalid:
                pass  # past 64 bits: the per-row path names the problem
    values = [sequence_of(o) for o in outputs]
    if any(v is None for v in values):
        raise ConfigurationError(
            f"{sink}(ordered=True) needs every output's source sequence number as a 64-bit "
            "integer; pass sequence_of=, or ordered=False to dedupe by output id"
        )
    return pa.array(values, pa.int64())


def past_watermarks(
    outputs: Sequence[Output],
    sequence_of: SequenceOf,
    committed: Callable[[str], int | None],
    *,
    sink: str,
    lanes: Sequence[str | None] | None = None,
) -> tuple[pa.Array, dict[str, int]]:
    """Which outputs are past their lane's committed sequence, and each lane's new highest.

    Every output must have a partition key (its lane); `committed(lane)` is the highest
    sequence already in the table for that lane, or None. `lanes` is `lanes_of(outputs)`
    when the caller has it already.
    """
    sequences = _sequences(outputs, sequence_of, sink)
    keys = lanes_of(outputs) if lanes is None else lanes
    if keys and keys.count(keys[0]) == len(keys) and keys[0] is not None:
        # One lane (a batch from one shard, the usual case): no dictionary, no group-by.
        last = committed(keys[0])
        keep = pc.greater(sequences, -1 if last is None else last)
        if not keep.true_count:
            return keep, {}
        return keep, {keys[0]: pc.max(sequences.filter(keep)).as_py()}
    encoded = pa.array(keys, pa.string()).dictionary_encode()
    names = encoded.dictionary.to_pylist()
    done = [committed(name) for name in names]
    floor = pa.array([-1 if d is None else d for d in done], pa.int64())
    keep = pc.greater(sequences, pc.take(floor, encoded.indices))
    fresh = pa.table({"lane": encoded.indices, "seq": sequences}).filter(keep)
    highest = fresh.group_by("lane").aggregate([("seq", "max")]).to_pylist()
    return keep, {names[row["lane"]]: row["seq_max"] for row in highest}
