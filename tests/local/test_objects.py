"""LocalObjectStore against the object-store contract, plus what only a disk can get wrong."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import anyio
import pytest

from onceflow.adapters.local import LocalObjectStore
from onceflow.testing import ObjectStoreContract


class TestLocalObjectStore(ObjectStoreContract):
    @pytest.fixture
    def object_store(self, tmp_path: Path) -> LocalObjectStore:
        return LocalObjectStore(tmp_path / "objects")


@pytest.mark.anyio
async def test_listing_hides_staging_and_paths_cannot_escape(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("a/ü b.txt", b"x")
    assert [i.path for i in await store.list()] == ["a/ü b.txt"]
    assert [i.path for i in await store.list("a/ü")] == ["a/ü b.txt"]
    assert await store.list("nope/") == []
    for bad in ["../x", "/etc/passwd", "a/../../x", ".onceflow-staging/x"]:
        with pytest.raises(ValueError):
            await store.put(bad, b"x")


@pytest.mark.anyio
async def test_head_of_a_folder_is_absent(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    await store.put("dir/file", b"x")
    assert await store.head("dir") is None
    with pytest.raises(FileNotFoundError):
        await store.get("dir")


def _race(root: str, n: int) -> bool:
    return anyio.run(LocalObjectStore(root).put_if_absent, "contended", str(n).encode())


def test_put_if_absent_has_one_winner_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_race, [(str(tmp_path), n) for n in range(8)])
    assert results.count(True) == 1
    winner = results.index(True)
    assert (tmp_path / "contended").read_bytes() == str(winner).encode()
    assert list((tmp_path / ".onceflow-staging").iterdir()) == []
