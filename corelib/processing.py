"""How the pipeline calls the user's processor: filtered, typed, traced; outputs masked, routed.

Built once, when the `Pipeline` is: each feature that is not asked for costs nothing per
event, since the chain is only as long as what was configured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from onceflow.envelopes import Envelope
from onceflow.event import Event
from onceflow.interfaces import Metrics
from onceflow.routing import RoutedSinks, shape_outputs
from onceflow.typed import typed_process

if TYPE_CHECKING:
    from onceflow.filters import Filter
    from onceflow.masking import Mask
    from onceflow.tracing import Tracing

__all__ = ["chain"]


def chain(
    process: Callable[..., Any],
    *,
    envelope: Envelope | None,
    metrics: Metrics,
    filter: Filter | None = None,
    mask: Mask | None = None,
    routes: Mapping[type, str] | None = None,
    routed: RoutedSinks | None = None,
    permanent: tuple[type[BaseException], ...] = (),
    tracing: Tracing | None = None,
    pipeline: str = "onceflow",
) -> Callable[[Event], Any]:
    """`process` as the runner calls it, with the features asked for wrapped around it."""
    call: Callable[[Event], Any] = typed_process(process, envelope) or process
    if mask is not None or routed is not None:
        call = shape_outputs(
            call,
            mask=mask,
            routes=routes or {},
            default=None if routed is None else routed.default,
            names=() if routed is None else list(routed.sinks),
        )
    if mask is not None:
        call = mask.guard(call, envelope=envelope, permanent=permanent)
    if filter is not None:
        call = filter.guard(call, envelope=envelope, metrics=metrics)
    if tracing is not None:
        # Outermost: the span covers filtering and masking too, and the wrapper is handed
        # the item's own record, by which the commit finds the span's context again.
        call = tracing.wrap(call, pipeline)
    return call
