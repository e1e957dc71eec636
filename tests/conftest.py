"""Shared test configuration."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Contract tests run on asyncio, the loop Lambda and Functions use."""
    return "asyncio"
