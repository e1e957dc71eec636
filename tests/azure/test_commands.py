"""`onceflow azure scaffold` writes a self-contained app folder that azure-functions indexes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from onceflow.cli import main

INDEX = (
    "import json, function_app;"
    "fs = function_app.app.get_functions();"
    "print(json.dumps([{'name': f.get_function_name(), **json.loads(f.get_function_json())}"
    " for f in fs]))"
)


def index(folder: Path) -> list[dict[str, Any]]:
    """The functions of the folder's app, indexed in a clean interpreter run from the folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["AzureWebJobsStorage"] = "UseDevelopmentStorage=true"
    done = subprocess.run(
        [sys.executable, "-c", INDEX],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    functions: list[dict[str, Any]] = json.loads(done.stdout)
    return functions


def test_scaffold_for_a_processor_class(tmp_path: Path) -> None:
    status = main(
        [
            *("azure", "scaffold", "examples.orders.processor:OrderProcessor", str(tmp_path)),
            *("--event-hub", "orders", "--key-field", "order_id", "--connection", "Hub"),
        ]
    )
    assert status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".funcignore",
        "examples",
        "function_app.py",
        "host.json",
        "local.settings.json",
        "requirements.txt",
    ]
    assert (tmp_path / "examples" / "orders" / "processor.py").exists()  # the user's code
    host = json.loads((tmp_path / "host.json").read_text())
    assert sorted(host["extensions"]) == ["eventHubs"]  # only the trigger used
    hubs = host["extensions"]["eventHubs"]
    assert hubs["batchCheckpointFrequency"] == 1
    assert hubs["prefetchCount"] >= hubs["maxEventBatchSize"]
    assert "onceflow[azure]" in (tmp_path / "requirements.txt").read_text()
    settings = json.loads((tmp_path / "local.settings.json").read_text())["Values"]
    assert "Hub" in settings
    [function] = index(tmp_path)
    [binding] = function["bindings"]
    assert binding["eventHubName"] == "orders" and binding["connection"] == "Hub"


def test_scaffold_reads_the_trigger_from_the_function_app(tmp_path: Path) -> None:
    spec = "examples.orders.function_app:app"
    wheel = "onceflow[azure] @ file:///wheels/onceflow-0.1.0-py3-none-any.whl"
    assert main(["azure", "scaffold", spec, str(tmp_path), "--requirement", wheel]) == 0
    code = (tmp_path / "function_app.py").read_text()
    assert "from examples.orders.function_app import app as app" in code
    assert wheel in (tmp_path / "requirements.txt").read_text()
    [function] = index(tmp_path)
    assert function["name"] == "orders"
    [binding] = function["bindings"]
    assert binding["type"] == "eventHubTrigger" and binding["eventHubName"] == "orders"
    assert binding["connection"] == "EventHubConnection"
    host = json.loads((tmp_path / "host.json").read_text())
    assert host["functionTimeout"] == "00:05:00"  # room for 60 s of in-process retries


def test_scaffold_for_a_pipeline_factory(tmp_path: Path) -> None:
    assert (
        main(
            [
                *("azure", "scaffold", "examples.orders.function_app:build_pipeline"),
                *(str(tmp_path), "--trigger", "queue", "--queue", "orders"),
            ]
        )
        == 0
    )
    assert "import build_pipeline" in (tmp_path / "function_app.py").read_text()
    host = json.loads((tmp_path / "host.json").read_text())
    assert sorted(host["extensions"]) == ["queues"]
    [function] = index(tmp_path)
    [binding] = function["bindings"]
    assert binding["type"] == "queueTrigger" and binding["queueName"] == "orders"


@pytest.mark.parametrize(
    "spec",
    [
        "examples.orders.lambda_function:handler",  # a Lambda handler: takes arguments
        "examples.orders.lambda_function:MODES",  # a tuple
    ],
)
def test_scaffold_refuses_what_is_not_a_pipeline(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "app"
    assert main(["azure", "scaffold", spec, str(folder)]) == 2
    err = capsys.readouterr().err
    assert "not a pipeline: name an app built by onceflow.adapters.azure.function_app" in err
    assert err.count("\n") == 1
    assert not folder.exists()


def test_scaffold_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "examples.orders.processor:OrderProcessor"
    assert main(["azure", "scaffold", spec, str(tmp_path), "--trigger", "blob"]) == 0
    assert sorted(json.loads((tmp_path / "host.json").read_text())["extensions"]) == ["blobs"]
    assert main(["azure", "scaffold", spec, str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["azure", "scaffold", spec, str(tmp_path), "--force"]) == 0


def test_scaffold_names_a_bad_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["azure", "scaffold", "no.such.module:Thing", str(tmp_path)]) == 2
    assert "no.such.module" in capsys.readouterr().err
