"""`onceflow azure scaffold` writes an app that azure-functions indexes."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest

from onceflow.cli import main


def index(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    app = runpy.run_path(str(path / "function_app.py"))["app"]
    return [json.loads(f.get_function_json()) for f in app.get_functions()]


def test_scaffold_for_a_processor_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = main(
        [
            "azure",
            "scaffold",
            "examples.orders.processor:OrderProcessor",
            str(tmp_path),
            "--event-hub",
            "orders",
            "--key-field",
            "order_id",
            "--connection",
            "Hub",
        ]
    )
    assert status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "function_app.py",
        "host.json",
        "local.settings.json",
        "requirements.txt",
    ]
    host = json.loads((tmp_path / "host.json").read_text())
    assert host["extensions"]["eventHubs"]["batchCheckpointFrequency"] == 1
    assert (
        host["extensions"]["eventHubs"]["prefetchCount"]
        >= host["extensions"]["eventHubs"]["maxEventBatchSize"]
    )
    assert "onceflow[azure]" in (tmp_path / "requirements.txt").read_text()
    [function] = index(tmp_path, monkeypatch)
    [binding] = function["bindings"]
    assert binding["eventHubName"] == "orders" and binding["connection"] == "Hub"


def test_scaffold_for_a_pipeline_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (
        main(
            [
                "azure",
                "scaffold",
                "examples.orders.function_app:build_pipeline",
                str(tmp_path),
                "--trigger",
                "queue",
                "--queue",
                "orders",
            ]
        )
        == 0
    )
    assert "import build_pipeline" in (tmp_path / "function_app.py").read_text()
    [function] = index(tmp_path, monkeypatch)
    [binding] = function["bindings"]
    assert binding["type"] == "queueTrigger" and binding["queueName"] == "orders"


def test_scaffold_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "examples.orders.processor:OrderProcessor"
    assert main(["azure", "scaffold", spec, str(tmp_path), "--trigger", "blob"]) == 0
    assert main(["azure", "scaffold", spec, str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["azure", "scaffold", spec, str(tmp_path), "--force"]) == 0


def test_scaffold_names_a_bad_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["azure", "scaffold", "no.such.module:Thing", str(tmp_path)]) == 2
    assert "no.such.module" in capsys.readouterr().err
