"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_processor_and_memory_backend_examples_run() -> None:
    code = blocks()
    namespace: dict[str, Any] = {}
    exec(code[0], namespace)  # the processor in ten lines
    exec(code[2], namespace)  # the memory-backend unit test
    namespace["test_crash_after_sink_write_is_not_applied_twice"]()


def test_fault_injection_example_injects_a_failure() -> None:
    code = blocks()
    namespace: dict[str, Any] = {}
    exec(code[0], namespace)
    exec(code[2], namespace)
    namespace["test_a_sink_outage_is_retried_and_then_handed_back"]()
