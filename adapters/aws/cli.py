"""`onceflow aws template`: the AWS SAM template a Lambda handler's `Deployment` describes."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from onceflow.adapters.aws.template import (
    AWS_TRIGGERS,
    ChunkedSettings,
    FunctionSettings,
    sam_template,
)
from onceflow.cli import CliError
from onceflow.deployment import Deployment
from onceflow.errors import ConfigurationError

__all__ = ["SOURCES", "LoadedHandler", "load_handler", "register"]

SOURCES = tuple(str(kind) for kind in AWS_TRIGGERS)
FACTORY_HANDLER = "onceflow.adapters.aws.runtime.handler"
"""The Handler of a function whose target is a factory: it calls ONCEFLOW_HANDLER's."""


def register(subparsers: Any) -> None:
    """Add `aws template` to the `onceflow` command line."""
    aws = subparsers.add_parser("aws", help="AWS Lambda tooling")
    commands = aws.add_subparsers(dest="aws_command", metavar="COMMAND", required=True)
    parser = commands.add_parser(
        "template",
        help="write the AWS SAM template (JSON) a Lambda handler's deployment describes",
        description="Write an AWS SAM template derived from the handler's Deployment: its "
        "trigger, the state table, the outputs and dead letters it declares (each created, "
        "or reused by a parameter), a least-privilege role, alarms, and the requirement "
        "that puts onceflow in the package.",
    )
    parser.add_argument(
        "target",
        metavar="MODULE[:NAME]",
        help="a module's `handler = onceflow.adapters.aws.lambda_handler(..., deployment=...)` "
        "(NAME defaults to handler), or a zero-argument factory returning one",
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        help="the trigger expected; refused unless the handler declares it",
    )
    parser.add_argument("--output", "-o", type=Path, help="write the template here, not stdout")
    parser.add_argument(
        "--code-uri",
        default=".",
        help="the folder `sam build` packages (with --output, relative to the template)",
    )
    parser.add_argument(
        "--requirement",
        help="how the package gets onceflow: with --output, CODE_URI/requirements.txt is "
        "written with this line when missing (default: onceflow[aws]==VERSION; until a "
        "release exists use `onceflow[aws] @ file:///.../onceflow-VERSION-py3-none-any.whl`)",
    )
    parser.add_argument("--timeout", type=int, default=120, help="function timeout, seconds")
    parser.add_argument("--memory", type=int, default=1024, help="function memory, MB")
    parser.add_argument("--runtime", default="python3.12")
    parser.add_argument("--architecture", choices=("arm64", "x86_64"), default="arm64")
    parser.set_defaults(func=_run)


class LoadedHandler:
    """A handler found for the command line: its Lambda Handler string and deployment."""

    def __init__(
        self, handler: str, deployment: Deployment, factory: str | None, chunked: bool = False
    ) -> None:
        self.handler = handler
        self.deployment = deployment
        self.factory = factory
        """`MODULE:NAME` of the factory the function calls at cold start, if the target is one."""
        self.chunked = chunked
        """Whether the target is chunked handlers (router, chunk worker, fan-in)."""


def load_handler(target: str) -> LoadedHandler:
    """The handler `MODULE[:NAME]` names; a `CliError` naming the fix for anything else."""
    from onceflow.adapters.aws.chunks import ChunkedHandlers
    from onceflow.adapters.aws.entry import LambdaHandler

    module_name, _, name = target.partition(":")
    name = name or "handler"
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the current directory
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not (module_name + ".").startswith(exc.name + "."):
            raise CliError(
                f"importing {module_name!r} failed: {exc}: install what it imports"
            ) from exc
        raise CliError(
            f"cannot import module {module_name!r} ({exc}): run from the folder that holds it"
        ) from exc
    except Exception as exc:  # the user's module failed as it loaded: one line, not a trace
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, name, None)
    where = f"{module_name}:{name}"
    if found is None:
        raise CliError(
            f"module {module_name!r} has no `{name} = onceflow.adapters.aws.lambda_handler(...)`: "
            "add one, or name the handler as MODULE:NAME"
        )
    if isinstance(found, ChunkedHandlers):
        return _chunked(module, module_name, name, found)
    factory = None
    handler = found
    if not isinstance(found, LambdaHandler):
        if inspect.isclass(found) or not callable(found) or _needs_arguments(found):
            raise CliError(
                f"{where} is a {type(found).__name__}, not a handler: name "
                "`onceflow.adapters.aws.lambda_handler(build, deployment=...)` or a "
                "zero-argument factory that returns one"
            )
        try:
            handler = found()
        except Exception as exc:
            raise CliError(
                f"calling the factory {where} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(handler, LambdaHandler):
            raise CliError(
                f"the factory {where} returned a {type(handler).__name__}, not a handler: "
                "make it return onceflow.adapters.aws.lambda_handler(build, deployment=...)"
            )
        factory = where
    if handler.deployment is None:
        raise CliError(
            f"{where} declares no deployment: build it with lambda_handler(build, "
            "deployment=Deployment(...)) (see onceflow.deployment)"
        )
    string = FACTORY_HANDLER if factory else f"{module_name}.{name}"
    return LoadedHandler(string, handler.deployment, factory)


def _chunked(module: Any, module_name: str, name: str, found: Any) -> LoadedHandler:
    """Chunked handlers: the module exposes the three functions the template names."""
    where = f"{module_name}:{name}"
    roles = ("router", "chunk_worker", "fan_in")
    missing = [role for role in roles if not callable(getattr(module, role, None))]
    if missing:
        wanted = ", ".join(f"{name}.{role}" for role in roles)
        raise CliError(
            f"{where} is chunked handlers: {module_name} must also expose "
            f"{', '.join(missing)} (router, chunk_worker, fan_in = {wanted})"
        )
    if found.deployment is None:
        raise CliError(
            f"{where} declares no deployment: chunked_handlers(build, deployment="
            "Deployment(Trigger(TriggerKind.S3, ...), ...))"
        )
    return LoadedHandler(f"{module_name}.router", found.deployment, None, chunked=True)


def _needs_arguments(function: Any) -> bool:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return True
    return any(
        p.default is p.empty and p.kind not in {p.VAR_POSITIONAL, p.VAR_KEYWORD}
        for p in signature.parameters.values()
    )


def _run(args: argparse.Namespace) -> int:
    loaded = load_handler(args.target)
    declared = loaded.deployment.trigger.kind
    if args.source and args.source != declared:
        raise CliError(
            f"{args.target} declares a {declared} trigger, not {args.source}: drop --source, or "
            f"declare Trigger(TriggerKind.{args.source.upper().replace('-', '_')}, ...) in its "
            "deployment"
        )
    settings = FunctionSettings(
        handler=loaded.handler,
        code_uri=args.code_uri,
        runtime=args.runtime,
        architecture=args.architecture,
        timeout=args.timeout,
        memory=args.memory,
        chunked=ChunkedSettings() if loaded.chunked else None,
    )
    try:
        doc = sam_template(loaded.deployment, settings)
    except ConfigurationError as exc:
        raise CliError(f"{args.target}: {exc}") from exc
    if loaded.factory:
        variables = doc["Resources"]["Processor"]["Properties"]["Environment"]["Variables"]
        variables["ONCEFLOW_HANDLER"] = loaded.factory
    text = json.dumps(doc, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    requirement = args.requirement or f"onceflow[aws]=={version('onceflow')}"
    code = (args.output.parent / args.code_uri).resolve()
    requirements = code / "requirements.txt"
    write_requirements = not requirements.exists()
    if not write_requirements and "onceflow" not in requirements.read_text():
        raise CliError(
            f"{requirements} does not list onceflow, so the package would lack it: add "
            f"the line `{requirement}`"
        )
    if not code.is_dir():
        raise CliError(f"the code folder {code} does not exist: pass --code-uri")
    args.output.write_text(text)
    print(args.output)
    if write_requirements:
        requirements.write_text(
            f"# onceflow, for `sam build` (written by `onceflow aws template`)\n{requirement}\n"
        )
        print(requirements)
    return 0
