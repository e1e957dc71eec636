"""The `LaneStore` methods of a store whose backend offers one guarded read-modify-write.

Azure Table (ETag) and Cosmos DB (ETag) stores read a lane's record, decide its next state
with `onceflow.watermarks`, and write it back only if nobody wrote in between; this mixin
holds the three protocol methods once, over the store's own `_lane_rmw`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio

from onceflow import watermarks
from onceflow.records import LaneClaim, LaneCommit, LaneRecord, LaneRequest

__all__ = ["ReadModifyWriteLanes"]

T = TypeVar("T")

Change = Callable[[LaneRecord | None, float], tuple[T, LaneRecord | None]]


class ReadModifyWriteLanes:
    """`claim_lanes`, `commit_lanes` and `release_lanes` over `_lane_rmw`, one lane at a time."""

    def _lane_rmw(self, lane: str, change: Change[T]) -> T:
        """Read `lane`'s record, `change` it, write the answer guarded by what was read."""
        raise NotImplementedError

    async def claim_lanes(
        self, requests: Sequence[LaneRequest], lease_seconds: float
    ) -> list[LaneClaim]:
        """Lease each lane's record (`watermarks.take`): a read and a guarded write."""

        def claim(request: LaneRequest) -> LaneClaim:
            token = uuid.uuid4().hex
            return self._lane_rmw(
                request.lane,
                lambda stored, now: watermarks.take(
                    stored, request, now=now, lease_seconds=lease_seconds, token=token
                ),
            )

        return await anyio.to_thread.run_sync(lambda: [claim(r) for r in requests])

    async def commit_lanes(self, commits: Sequence[LaneCommit]) -> list[bool]:
        """Write each lane's new state where its fence holds (`watermarks.fence_holds`)."""

        def commit(lane_commit: LaneCommit) -> bool:
            def change(stored: LaneRecord | None, now: float) -> tuple[bool, LaneRecord | None]:
                if stored is None or not watermarks.fence_holds(stored, lane_commit):
                    return False, None
                return True, watermarks.commit_record(stored, lane_commit, now=now)

            return self._lane_rmw(lane_commit.claim.lane, change)

        return await anyio.to_thread.run_sync(lambda: [commit(c) for c in commits])

    async def release_lanes(self, claims: Sequence[LaneClaim]) -> None:
        """End leases these claims still hold, charging their range a delivery."""

        def release(claim: LaneClaim) -> None:
            def change(stored: LaneRecord | None, now: float) -> tuple[None, LaneRecord | None]:
                return None, watermarks.release_record(stored, claim, now=now)

            self._lane_rmw(claim.lane, change)

        def release_all() -> None:
            for claim in claims:
                release(claim)

        await anyio.to_thread.run_sync(release_all)
