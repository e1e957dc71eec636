"""The package's public names, and that importing it pays for no SDK."""

from __future__ import annotations

import subprocess
import sys

import onceflow.adapters.azure


def test_every_exported_name_resolves() -> None:
    for name in onceflow.adapters.azure.__all__:
        assert getattr(onceflow.adapters.azure, name) is not None


def test_importing_the_package_imports_no_azure_sdk() -> None:
    code = (
        "import sys, onceflow.adapters.azure, onceflow; "
        "print(sorted(m for m in sys.modules if m.startswith('azure')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_function_app_is_the_function_whatever_was_imported_first() -> None:
    code = (
        "from onceflow.adapters.azure import EventHubTrigger; "
        "from onceflow.adapters.azure import function_app; "
        "print(callable(function_app) and function_app.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "function_app"
