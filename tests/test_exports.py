"""Every package's public API is its `__all__`: one parametrized check over all of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import onceflow

PACKAGES = sorted(
    ["onceflow"]
    + [info.name for info in pkgutil.walk_packages(onceflow.__path__, "onceflow.") if info.ispkg]
)


def test_every_package_is_checked() -> None:
    # tests/test_packaging.py checks that pyproject.toml names every package folder.
    assert set(PACKAGES) == {
        "onceflow", "onceflow.lake", "onceflow.testing", "onceflow.adapters",
        "onceflow.adapters.aws", "onceflow.adapters.azure", "onceflow.adapters.local",
        "onceflow.adapters.memory",
    }  # fmt: skip


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports(name: str) -> None:
    package = importlib.import_module(name)
    exported = package.__all__
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    assert set(dir(package)) >= set(exported), f"{name}: dir() misses some of __all__"
    for public in exported:
        value = getattr(package, public)  # every lazy export resolves
        if inspect.isclass(value) or inspect.isfunction(value):
            doc = inspect.getdoc(value) or ""
            assert doc.strip(), f"{name}.{public} has no docstring"
    with pytest.raises(AttributeError):
        getattr(package, "no_such_name")  # noqa: B009
