"""Many sinks: outputs addressed to named sinks, each landing exactly once in its own.

`Pipeline(sinks={"ledger": ..., "alerts": ...})` routes each output by a `To(name,
value)` wrapper, or by its type (`routes={FraudAlert: "alerts"}`); anything else goes to
the first sink named. The pipeline sees one sink, `RoutedSinks`, whose capabilities are
its members':

- When members commit with the store, one commit settles the batch: the outputs of every
  atomic member and the keys' completion markers go in one store transaction where their
  writes combine (DynamoDB transaction actions); where they do not (SQLite rows and memory
  puts of two tables), the others are written first, idempotently by `output_id`, and the
  first atomic member commits its outputs with the fenced completions.
- Members that cannot commit with the store are written first, idempotently.
- No member commits with the store: idempotent writes, then one fenced completion.

A member's refusal (`OutputRejected`) dead-letters only the events whose outputs it
refused, and the reason names the sink. In the atomic case nothing is written before
every member has looked at its outputs; with idempotent writes, outputs another member
already took for a refused event stay there (a replay rewrites the same ids).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onceflow.errors import ConfigurationError, OutputRejected, PermanentError
from onceflow.event import Event
from onceflow.interfaces import AtomicSink, IdempotencyStore, Sink
from onceflow.records import Completion, Output
from onceflow.serialization import to_plain

if TYPE_CHECKING:
    from onceflow.masking import Mask

__all__ = ["ROUTE", "RoutedSinks", "To", "routed_sink", "shape_outputs"]

ROUTE = "__onceflow_sink__"
"""The member of a routed output's value naming its sink (the value sits under `value`)."""


@dataclass(frozen=True, slots=True)
class To:
    """An output addressed to the sink named `sink`."""

    sink: str
    value: Any


class RoutedSinks:
    """Named sinks presented to the pipeline as one; outputs go to the sink they name."""

    def __init__(self, sinks: Mapping[str, Sink], *, default: str | None = None) -> None:
        if not sinks:
            raise ConfigurationError("sinks={} names no sink; give at least one")
        self.sinks = dict(sinks)
        self.default = default if default is not None else next(iter(self.sinks))
        if self.default not in self.sinks:
            raise ConfigurationError(f"default sink {self.default!r} is not one of {list(sinks)}")

    def __repr__(self) -> str:
        return f"RoutedSinks({', '.join(self.sinks)})"

    def split(self, outputs: Sequence[Output]) -> dict[str, list[Output]]:
        """The outputs by the name of their sink, unwrapped, in order."""
        parts: dict[str, list[Output]] = {}
        sinks, default = self.sinks, self.default
        for output in outputs:
            value = output.value
            if type(value) is dict and ROUTE in value:
                name = value[ROUTE]
                if name not in sinks:
                    # Checked when the output was made; a value from elsewhere lands here.
                    raise OutputRejected({output.output_id: f"no sink is named {name!r}"})
                parts.setdefault(name, []).append(output._replace(value=value.get("value")))
            else:
                parts.setdefault(default, []).append(output)
        return parts

    # -- the Sink protocol ---------------------------------------------------------------

    async def write(self, outputs: Sequence[Output]) -> None:
        """Write each sink's outputs, sink by sink; refusals name their sink."""
        await self._write_each(self.split(outputs))

    async def _write_each(self, parts: Mapping[str, Sequence[Output]]) -> None:
        """Each named part to its sink; the refusals of all of them, named, at the end."""
        refused: dict[str, str] = {}
        for name, part in parts.items():
            try:
                await self.sinks[name].write(part)
            except OutputRejected as exc:
                refused.update(_named(name, exc))
        if refused:
            raise OutputRejected(refused)

    # -- the AtomicSink protocol ---------------------------------------------------------

    def commits_with(self, store: IdempotencyStore) -> bool:
        """Whether any member commits atomically with `store`."""
        return any(self._atomic(sink, store) for sink in self.sinks.values())

    async def write_and_complete(
        self,
        store: IdempotencyStore,
        outputs: Sequence[Output],
        completions: Sequence[Completion],
    ) -> list[bool]:
        """Commit the completions with the atomic members' outputs; write the rest first."""
        parts = self.split(outputs)
        atomic = [n for n, s in self.sinks.items() if self._atomic(s, store)]
        # Every atomic member turns its outputs into store writes first, without
        # committing: its refusals surface before anything is written anywhere.
        capture = _CapturingStore.of(store)
        captured: dict[str, Any] = {}
        refused: dict[str, str] = {}
        for name in atomic if capture is not None else ():
            if name not in parts:
                continue
            sink = self.sinks[name]
            assert isinstance(sink, AtomicSink)
            try:
                await sink.write_and_complete(capture, parts[name], completions)
            except OutputRejected as exc:
                refused.update(_named(name, exc))
            else:
                writes = capture.take()
                if writes is not None:
                    captured[name] = writes
        if refused:
            raise OutputRejected(refused)
        merged = _merge(list(captured.values())) if len(captured) > 1 else None
        primary = next((n for n in atomic if n in captured), atomic[0])
        if merged is not None:
            first = {n: p for n, p in parts.items() if n not in captured}
        else:
            first = {n: p for n, p in parts.items() if n != primary}
        await self._write_each(first)
        if merged is not None:
            return await store.complete_with(completions, merged)  # type: ignore[attr-defined, no-any-return]
        sink = self.sinks[primary]
        assert isinstance(sink, AtomicSink)
        return await sink.write_and_complete(store, parts.get(primary, []), completions)

    @staticmethod
    def _atomic(sink: Sink, store: IdempotencyStore) -> bool:
        return isinstance(sink, AtomicSink) and sink.commits_with(store)


class _CapturingStore:
    """A copy of a store whose `complete_with` keeps the writes instead of committing them.

    A copy (not a wrapper) so sinks that check the store's type and file still accept it.
    """

    @staticmethod
    def of(store: IdempotencyStore) -> Any:
        """The twin, or None for a store that cannot be copied so (its members then commit
        one by one: the others written first, then the first atomic one with the marks)."""
        kept: list[Any] = []

        async def complete_with(completions: Sequence[Completion], writes: Any) -> list[bool]:
            kept.append(writes)
            return [True] * len(completions)

        def take() -> Any:
            return kept.pop() if kept else None

        try:
            twin = copy.copy(store)
            object.__setattr__(twin, "complete_with", complete_with)
            object.__setattr__(twin, "take", take)
        except (TypeError, AttributeError, copy.Error):
            return None
        return twin


def _merge(writes: list[Any]) -> dict[str, list[Any]] | None:
    """Writes of several sinks as one, where they are plain lists filed by event key."""
    if not all(type(w) is dict for w in writes):
        return None
    merged: dict[str, list[Any]] = {}
    for each in writes:
        for key, items in each.items():
            merged.setdefault(key, []).extend(items)
    return merged


def _named(name: str, exc: OutputRejected) -> dict[str, str]:
    return {oid: f"sink {name!r}: {why}" for oid, why in exc.rejected.items()}


def routed_sink(
    sink: Sink | None, sinks: Mapping[str, Sink] | None, routes: Mapping[type, str] | None
) -> tuple[Sink, RoutedSinks | None]:
    """The pipeline's one sink, and the same as `RoutedSinks` when outputs are routed."""
    if sinks is None:
        if sink is None:
            raise ConfigurationError("the pipeline needs a sink: pass sink=... or sinks={...}")
        if routes:
            raise ConfigurationError("routes=... needs sinks={...} to route to")
        return sink, sink if isinstance(sink, RoutedSinks) else None
    if sink is not None:
        raise ConfigurationError("pass sink=... or sinks={...}, not both")
    routed = RoutedSinks(sinks)
    for kind, name in (routes or {}).items():
        if name not in routed.sinks:
            raise ConfigurationError(f"routes sends {kind.__name__} to {name!r}, not a sink")
    return routed, routed


def shape_outputs(
    call: Callable[[Event], Any],
    *,
    mask: Mask | None,
    routes: Mapping[type, str],
    default: str | None,
    names: Sequence[str] = (),
) -> Callable[[Event], Any]:
    """`call` with its outputs masked and, when routed, addressed to their sinks."""
    kinds = tuple(routes)
    known = frozenset(names)

    def one(value: Any) -> Any:
        name = default
        if type(value) is To:
            name, value = value.sink, value.value
            if name not in known:
                raise PermanentError(f"To({name!r}, ...): the pipeline has no sink {name!r}")
        elif kinds and isinstance(value, kinds):
            name = next(n for k, n in routes.items() if isinstance(value, k))
        if mask is not None:
            value = mask.apply(to_plain(value))
        return value if name is None else {ROUTE: name, "value": value}

    def shaped(produced: Any) -> Any:
        if produced is None:
            return None
        if type(produced) is dict or type(produced) is To:
            return one(produced)
        if isinstance(produced, list | tuple | Iterator):
            return [one(v) for v in produced]
        return one(produced)

    if inspect.iscoroutinefunction(call):

        async def shaped_async(event: Event) -> Any:
            return shaped(await call(event))

        return shaped_async

    def shaped_sync(event: Event) -> Any:
        return shaped(call(event))

    return shaped_sync
