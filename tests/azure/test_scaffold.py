"""The scaffolded app folder, deployed as the Functions host would: its own environment.

What is exercised: `onceflow azure scaffold` reads a user's function app (two functions,
a Queue and an Event Hubs trigger, and its Deployment); the folder's requirements.txt is
installed into a fresh virtualenv (the onceflow wheel built from this checkout, the rest
from the package index through pip's cache); the generated `function_app.py` is imported
from the folder in a clean interpreter of that virtualenv, indexed by azure-functions
(the bindings the host reads) and invoked with the trigger objects the Python worker
passes (built by azure-functions' own converters), against Table and Queue storage on
Azurite. Not exercised: the Functions host itself and Event Hubs (no local server).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

from onceflow.cli import main
from tests.support.dist import built_dist
from tests.support.servers import Azurite

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

USER_APP = '''
"""A user's function app: orders from a queue and from an event hub, totals in a table."""

import json
import os

from onceflow import PermanentError, Pipeline
from onceflow.adapters.azure import (
    EventHubTrigger, QueueSink, QueueTrigger, TableIdempotencyStore, TableSink, function_app,
)
from onceflow.deployment import Deployment, Resource, ResourceKind, Trigger, TriggerKind

TABLE = Resource(ResourceKind.AZURE_TABLE, "SHOP_TABLE", default="shop")
LETTERS = Resource(ResourceKind.STORAGE_QUEUE, "SHOP_DEAD_LETTERS", default="shop-letters")
DEPLOYMENT = Deployment(
    Trigger(TriggerKind.QUEUE, Resource(ResourceKind.STORAGE_QUEUE, "SHOP_QUEUE"), batch_size=8),
    state=TABLE, outputs=(TABLE,), dead_letters=LETTERS, name="shop",
)


class Totals:
    def process(self, event):
        order = json.loads(event.data)
        if "order_id" not in order:
            raise PermanentError("an order needs an order_id")
        return {"order_id": order["order_id"], "cents": round(float(order["amount"]) * 100)}


def build():
    storage = os.environ["AzureWebJobsStorage"]
    store = TableIdempotencyStore(TABLE.name(), connection_string=storage, create=True)
    return Pipeline(
        Totals(), TableSink(TABLE.name(), connection_string=storage), store,
        QueueSink(LETTERS.name(), connection_string=storage, create=True), name="shop",
    )


app = function_app(build, QueueTrigger("orders-in"), name="queue_orders", deployment=DEPLOYMENT)
function_app(build, EventHubTrigger("orders", key_field="order_id"), name="hub_orders", app=app)
'''

RUN = """
import asyncio, json, sys
import function_app, onceflow
from onceflow.adapters.azure.testing import event_hub_batch, invocation_context, queue_message

functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
bindings = {n: json.loads(f.get_function_json())["bindings"] for n, f in functions.items()}


async def invoke():
    queue = functions["queue_orders"].get_user_function()
    await queue(queue_message("m1", b'{"order_id": "q1", "amount": "1.50"}'))
    await queue(queue_message("m1", b'{"order_id": "q1", "amount": "1.50"}', dequeue_count=2))
    hub = functions["hub_orders"].get_user_function()
    batch = [b'{"order_id": "h1", "amount": "2"}', b'{"order_id": "h1", "amount": "2"}',
             b'{"amount": "3"}']
    await hub(event_hub_batch(batch), invocation_context())


asyncio.run(invoke())
print(json.dumps({"bindings": bindings, "onceflow": onceflow.__file__, "prefix": sys.prefix}))
"""


@pytest.fixture(scope="module")
def app_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scaffolded folder, its requirement pointing at the wheel built from this checkout."""
    base = tmp_path_factory.mktemp("azure-app")
    wheel = built_dist(base / "dist").wheel
    source = base / "src"
    source.mkdir()
    (source / "shop_app.py").write_text(USER_APP)
    folder = base / "app"
    sys.path.insert(0, str(source))
    try:
        status = main(
            [
                *("azure", "scaffold", "shop_app:app", str(folder)),
                *("--requirement", f"onceflow[azure] @ {wheel.as_uri()}"),
            ]
        )
    finally:
        sys.path.remove(str(source))
        sys.modules.pop("shop_app", None)
    assert status == 0
    return folder


@pytest.fixture(scope="module")
def fresh_venv(app_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding only what the folder's requirements.txt asks for."""
    home = tmp_path_factory.mktemp("venv") / "env"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*install, "-r", str(app_folder / "requirements.txt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_the_folder_holds_the_users_code_and_a_sized_host(app_folder: Path) -> None:
    assert (app_folder / "shop_app.py").exists()
    assert "from shop_app import app as app" in (app_folder / "function_app.py").read_text()
    host = json.loads((app_folder / "host.json").read_text())
    assert sorted(host["extensions"]) == ["eventHubs", "queues"]
    assert host["extensions"]["queues"]["batchSize"] == 8  # the deployment's batch size
    assert host["extensions"]["eventHubs"]["maxEventBatchSize"] == 500  # not the queue's
    settings = json.loads((app_folder / "local.settings.json").read_text())["Values"]
    assert settings["SHOP_TABLE"] == "shop" and settings["SHOP_DEAD_LETTERS"] == "shop-letters"
    assert "EventHubConnection" in settings
    assert ".venv" in (app_folder / ".funcignore").read_text()


def test_the_app_installs_indexes_and_runs_in_a_fresh_environment(
    app_folder: Path, fresh_venv: Path, azurite_server: Azurite
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AzureWebJobsStorage": azurite_server.connection_string,
        "SHOP_TABLE": "shop",
        "SHOP_DEAD_LETTERS": "shop-letters",
    }
    done = subprocess.run(
        [str(fresh_venv), "-c", RUN],
        cwd=app_folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["onceflow"].startswith(report["prefix"])  # the wheel, not this checkout
    [queue_binding] = report["bindings"]["queue_orders"]
    assert queue_binding["type"] == "queueTrigger" and queue_binding["queueName"] == "orders-in"
    [hub_binding] = report["bindings"]["hub_orders"]
    assert hub_binding["eventHubName"] == "orders" and hub_binding["cardinality"].lower() == "many"

    from onceflow.adapters.azure.table_sink import TableSink

    totals = asyncio.run(
        TableSink("shop", connection_string=azurite_server.connection_string).contents()
    )
    assert sorted((v["order_id"], v["cents"]) for v in totals.values()) == [
        ("h1", 200),
        ("q1", 150),
    ]
    from azure.storage.queue import QueueClient

    letters = QueueClient.from_connection_string(azurite_server.connection_string, "shop-letters")
    assert len(letters.peek_messages(max_messages=32)) == 1


DURABLE_APP = '''
"""A user's app for large blobs: the chunked path as Durable Functions, blobs landing."""

import os

import azure.durable_functions as df

from onceflow import Pipeline
from onceflow.adapters.azure.durable import DurableChunks
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink


class Keep:
    def process(self, event):
        return event.json()


def build():
    return Pipeline(Keep(), MemorySink(), MemoryIdempotencyStore())


chunks = DurableChunks(build, "landing", connection_setting="LANDING_STORAGE")
app = df.DFApp()
app.register_functions(chunks.blueprint(trigger_path="landing/{name}"))
'''

INDEX = """
import json
import function_app

functions = {f.get_function_name(): f for f in function_app.app.get_functions()}
print(json.dumps({n: json.loads(f.get_function_json())["bindings"] for n, f in functions.items()}))
"""


def test_a_durable_app_is_scaffolded_with_what_durable_functions_needs(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "blob_chunks_app.py").write_text(DURABLE_APP)
    folder = tmp_path / "app"
    sys.path.insert(0, str(source))
    try:
        status = main(["azure", "scaffold", "blob_chunks_app:app", str(folder), "--name", "big"])
    finally:
        sys.path.remove(str(source))
        sys.modules.pop("blob_chunks_app", None)
    assert status == 0
    assert "azure-functions-durable" in (folder / "requirements.txt").read_text().split()
    host = json.loads((folder / "host.json").read_text())
    assert host["extensions"]["durableTask"]["hubName"] == "onceflowbig"
    assert host["extensions"]["durableTask"]["maxConcurrentActivityFunctions"] >= 1
    assert "blobs" in host["extensions"]  # the landing trigger
    settings = json.loads((folder / "local.settings.json").read_text())["Values"]
    assert "LANDING_STORAGE" in settings
    # The folder indexes on its own (its copy of the user's module, not the source).
    done = subprocess.run(
        [sys.executable, "-c", INDEX], cwd=folder, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(folder)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    bindings = json.loads(done.stdout.splitlines()[-1])
    assert bindings["onceflow_chunked"][0]["type"] == "orchestrationTrigger"
    assert bindings["onceflow_chunk"][0]["type"] == "activityTrigger"
    landed = {b["type"] for b in bindings["onceflow_chunked_landed"]}
    assert {"blobTrigger", "durableClient"} <= landed
