"""The `onceflow` command line; backends add their sub-commands through entry points."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from onceflow.errors import OnceflowError

__all__ = ["CliError", "load_object", "main"]

ENTRY_POINT_GROUP = "onceflow.commands"


class CliError(OnceflowError):
    """A user mistake on the command line: shown as one line, exit status 2."""


def load_object(spec: str) -> Any:
    """The object named by `module:attribute` (the module may be a dotted path)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CliError(
            f"{spec!r} is not MODULE:NAME (for example examples.orders.processor:Orders)"
        )
    if "" not in sys.path and "." not in sys.path:
        # Like `python -m`, let users name modules in the directory they run from.
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise CliError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:
        # The user's module raised while importing: one line; --verbose shows the traceback.
        raise CliError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc} "
            "(run with --verbose for the traceback)"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no {attribute!r}") from None
    return target


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the cause and `--help`."""

    def error(self, message: str) -> NoReturn:
        """Print one line (not the whole usage) and exit 2, as argparse does."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every installed backend's sub-commands."""
    parser = _Parser(
        prog="onceflow",
        description="Run event processors with every event's effect applied exactly once.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            register: Callable[[Any], None] = entry.load()
        except ImportError as exc:
            if exc.name == entry.module:
                continue  # this installation has no such backend at all
            _unavailable(commands, entry.name, exc)
            continue
        register(commands)
    from onceflow.reconcile_cli import register as reconcile  # core: reads state, no SDK

    reconcile(commands)
    return parser


def _unavailable(commands: Any, name: str, exc: ImportError) -> None:
    """A stand-in sub-command that says which extra to install."""
    extra = {"local": "cli", "lake": "parquet"}.get(name, name)
    missing = exc.name or "a missing package"
    message = f"`onceflow {name}` needs {missing}: pip install 'onceflow[{extra}]'"
    stub = commands.add_parser(name, help=f"(unavailable: {message})", add_help=False)
    stub.add_argument("rest", nargs=argparse.REMAINDER)

    def explain(args: argparse.Namespace) -> int:
        raise CliError(message)

    stub.set_defaults(func=explain)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("onceflow: interrupted", file=sys.stderr)
        return 130
    except (OnceflowError, OSError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"onceflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
