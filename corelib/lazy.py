"""Packages whose public names are imported on first use (PEP 562)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]

_OWN = ("onceflow", "examples")


def lazy_exports(
    package: str,
    homes: Mapping[str, str],
    *,
    extra: Callable[[str], str] | str | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__`, importing each public name from its home.

    `homes` maps a public name to the module defining it (`.module` is relative to the
    package). When a home cannot be imported for want of a third-party package, the error
    names the extra to install: `extra` is that extra, or a function of the home module.
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name = package + home if home.startswith(".") else home
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = exc.name or ""
            if extra is None or not missing or missing.startswith(_OWN):
                raise
            wanted = extra(module_name) if callable(extra) else extra
            raise ImportError(
                f"{package}.{name} needs {missing}: pip install 'onceflow[{wanted}]'",
                name=missing,
            ) from exc
        value = getattr(module, name)
        # Cache it on the package: later lookups no longer reach __getattr__.
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        # The public API, not the package's imports and dunders.
        return sorted(homes)

    return __getattr__, __dir__
