"""The AWS package's public names, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import onceflow.adapters.aws


def test_every_public_name_resolves() -> None:
    assert sorted(onceflow.adapters.aws.__all__) == onceflow.adapters.aws.__all__
    for name in onceflow.adapters.aws.__all__:
        assert getattr(onceflow.adapters.aws, name) is not None
    assert sorted(dir(onceflow.adapters.aws)) == onceflow.adapters.aws.__all__


def test_importing_the_handler_module_loads_no_boto3() -> None:
    probe = (
        "import sys, examples.orders.lambda_function, onceflow.adapters.aws;"
        "from onceflow.adapters.aws import lambda_handler, s3_object;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'boto3', 'botocore'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
