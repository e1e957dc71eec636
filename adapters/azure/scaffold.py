"""`onceflow azure scaffold`: a self-contained, deployable Functions app folder for a pipeline.

The target is read, not guessed: a `FunctionApp` built by `function_app(...)` gives its
triggers (hub, queue or blob path, connection, consumer group) and its `Deployment`
(the state table and the other resources); the user's module (its top-level package) is
copied beside the generated `function_app.py`, so the folder runs as it is.

An app that registers the large-blob path (`DurableChunks(...).blueprint()` on a
`df.DFApp`) gets what Durable Functions needs with it: `azure-functions-durable` in
requirements.txt, a task hub and activity concurrency in host.json, the blob extension
for its landing trigger, and the trigger's connection setting.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import azure.functions as func

from onceflow.adapters.azure.entry import (
    HANDLERS,
    EventHubTrigger,
    FunctionHandler,
    QueueTrigger,
    Trigger,
)
from onceflow.cli import CliError, load_object
from onceflow.pipeline import Pipeline

__all__ = ["FUNCIGNORE", "Scaffold", "host_json", "plan_scaffold"]

FUNCIGNORE = """\
.git*
.venv
.vscode
__pycache__
*.pyc
local.settings.json
tests
"""
EVENT_HUB_BATCH = 500
QUEUE_BATCH = 16
CHUNK_ACTIVITIES = 4
"""Chunk activities one instance runs at once: each holds one read piece and one batch."""
_DURABLE_ORCHESTRATOR = "onceflow_chunked"  # durable.ORCHESTRATOR, without importing the SDK
_DURABLE_LANDED = "onceflow_chunked_landed"


@dataclass
class Scaffold:
    """The files of an app folder, planned before anything is written."""

    directory: Path
    files: dict[str, str]
    copies: dict[str, Path]
    """Folder or file names in the app folder, and the user code copied there."""

    def write(self, *, force: bool = False) -> list[Path]:
        """Write the folder; refuses to overwrite without `force`. The paths written."""
        names = [*self.files, *self.copies]
        clash = [n for n in names if (self.directory / n).exists()]
        if clash and not force:
            raise CliError(
                f"{self.directory} already has {', '.join(sorted(clash))}: pass --force to "
                "overwrite"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, source in self.copies.items():
            target = self.directory / name
            if source.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(
                    source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy(source, target)
            written.append(target)
        for name, text in self.files.items():
            path = self.directory / name
            path.write_text(text)
            written.append(path)
        return written


def host_json(
    triggers: list[Trigger],
    batch_size: int | None = None,
    batch_for: str | None = None,
    *,
    durable_hub: str | None = None,
    landing: bool = False,
) -> dict[str, Any]:
    """host.json sized for the triggers used: only their extensions, their batch sizes.

    `batch_size` (the deployment's) applies to the trigger of kind `batch_for` only.
    `durable_hub` names the Durable Functions task hub of the large-blob path, `landing`
    says it has a blob trigger.
    """
    extensions: dict[str, Any] = {}
    hold = 0.0
    for trigger in triggers:
        kind = {EventHubTrigger: "eventhub", QueueTrigger: "queue"}.get(type(trigger), "blob")
        mine = batch_size if batch_for in {None, kind} else None
        if isinstance(trigger, EventHubTrigger):
            batch = mine or EVENT_HUB_BATCH
            extensions["eventHubs"] = {
                # Big batches make the bookkeeping cheap (one query and a transaction per
                # 100 events); the wait bounds the latency a quiet partition adds.
                "maxEventBatchSize": batch,
                "minEventBatchSize": 1,
                "maxWaitTime": "00:00:05",
                # Prefetch ahead of the batch so the next one is ready when this returns.
                "prefetchCount": 2 * batch,
                # Checkpoint after every batch: a restart redelivers at most one batch.
                "batchCheckpointFrequency": 1,
            }
            hold = max(hold, trigger.retry_seconds)
        elif isinstance(trigger, QueueTrigger):
            batch = min(mine or QUEUE_BATCH, 32)
            extensions["queues"] = {
                "batchSize": batch,
                "newBatchThreshold": batch // 2,
                # After 5 failed dequeues the host moves a message to `<queue>-poison`;
                # the pipeline's max_deliveries sees the dequeue count first.
                "maxDequeueCount": 5,
                "visibilityTimeout": "00:00:30",
            }
        else:
            extensions["blobs"] = {"maxDegreeOfParallelism": 4}
    if landing:
        extensions.setdefault("blobs", {"maxDegreeOfParallelism": 4})
    if durable_hub is not None:
        extensions["durableTask"] = {
            "hubName": durable_hub,
            "maxConcurrentActivityFunctions": CHUNK_ACTIVITIES,
            "maxConcurrentOrchestratorFunctions": 10,
        }
    # An Event Hubs function holds failures in-process for retry_seconds: leave room.
    timeout = int(min(max(300.0, hold + 120.0), 600.0))
    return {
        "version": "2.0",
        "extensionBundle": {
            "id": "Microsoft.Azure.Functions.ExtensionBundle",
            "version": "[4.*, 5.0.0)",
        },
        "functionTimeout": f"00:{timeout // 60:02d}:{timeout % 60:02d}",
        "extensions": extensions,
        "logging": {"logLevel": {"default": "Information", "Function": "Information"}},
    }


def plan_scaffold(
    spec: str,
    directory: Path,
    *,
    requirement: str | None = None,
    flags: Trigger | None = None,
    name: str = "onceflow",
) -> Scaffold:
    """Plan the app folder for `spec` (MODULE:NAME); a `CliError` naming the fix if it is not
    a `function_app(...)` app, a Pipeline, a zero-argument pipeline factory or a processor
    class. `flags` is the trigger for targets that carry none (all but an app)."""
    target = load_object(spec)
    module_name, _, attribute = spec.partition(":")
    handlers: dict[str, FunctionHandler] = {}
    durable: dict[str, Any] = {}
    # A FunctionApp, or a df.DFApp (a function register of its own, not a FunctionApp).
    if isinstance(target, func.FunctionRegister):
        if isinstance(target, func.FunctionApp):
            handlers = HANDLERS.get(target, {})
        durable = _durable_functions(target)
        if not handlers and _DURABLE_ORCHESTRATOR not in durable:
            raise CliError(
                f"{spec} is a FunctionApp with no onceflow function: build it with "
                "onceflow.adapters.azure.function_app(pipeline, trigger), or register "
                "onceflow.adapters.azure.durable.DurableChunks(...).blueprint() on it"
            )
        triggers = [h.trigger for h in handlers.values()]
        app_code = _import_app(spec, module_name, attribute)
    else:
        kind = _kind(target)
        if kind is None:
            raise CliError(
                f"{spec} is a {type(target).__name__}, not a pipeline: name an app built by "
                "onceflow.adapters.azure.function_app(...), a Pipeline, a zero-argument "
                "factory returning one, or a processor class"
            )
        assert flags is not None
        triggers = [flags]
        from onceflow.adapters.azure.cli import generated_app

        app_code = generated_app(module_name, attribute, kind, flags, name)
    deployment = next((h.deployment for h in handlers.values() if h.deployment), None)
    batch = deployment.trigger.batch_size if deployment is not None else None
    batch_for = str(deployment.trigger.kind) if deployment is not None else None
    settings: dict[str, str] = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
    for trigger in triggers:
        if trigger.connection != "AzureWebJobsStorage":
            settings[trigger.connection] = ""
    if deployment is not None:
        for resource in deployment.resources():
            settings.setdefault(resource.env, resource.default or "")
            if resource.connection:
                settings.setdefault(resource.connection, "")
    for bindings in durable.values():
        for binding in bindings:
            connection = binding.get("connection")
            if connection and connection != "AzureWebJobsStorage":
                settings.setdefault(connection, "")
    requirement = requirement or f"onceflow[azure]=={version('onceflow')}"
    hub = None
    if _DURABLE_ORCHESTRATOR in durable:
        # A task hub name: letters and digits, starting with a letter, 3 to 45 of them.
        hub = ("onceflow" + re.sub(r"[^A-Za-z0-9]", "", name))[:45]
    host = host_json(
        triggers, batch, batch_for, durable_hub=hub, landing=_DURABLE_LANDED in durable
    )
    extra = "azure-functions-durable\n" if hub else ""
    files = {
        "function_app.py": app_code,
        "host.json": json.dumps(host, indent=2) + "\n",
        "requirements.txt": (
            "# The Functions host installs these into the app's environment.\n"
            f"azure-functions\n{extra}{requirement}\n"
        ),
        ".funcignore": FUNCIGNORE,
        "local.settings.json": json.dumps({"IsEncrypted": False, "Values": settings}, indent=2)
        + "\n",
    }
    copies = _user_code(module_name)
    if "function_app.py" in copies:
        del files["function_app.py"]  # the user's module is the app itself
    return Scaffold(directory, files, copies)


def _durable_functions(app: func.FunctionRegister) -> dict[str, list[dict[str, Any]]]:
    """The app's functions of the large-blob path, by name, with their bindings."""
    try:
        functions = app.get_functions()
    except Exception as exc:  # the SDK validates the app as it lists it
        raise CliError(f"the function app does not index: {type(exc).__name__}: {exc}") from exc
    found: dict[str, list[dict[str, Any]]] = {}
    durable_types = {"orchestrationTrigger", "activityTrigger"}
    for function in functions:
        name = function.get_function_name() or ""
        if not name.startswith("onceflow_"):
            continue
        bindings = json.loads(function.get_function_json()).get("bindings", [])
        if name == _DURABLE_LANDED or any(b.get("type") in durable_types for b in bindings):
            found[name] = bindings
    return found


def _kind(target: Any) -> str | None:
    if inspect.isclass(target):
        return "processor" if hasattr(target, "process") else None
    if isinstance(target, Pipeline):
        return "pipeline"
    if callable(target):
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            return None
        required = [
            p
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in {p.VAR_POSITIONAL, p.VAR_KEYWORD}
        ]
        return None if required else "factory"
    return None


def _import_app(spec: str, module_name: str, attribute: str) -> str:
    return (
        f'"""Azure Functions app {spec}, written by `onceflow azure scaffold`."""\n\n'
        f"from {module_name} import {attribute} as app\n\n"
        '__all__ = ["app"]\n'
    )


def _user_code(module_name: str) -> dict[str, Path]:
    """The user's code to copy: the module's top-level package, or the module's file."""
    top = module_name.split(".", maxsplit=1)[0]
    module = sys.modules[top]
    if top == "onceflow":
        return {}  # comes from the requirement
    path = getattr(module, "__path__", None)
    if path:
        folder = Path(next(iter(path)))
        if "site-packages" in folder.parts:
            return {}  # installed: list it in requirements.txt instead
        return {top: folder}
    file = Path(module.__file__ or "")
    if "site-packages" in file.parts:
        return {}
    return {file.name: file}
