"""onceflow installs as one import namespace: `onceflow` and `onceflow.adapters`, nothing else.

The folders keep their names (corelib/, adapters/); pyproject.toml maps them. These tests
build the real wheel with `python -m build`, put it beside user code the way a Lambda build
directory does, and check that a user's own `adapters` and `corelib` packages still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import onceflow
from tests.support.dist import Dist, built_dist

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"onceflow": ROOT / "corelib", "onceflow.adapters": ROOT / "adapters"}


def run(code: str, *, cwd: Path, path: Path | None = None) -> str:
    """Run `code` in a fresh interpreter; `path` goes first on its module path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist and the wheel built from it, by `python -m build` as `make dist` runs it."""
    return built_dist(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def wheel(dist: Dist) -> Path:
    """The distribution's wheel."""
    return dist.wheel


def user_project(folder: Path) -> Path:
    """A service with its own `adapters` and `corelib` packages (ports-and-adapters style)."""
    for name in ("adapters", "corelib"):
        package = folder / name
        (package / "aws").mkdir(parents=True)
        (package / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
        (package / "aws" / "__init__.py").write_text("PORT = 'user aws port'\n")
    (folder / "handler.py").write_text(
        "import adapters, adapters.aws, corelib\n"
        "from onceflow import Event, Pipeline, PermanentError\n"
        "from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink\n"
        "sink = MemorySink()\n"
        "pipeline = Pipeline(lambda e: {'id': e.id}, sink, MemoryIdempotencyStore())\n"
        "result = pipeline.run_batch([Event(id='1', source='s', data=b'{}')])\n"
        "assert result.processed == ['1'], result\n"
        "print(adapters.OWNER, '|', adapters.aws.PORT, '|', corelib.OWNER, '|', len(sink))\n"
    )
    return folder


def test_user_packages_named_adapters_and_corelib_keep_working(tmp_path: Path) -> None:
    project = user_project(tmp_path)
    out = run("import handler", cwd=project, path=project)
    assert out == "user adapters | user aws port | user corelib | 1"


def test_wheel_holds_only_the_onceflow_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"onceflow"}
    assert "onceflow/adapters/aws/__init__.py" in names
    assert "onceflow/py.typed" in names and "onceflow/adapters/py.typed" in names


def test_wheel_unpacked_beside_user_code_in_one_folder(tmp_path: Path, wheel: Path) -> None:
    # What `sam build` / `pip install -t` makes: the function's code and every package flat.
    flat = user_project(tmp_path / "function")
    zipfile.ZipFile(wheel).extractall(flat)
    code = (
        "import handler, onceflow, onceflow.adapters.aws, onceflow.adapters.azure;"
        "import onceflow.adapters.local, onceflow.lake, onceflow.testing;"
        f"assert onceflow.__file__.startswith({str(flat)!r}), onceflow.__file__;"
        "from onceflow.adapters.aws import lambda_handler; print(callable(lambda_handler))"
    )
    out = run(code, cwd=flat, path=flat)
    assert out.splitlines() == ["user adapters | user aws port | user corelib | 1", "True"]


def test_pip_show_lists_no_top_level_corelib_or_adapters(tmp_path: Path, wheel: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-t", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    shown = run("from pip._internal.cli.main import main; main(['show', '-f', 'onceflow'])",
                cwd=tmp_path, path=target)  # fmt: skip
    files = shown.split("Files:", 1)[1].split()
    assert files, shown
    tops = {f.split("/")[0] for f in files if not f.startswith("../")}  # ../../bin/onceflow
    assert {top for top in tops if not top.endswith(".dist-info")} == {"onceflow"}
    [record] = target.glob("onceflow-*.dist-info")
    assert (record / "top_level.txt").read_text().split() == ["onceflow"]
    assert not [f for f in files if f.startswith(("corelib/", "adapters/"))]


def test_pyproject_names_every_package_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"onceflow": "corelib", "onceflow.adapters": "adapters"}
    found = set()
    for namespace, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((namespace, *parts)))
    assert set(config["packages"]) == found


def test_no_module_imports_the_folder_names() -> None:
    # A stray `import corelib` would load a second copy of a module from the checkout.
    code = (
        "import importlib, pkgutil, sys, onceflow;"
        "names = [m.name for m in pkgutil.walk_packages(onceflow.__path__, 'onceflow.')];"
        "[importlib.import_module(n) for n in names];"
        "tops = {m.split('.')[0] for m in sys.modules};"
        "print(len(names), sorted(tops & {'corelib', 'adapters'}))"
    )
    out = run(code, cwd=ROOT)
    count, strays = out.split(" ", 1)
    assert int(count) > 50
    assert strays == "[]"
    assert Path(onceflow.__file__).resolve().parent == FOLDERS["onceflow"]


def test_the_build_warns_of_nothing_and_twine_accepts_both_files(dist: Dist) -> None:
    # setuptools reports deprecated configuration as SetuptoolsDeprecationWarning lines.
    assert "deprecat" not in dist.log.lower(), dist.log
    twine = [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)]
    checked = subprocess.run(twine, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_extra_resolves_from_the_wheel(tmp_path: Path, wheel: Path) -> None:
    # What `pip install 'onceflow[aws] @ <wheel or git URL>'` resolves, offline: every
    # requirement of every extra must be satisfiable (here, by what the suite installed).
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = ",".join(sorted(extras["optional-dependencies"]))
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet"]
    done = subprocess.run(
        [*pip, "--report", str(report), f"onceflow[{names}] @ {wheel.as_uri()}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [install] = json.loads(report.read_text())["install"]
    assert install["metadata"]["name"] == "onceflow"
    assert sorted(install["requested_extras"]) == sorted(extras["optional-dependencies"])
    [meta] = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")]
    metadata = zipfile.ZipFile(wheel).read(meta)
    assert b"Requires-Dist: boto3" in metadata and b"Provides-Extra: aws" in metadata
